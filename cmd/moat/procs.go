package main

import (
	"context"
	"log/slog"
	"os"
	"runtime"

	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/procs"
)

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
