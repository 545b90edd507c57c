// Package procs sizes the Go scheduler (GOMAXPROCS) to moat's load.
//
// A proxy's work per packet is small: a read, a few microseconds of
// checks, a write. With more Ps than the load needs, every packet that
// wakes a pump also wakes an idle thread to look for more work, which
// finds none and sleeps again on a futex. On a two-core box shared with
// the broker those hand-offs were a sixth of moat's CPU per message
// (docs/benchmarks.md). The controller keeps as few Ps as keep up. Every
// interval it reads the process's CPU time and how long runnable
// goroutines waited for a P; it adds Ps at once when the ones it has are
// saturated or goroutines queue for them, and gives them back only when
// the load has stayed low for a while.
package procs

import (
	"context"
	"log/slog"
	"math"
	"runtime"
	"time"
)

// Tuning. Raising is immediate, so a burst costs at most one interval at
// too few Ps; lowering waits for a calm spell of CalmFor. A raise soon after a
// lowering means the lowering was wrong (a load that fewer Ps cannot
// carry, though more Ps carried it under the target): the controller
// then keeps the raise for a while, twice as long each time it happens
// again, so such a load does not make it flap.
const (
	DefaultInterval = 100 * time.Millisecond
	// DefaultCalmFor is how long the load must allow fewer Ps before
	// they go.
	DefaultCalmFor = time.Second
	// DefaultHold is how long a raise that undid a lowering is kept; it
	// doubles with each further one, up to maxHold.
	DefaultHold = 5 * time.Second
	// DefaultLimitEvery is how often the cores moat may use are read
	// again: a container's CPU limit can change while it runs.
	DefaultLimitEvery = 10 * time.Second
	maxHold           = time.Minute
	// saturated: Ps this busy (CPU time per P per wall time) are full.
	saturated = 0.9
	// target is the busy share per P that lowering aims at. One P fewer
	// runs the same load with fewer hand-offs, so a little cheaper: the
	// gap to saturated is the room that keeps a lowered count.
	target = 0.75
	// queued: when the goroutines that became runnable waited this long
	// for a P on average, they are queueing, whatever the CPU time says:
	// a message fanned out to many subscribers wakes them all at once,
	// and TLS handshakes hold a P for half a millisecond each. Measured
	// on one P (docs/benchmarks.md, seventh pass): QoS 1 traffic at 0.6
	// cores 20-210 µs, a handshake storm at 0.7 cores 0.2-0.8 ms, fan-out
	// over 1 ms.
	queued = 300 * time.Microsecond
	// minWaits is the fewest sampled waits the mean is judged on.
	minWaits = 20
	// A spell lighter than spareBelow cores keeps a second P, and at one
	// P one lighter than spareBackBelow gets it back (one P runs the same
	// load a little cheaper: the gap keeps the two from alternating).
	// With one P, the OS descheduling moat's one running thread stalls
	// every session until it runs again, and on a box shared with the
	// broker that is milliseconds: p99 at 5k msg/s was worse on one P in
	// 22 of 33 paired runs (docs/benchmarks.md, sixth and seventh passes).
	// That load takes 0.3-0.45 cores, and there a spare P costs a few
	// percent of one; one P is kept for loads it saves real CPU on.
	spareBelow     = 0.5
	spareBackBelow = 0.4
)

// Controller adjusts GOMAXPROCS between 1 and Max.
type Controller struct {
	Max        int           // the cores moat may use: GOMAXPROCS at start, then the runtime's default
	Interval   time.Duration // how often the load is sampled
	CalmFor    time.Duration // how long a low load lasts before Ps go
	Hold       time.Duration // how long a raise that undid a lowering is kept
	LimitEvery time.Duration // how often Max is read again
	Log        *slog.Logger

	// cpu returns the process's CPU time so far (negative: unknown);
	// wait returns the mean time runnable goroutines waited for a P
	// since its last call (0 when too few waited); set sets GOMAXPROCS
	// (n < 1 only reads it) and returns the previous setting; limit
	// returns the runtime's default GOMAXPROCS now, leaving cur set.
	// Replaced in tests.
	cpu   func() time.Duration
	wait  func() time.Duration
	set   func(n int) int
	limit func(cur int) int

	p        int           // Ps now
	lastUp   time.Time     // last raise
	lastDown time.Time     // last lowering
	hold     time.Duration // the last raise is kept this long
	// The calm spell: how many samples in a row neither raised nor
	// queued, and the busy cores of the last CalmFor of them (a ring).
	calm    int
	recent  []float64
	calmSum float64 // of recent
}

