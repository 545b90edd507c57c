package main

import (
	"context"
	"log/slog"
	"os"
	"runtime"

	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/gcfloor"
	"github.com/moat-mqtt/moat/procs"
)

// startRuntime applies the runtime section; stop undoes it.
func startRuntime(rt config.Runtime, log *slog.Logger) (stop func()) {
	stopGC := startGCFloor(rt, log)
	stopProcs := startProcs(rt, log)
	return func() {
		stopProcs()
		stopGC()
	}
}

// startGCFloor applies runtime.gc_floor. GOGC in the environment wins.
func startGCFloor(rt config.Runtime, log *slog.Logger) (stop func()) {
	if env := os.Getenv("GOGC"); env != "" {
		log.Info("garbage collection left to the GOGC environment variable", "GOGC", env, "runtime.gc_floor", int64(rt.GCFloor))
		return func() {}
	}
	if rt.GCFloor <= 0 {
		return func() {}
	}
	f := gcfloor.New(uint64(rt.GCFloor))
	f.Start()
	log.Info("garbage collection waits for the heap floor", "gc_floor_bytes", int64(rt.GCFloor))
	return f.Stop
}

// startProcs applies runtime.procs: a fixed GOMAXPROCS, or the controller
// that sizes it to the load. GOMAXPROCS in the environment wins. stop ends
// the controller and gives back the count moat started with.
func startProcs(rt config.Runtime, log *slog.Logger) (stop func()) {
	if env := os.Getenv("GOMAXPROCS"); env != "" {
		log.Info("scheduler threads fixed by the GOMAXPROCS environment variable", "procs", runtime.GOMAXPROCS(0), "runtime.procs", rt.Procs)
		return func() {}
	}
	if n := rt.FixedProcs(); n > 0 {
		was := runtime.GOMAXPROCS(n)
		log.Info("scheduler threads fixed by runtime.procs", "procs", n)
		return func() { runtime.GOMAXPROCS(was) }
	}
	max := runtime.GOMAXPROCS(0)
	if max == 1 {
		return func() {}
	}
	log.Info("scheduler threads follow the load", "max_procs", max)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		procs.New(max, log).Run(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}
