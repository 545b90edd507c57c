//go:build !unix

package procs

import "time"

// processCPU cannot be read here: the controller does not run.
func processCPU() time.Duration { return -1 }