// New returns a controller for up to max Ps.
func New(max int, log *slog.Logger) *Controller {
	return &Controller{Max: max, Interval: DefaultInterval, CalmFor: DefaultCalmFor, Hold: DefaultHold,
		LimitEvery: DefaultLimitEvery, Log: log,
		cpu: processCPU, wait: newSchedWaits().mean, set: runtime.GOMAXPROCS, limit: defaultProcs}
}

// defaultProcs is the GOMAXPROCS the runtime would choose now: the least
// of the CPU count, the affinity mask and the cgroup CPU limit, rounded
// up (and at least 2 where there are 2 CPUs). Setting a count stops the
// runtime from following the limit itself, and it offers no way to read
// its default but to apply it, so this applies it and sets cur back:
// two pauses of microseconds when they differ, none when they agree.
func defaultProcs(cur int) int {
	runtime.SetDefaultGOMAXPROCS()
	return runtime.GOMAXPROCS(cur)
}

// Run samples and adjusts until ctx ends, then restores Max Ps. Where the
// process's CPU time cannot be read it returns at once.
func (c *Controller) Run(ctx context.Context) {
	if c.cpu() < 0 {
		return
	}
	c.p = c.set(0)
	t := time.NewTicker(c.Interval)
	defer t.Stop()
	lastCPU, lastAt := c.cpu(), time.Now()
	c.wait()
	lastLimit := lastAt
	for {
		select {
		case <-ctx.Done():
			if c.p != c.Max {
				c.set(c.Max)
			}
			return
		case now := <-t.C:
			cpu, wait := c.cpu(), c.wait()
			wall := now.Sub(lastAt)
			if wall <= 0 {
				continue
			}
			busy := float64(cpu-lastCPU) / float64(wall) // cores in use
			lastCPU, lastAt = cpu, now
			if c.LimitEvery > 0 && now.Sub(lastLimit) >= c.LimitEvery {
				lastLimit = now
				c.follow(c.limit(c.p))
			}
			if n := c.decide(busy, wait, now); n != c.p {
				if c.Log != nil {
					c.Log.Debug("scheduler resized", "procs", n, "was", c.p,
						"busy_cores", math.Round(busy*100)/100, "mean_wait", wait.String())
				}
				c.set(n)
				c.p = n
			}
		}
	}
}

// follow takes max as the cores moat may now use. Fewer than the Ps in
// use take effect at once; more are there for the next raise.
func (c *Controller) follow(max int) {
	if max < 1 || max == c.Max {
		return
	}
	if c.Log != nil {
		c.Log.Info("cores available changed", "max_procs", max, "was", c.Max)
	}
	c.Max = max
	if c.p > max {
		c.set(max)
		c.p = max
		c.endSpell()
	}
}

// decide returns the Ps for the next interval, given the cores the
// process used in the last one and the mean wait for a P.
func (c *Controller) decide(busy float64, wait time.Duration, now time.Time) int {
	p := c.p
	full := busy >= saturated*float64(p)
	if full || wait >= queued {
		c.endSpell()
		if p >= c.Max {
			return p
		}
		c.lastUp = now
		switch {
		case c.lastDown.IsZero() || now.Sub(c.lastDown) >= c.Hold:
			c.hold = 0
		case c.hold == 0:
			c.hold = c.Hold
		default:
			c.hold = min(2*c.hold, maxHold)
		}
		// Busy Ps hide the real demand: at least double.
		return min(c.Max, max(2*p, need(busy, target)))
	}
	// Size by the mean of the spell's last CalmFor, once it is that long:
	// a load that lasts is judged as soon as it has lasted that long.
	window := max(1, int(c.CalmFor/c.Interval))
	if len(c.recent) != window {
		c.recent = make([]float64, window)
	}
	slot := &c.recent[c.calm%window]
	c.calmSum += busy - *slot
	*slot = busy
	c.calm++
	if c.calm < window {
		return p
	}
	// The latest sample must fit too: a spell whose second began idle
	// has a low mean while the load that has just arrived needs every P.
	mean := c.calmSum / float64(window)
	want := max(1, need(max(mean, busy), target))
	if want == 1 && c.Max >= 2 && (mean < spareBackBelow || p >= 2 && mean < spareBelow) {
		if p == 1 {
			c.endSpell() // judged afresh at the new count
			return 2     // light traffic: the spare P comes back
		}
		want = 2
	}
	if want >= p || now.Sub(c.lastUp) < c.hold {
		return p
	}
	c.endSpell()
	c.lastDown = now
	return want
}

// endSpell forgets the calm spell: after a change, or a sample that
// raised, the load is judged afresh.
func (c *Controller) endSpell() {
	c.calm, c.calmSum = 0, 0
	clear(c.recent)
}

// need is the Ps that carry busy cores at share per P.
func need(busy, share float64) int {
	return int(math.Ceil(busy / share))
}
