package main

import (
	"bytes"
	"log/slog"
	"runtime"
	"strings"
	"testing"

	"github.com/moat-mqtt/moat/config"
)

func TestStartProcs(t *testing.T) {
	t.Setenv("GOMAXPROCS", "") // as if unset, whatever the test runner has
	before := runtime.GOMAXPROCS(0)
	logged := func(rt config.Runtime) (string, int) {
		var buf bytes.Buffer
		stop := startProcs(rt, slog.New(slog.NewTextHandler(&buf, nil)))
		n := runtime.GOMAXPROCS(0)
		stop()
		if after := runtime.GOMAXPROCS(0); after != before {
			t.Fatalf("runtime.procs %q: GOMAXPROCS %d after stop, want %d back", rt.Procs, after, before)
		}
		return buf.String(), n
	}

	if log, n := logged(config.Runtime{Procs: "1"}); n != 1 || !strings.Contains(log, "fixed by runtime.procs") {
		t.Fatalf("procs 1: GOMAXPROCS %d, log %q", n, log)
	}
	if before > 1 {
		if log, _ := logged(config.Runtime{Procs: config.ProcsAuto}); !strings.Contains(log, "follow the load") {
			t.Fatalf("procs auto on %d cores: the controller did not start: %q", before, log)
		}
	}
	t.Setenv("GOMAXPROCS", "3")
	if log, n := logged(config.Runtime{Procs: "1"}); n != before || !strings.Contains(log, "GOMAXPROCS environment variable") {
		t.Fatalf("GOMAXPROCS in the environment: runtime.procs changed GOMAXPROCS to %d (log %q)", n, log)
	}
}
