package policy

import (
	"fmt"
	"strings"

	"github.com/moat-mqtt/moat/codec"
)

// Expand substitutes "{name}" placeholders in a filter pattern with the
// values in vars. A value must be a single, non-empty topic level without
// wildcards, so a client id of "#", "+" or "a/b" can never widen the
// pattern: expand then reports ok=false and the pattern matches nothing.
// An unknown placeholder or an unclosed brace is an error in the policy.
func Expand(pattern string, vars map[string]string) (out string, ok bool, err error) {
	return expand(pattern, func(name string) (string, bool) { v, ok := vars[name]; return v, ok })
}

// expand is Expand with the variables behind a lookup, so the built-ins
// need not copy their argument object into a map.
func expand(pattern string, lookup func(string) (string, bool)) (out string, ok bool, err error) {
	if !strings.Contains(pattern, "{") {
		return pattern, true, nil
	}
	var b strings.Builder
	b.Grow(len(pattern) + 16)
	ok = true
	for {
		i := strings.IndexByte(pattern, '{')
		if i < 0 {
			b.WriteString(pattern)
			return b.String(), ok, nil
		}
		j := strings.IndexByte(pattern[i:], '}')
		if j < 0 {
			return "", false, fmt.Errorf("pattern has an unclosed '{'")
		}
		name := pattern[i+1 : i+j]
		v, found := lookup(name)
		if !found {
			return "", false, fmt.Errorf("pattern names {%s}, which is not in the variables", name)
		}
		if v == "" || strings.ContainsAny(v, "/+#") || !codec.ValidUTF8([]byte(v)) {
			ok = false
		}
		b.WriteString(pattern[:i])
		b.WriteString(v)
		pattern = pattern[i+j+1:]
	}
}
