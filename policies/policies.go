// Package policies holds moat's example Rego policies. The quick start
// policy is embedded so `moat run` works from any directory.
package policies

import "embed"

// Quickstart is the quick start policy (quickstart/*.rego, tests included).
//
//go:embed quickstart/*.rego
var Quickstart embed.FS
