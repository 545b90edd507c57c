package main

import (
	"bytes"
	"log/slog"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/gcfloor"
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

func TestStartGCFloor(t *testing.T) {
	t.Setenv("GOGC", "")
	defer debug.SetGCPercent(debug.SetGCPercent(gcfloor.Base))
	percent := func() int { p := debug.SetGCPercent(gcfloor.Base); debug.SetGCPercent(p); return p }
	started := func(rt config.Runtime) string {
		var buf bytes.Buffer
		stop := startGCFloor(rt, slog.New(slog.NewTextHandler(&buf, nil)))
		stop()
		if p := percent(); p != gcfloor.Base {
			t.Fatalf("runtime.gc_floor %d: GOGC %d after stop, want %d", rt.GCFloor, p, gcfloor.Base)
		}
		return buf.String()
	}
	if log := started(config.Runtime{GCFloor: 1 << 30}); !strings.Contains(log, "waits for the heap floor") {
		t.Fatalf("gc_floor 1 GiB: the floor did not start: %q", log)
	}
	if log := started(config.Runtime{GCFloor: -1}); log != "" {
		t.Fatalf("gc_floor -1: %q, want nothing started", log)
	}
	t.Setenv("GOGC", "50")
	if log := started(config.Runtime{GCFloor: 1 << 30}); !strings.Contains(log, "GOGC environment variable") {
		t.Fatalf("GOGC in the environment: %q", log)
	}
}
