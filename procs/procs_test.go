package procs

import (
	"context"
	"math"
	"os"
	"runtime"
	"runtime/metrics"
	"sync"
	"testing"
	"time"
)

// controller returns a controller at p of max Ps, sampled every 100 ms.
func controller(p, max int) *Controller {
	c := New(max, nil)
	c.p = p
	return c
}

// sample is one interval's load: busy cores and the mean wait for a P.
type sample struct {
	busy float64
	wait time.Duration
}

// feed runs samples through decide, one interval apart from start, and
// returns the Ps after each.
func feed(c *Controller, start time.Time, samples ...sample) []int {
	out := make([]int, len(samples))
	for i, s := range samples {
		c.p = c.decide(s.busy, s.wait, start.Add(time.Duration(i+1)*c.Interval))
		out[i] = c.p
	}
	return out
}

func repeat(s sample, n int) []sample {
	out := make([]sample, n)
	for i := range out {
		out[i] = s
	}
	return out
}

var calmSamples = int(DefaultCalmFor / DefaultInterval)

func TestDecideRaisesAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name       string
		p, max     int
		busy       float64
		wait       time.Duration
		want       int
		wantRaised bool
	}{
		{"one P saturated doubles", 1, 8, 0.95, 0, 2, true},
		{"four Ps saturated double", 4, 8, 3.7, 0, 8, true},
		{"doubling is capped at max", 3, 4, 2.8, 0, 4, true},
		{"at max nothing changes", 2, 2, 2.0, time.Second, 2, false},
		{"below saturation nothing changes", 2, 8, 1.7, 100 * time.Microsecond, 2, false},
		// Non-P threads can push busy past the Ps: size by demand.
		{"demand above double", 1, 16, 3.0, 0, 4, true},
		// A fan-out: goroutines queue for the P it has while the CPU
		// time looks moderate.
		{"queueing raises", 1, 2, 0.6, 2 * time.Millisecond, 2, true},
		{"queueing at the threshold raises", 2, 8, 0.3, queued, 4, true},
		{"a wait under the threshold does not", 2, 8, 0.3, queued - time.Microsecond, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := controller(tc.p, tc.max)
			now := time.Unix(1000, 0)
			if got := c.decide(tc.busy, tc.wait, now); got != tc.want {
				t.Fatalf("decide(%.2f, %v) at %d of %d Ps = %d, want %d", tc.busy, tc.wait, tc.p, tc.max, got, tc.want)
			}
			if raised := c.lastUp.Equal(now); raised != tc.wantRaised {
				t.Fatalf("raise recorded = %v, want %v", raised, tc.wantRaised)
			}
		})
	}
}

func TestDecideLowersAfterCalm(t *testing.T) {
	start := time.Unix(1000, 0)
	c := controller(4, 4)
	// 0.55 cores needs one P at the target share: nothing happens until
	// the calm spell is complete, then the Ps drop straight to that.
	got := feed(c, start, repeat(sample{busy: 0.55, wait: 20 * time.Microsecond}, calmSamples)...)
	for i, p := range got[:calmSamples-1] {
		if p != 4 {
			t.Fatalf("sample %d: lowered to %d before %v of calm", i, p, DefaultCalmFor)
		}
	}
	if got[calmSamples-1] != 1 {
		t.Fatalf("after %v at 0.55 cores: %d Ps, want 1", DefaultCalmFor, got[calmSamples-1])
	}

	// The spell is sized by its mean: one busier sample does not keep
	// every P, a busier spell keeps more.
	c = controller(4, 4)
	spell := repeat(sample{busy: 0.55}, calmSamples)
	spell[5].busy = 2.5
	if last := feed(c, start, spell...)[calmSamples-1]; last != 1 {
		t.Fatalf("spell of 0.55 cores with one 2.5 sample: %d Ps, want 1", last)
	}
	c = controller(4, 4)
	if last := feed(c, start, repeat(sample{busy: 1.6}, calmSamples)...)[calmSamples-1]; last != 3 {
		t.Fatalf("spell of 1.6 cores: %d Ps, want 3 (1.6/%.2f rounded up)", last, target)
	}
	c = controller(2, 2)
	if last := feed(c, start, repeat(sample{busy: 0.8}, calmSamples)...)[calmSamples-1]; last != 2 {
		t.Fatalf("spell of 0.8 cores: lowered to %d Ps, want 2 kept", last)
	}
}

// The spell's last second decides, so a load that drops is judged on
// what it has become, sample by sample, not at the end of a spell that
// began before it.
func TestDecideJudgesTheLastSecond(t *testing.T) {
	c := controller(2, 2)
	s := repeat(sample{busy: 1.0}, calmSamples)              // needs two at the target share
	s = append(s, repeat(sample{busy: 0.6}, calmSamples)...) // one carries it
	got := feed(c, time.Unix(1000, 0), s...)
	// The mean of the last 10 falls to 0.72 (at most 0.75 for one P) with
	// the seventh sample of the lighter load.
	for i, p := range got {
		want := 2
		if i >= calmSamples+6 {
			want = 1
		}
		if p != want {
			t.Fatalf("sample %d: %d Ps, want %d (all: %v)", i, p, want, got)
		}
	}
}

func TestDecideCalmIsBrokenByLoad(t *testing.T) {
	start := time.Unix(1000, 0)
	for _, breaker := range []sample{{busy: 1.9}, {busy: 0.6, wait: time.Millisecond}} {
		c := controller(2, 2)
		// A sample that saturates or queues restarts the spell.
		s := repeat(sample{busy: 0.6}, calmSamples-1)
		s = append(s, breaker)
		s = append(s, repeat(sample{busy: 0.6}, calmSamples-1)...)
		for i, p := range feed(c, start, s...) {
			if p != 2 {
				t.Fatalf("breaker %+v, sample %d: lowered to %d though the calm spell was broken", breaker, i, p)
			}
		}
		if got := feed(c, start.Add(time.Hour), sample{busy: 0.6}); got[0] != 1 {
			t.Fatalf("breaker %+v: the spell's last sample left %d Ps, want 1", breaker, got[0])
		}
	}
}

func TestDecideHoldsARaiseThatUndidALowering(t *testing.T) {
	start := time.Unix(1000, 0)
	quiet := repeat(sample{busy: 0.6}, calmSamples) // one P carries it
	c := controller(1, 2)
	// A fresh raise is not held: the next calm spell lowers.
	if got := feed(c, start, sample{busy: 0.95}); got[0] != 2 {
		t.Fatalf("saturated 1 P went to %d, want 2", got[0])
	}
	now := start.Add(DefaultInterval)
	if got := feed(c, now, quiet...); got[calmSamples-1] != 1 {
		t.Fatalf("a calm spell after a fresh raise: %d Ps, want 1", got[calmSamples-1])
	}
	now = now.Add(DefaultCalmFor)

	// The lowering is undone at once: the raise is held for Hold, and
	// for twice as long the next time.
	for _, hold := range []time.Duration{DefaultHold, 2 * DefaultHold, 4 * DefaultHold} {
		if got := feed(c, now, sample{busy: 0.95}); got[0] != 2 {
			t.Fatalf("saturated 1 P went to %d, want 2", got[0])
		}
		raised := now.Add(DefaultInterval)
		spells := int((hold - DefaultInterval) / DefaultCalmFor) // each ends inside the hold
		for i := 0; i < spells; i++ {
			at := raised.Add(time.Duration(i) * DefaultCalmFor)
			if got := feed(c, at, quiet...); got[calmSamples-1] != 2 {
				t.Fatalf("hold %v: calm spell %d lowered to %d within the hold", hold, i, got[calmSamples-1])
			}
		}
		now = raised.Add(time.Duration(spells) * DefaultCalmFor)
		if now.Sub(raised) < hold {
			now = raised.Add(hold)
		}
		if got := feed(c, now, quiet...); got[calmSamples-1] != 1 {
			t.Fatalf("hold %v: a calm spell after it left %d Ps, want 1", hold, got[calmSamples-1])
		}
		now = now.Add(DefaultCalmFor)
	}

	// A raise long after the last lowering starts afresh: no hold.
	now = now.Add(time.Minute)
	feed(c, now, sample{busy: 0.95})
	if got := feed(c, now.Add(DefaultInterval), quiet...); got[calmSamples-1] != 1 {
		t.Fatalf("a raise a minute after the last lowering was held: %d Ps", got[calmSamples-1])
	}
}

// A load that arrives after a quiet spell is not judged on the quiet
// samples still in the window: the mean of the last second passes one
// P's share long before the load itself fits one P.
func TestDecideWaitsForTheLoadThatArrived(t *testing.T) {
	c := controller(2, 2)
	s := repeat(sample{busy: 0.01}, calmSamples)                // idle, two Ps by the spare rule
	s = append(s, repeat(sample{busy: 0.86}, 2*calmSamples)...) // a storm two Ps carry
	s = append(s, repeat(sample{busy: 0.6}, calmSamples)...)    // a load one P carries
	got := feed(c, time.Unix(1000, 0), s...)
	for i, p := range got[:3*calmSamples] {
		if p != 2 {
			t.Fatalf("sample %d: %d Ps while the load needed two (all: %v)", i, p, got)
		}
	}
	if last := got[len(got)-1]; last != 1 {
		t.Fatalf("a second at 0.6 cores after the storm: %d Ps, want 1 (all: %v)", last, got)
	}
}

func TestDecideKeepsASpareAtLightLoad(t *testing.T) {
	start := time.Unix(1000, 0)
	for _, tc := range []struct {
		name   string
		p, max int
		busy   float64
		want   int
	}{
		{"two Ps, light", 2, 2, 0.1, 2},
		{"two Ps, just under the spare line", 2, 2, spareBelow - 0.01, 2},
		{"two Ps, over it", 2, 2, spareBelow + 0.05, 1},
		{"eight Ps, idle", 8, 8, 0, 2},
		{"one P, light: the spare comes back", 1, 2, 0.1, 2},
		{"one P, between the lines: stays", 1, 2, (spareBelow + spareBackBelow) / 2, 1},
		{"one P of one", 1, 1, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := controller(tc.p, tc.max)
			got := feed(c, start, repeat(sample{busy: tc.busy}, calmSamples)...)
			for i, p := range got[:calmSamples-1] {
				if p != tc.p {
					t.Fatalf("sample %d: %d Ps before the spell was complete", i, p)
				}
			}
			if last := got[calmSamples-1]; last != tc.want {
				t.Fatalf("a spell of %.2f cores at %d of %d Ps: %d Ps, want %d", tc.busy, tc.p, tc.max, last, tc.want)
			}
		})
	}
}

// A steady load does not make the controller flap: one P carries, a
// little cheaper, a load that two Ps ran under the target share.
func TestDecideSteadyLoadSettles(t *testing.T) {
	start := time.Unix(1000, 0)
	c := controller(2, 2)
	changes := 0
	prev := c.p
	for i := 0; i < 600; i++ { // a minute
		s := sample{busy: 0.7, wait: 30 * time.Microsecond} // two Ps
		if c.p == 1 {
			s.busy = 0.6 // the same load on one P, without the hand-offs
		}
		c.p = c.decide(s.busy, s.wait, start.Add(time.Duration(i)*c.Interval))
		if c.p != prev {
			changes++
			prev = c.p
		}
	}
	if c.p != 1 || changes != 1 {
		t.Fatalf("steady load: ended at %d Ps after %d changes, want 1 after 1", c.p, changes)
	}
}

// fakeProc is a process for Run to control: CPU time used at a load the
// test sets, its own GOMAXPROCS, and a CPU limit the test can change.
type fakeProc struct {
	mu    sync.Mutex
	procs int
	limit int
	load  float64 // cores in use
	cpu   time.Duration
	last  time.Time
	calls []int // every count set
}

// runFake starts c on a fake process at procs Ps; stop ends Run.
func runFake(c *Controller, procs int) (f *fakeProc, stop func()) {
	f = &fakeProc{procs: procs, limit: procs, last: time.Now()}
	c.Interval, c.CalmFor, c.Hold, c.LimitEvery = 2*time.Millisecond, 20*time.Millisecond, 20*time.Millisecond, 10*time.Millisecond
	c.wait = func() time.Duration { return 0 }
	c.cpu = func() time.Duration {
		f.mu.Lock()
		defer f.mu.Unlock()
		now := time.Now()
		f.cpu += time.Duration(f.load * float64(now.Sub(f.last)))
		f.last = now
		return f.cpu
	}
	c.set = func(n int) int {
		f.mu.Lock()
		defer f.mu.Unlock()
		was := f.procs
		if n > 0 {
			f.procs = n
			f.calls = append(f.calls, n)
		}
		return was
	}
	c.limit = func(cur int) int {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.limit
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	return f, func() { cancel(); <-done }
}

func (f *fakeProc) with(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
}

func (f *fakeProc) get() (n int) {
	f.with(func() { n = f.procs })
	return n
}

func (f *fakeProc) waitFor(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for f.get() != want {
		if time.Now().After(deadline) {
			t.Fatalf("GOMAXPROCS stayed at %d, want %d", f.get(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// stopAndCheck ends Run and checks that it gave back max Ps and never set
// a count outside 1..max.
func (f *fakeProc) stopAndCheck(t *testing.T, stop func(), max int) {
	t.Helper()
	stop()
	if got := f.get(); got != max {
		t.Fatalf("after Run ended GOMAXPROCS is %d, want the max %d", got, max)
	}
	f.with(func() {
		for _, n := range f.calls {
			if n < 1 || n > max {
				t.Fatalf("set GOMAXPROCS to %d, outside 1..%d (calls %v)", n, max, f.calls)
			}
		}
	})
}

// Run drives GOMAXPROCS through set from the CPU time it reads, and gives
// back every P when it stops.
func TestRunFollowsLoad(t *testing.T) {
	f, stop := runFake(New(4, nil), 4)
	f.waitFor(t, 2)               // light: down to one P and the spare
	f.with(func() { f.load = 8 }) // far past it: demand decides
	f.waitFor(t, 4)
	f.with(func() { f.load = 0.6 }) // one P carries it
	f.waitFor(t, 1)
	f.with(func() { f.load = 0 }) // quiet again: the spare comes back
	f.waitFor(t, 2)
	f.stopAndCheck(t, stop, 4)
}

// A container's CPU limit that changes while moat runs moves the ceiling:
// down at once, up for the next raise, and Run restores the new one.
func TestRunFollowsTheCPULimit(t *testing.T) {
	c := New(4, nil)
	f, stop := runFake(c, 4)
	f.with(func() { f.load = 3.8 }) // saturated: every P it may have
	f.with(func() { f.limit = 2 })
	f.waitFor(t, 2)
	f.with(func() { f.limit = 8 })
	f.waitFor(t, 8)
	f.stopAndCheck(t, stop, 8)
}

// defaultProcs reads the runtime's default and leaves the count it was
// given in place.
func TestDefaultProcs(t *testing.T) {
	start := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(start)
	runtime.GOMAXPROCS(1)
	d := defaultProcs(1)
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Fatalf("GOMAXPROCS %d after reading the default, want the 1 it was given", got)
	}
	if d < 1 || d > runtime.NumCPU() {
		t.Fatalf("default %d outside 1..%d CPUs", d, runtime.NumCPU())
	}
	if os.Getenv("GOMAXPROCS") == "" && d != start {
		t.Fatalf("default %d, want %d, the count the runtime chose at start", d, start)
	}
}

// The mean wait comes from the runtime: goroutines made runnable while
// the only P is busy wait at least as long as it stays busy.
func TestSchedWaitsMean(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	w := newSchedWaits()
	w.mean()
	if got := w.mean(); got != 0 {
		t.Fatalf("nothing ran: mean %v, want 0", got)
	}
	const n, hold = 2000, 5 * time.Millisecond
	start := make(chan struct{})
	var ready, wg sync.WaitGroup
	for range n {
		ready.Add(1)
		wg.Add(1)
		go func() { ready.Done(); <-start; wg.Done() }()
	}
	ready.Wait()
	time.Sleep(time.Millisecond) // every one blocked on start
	w.mean()                     // the baseline: their starts are not counted
	done := make(chan struct{})
	go func() {
		close(start) // all runnable, and this goroutine keeps the P
		for t0 := time.Now(); time.Since(t0) < hold; {
		}
		close(done)
	}()
	<-done
	wg.Wait()
	if got := w.mean(); got < hold/2 {
		t.Fatalf("%d goroutines waited behind a %v spin: mean %v, want at least %v", n, hold, got, hold/2)
	}
}

// A few long waits among many short ones are queueing: the shape of a
// handshake storm on one P, which a median missed.
func TestMeanSinceCountsLongWaits(t *testing.T) {
	const us = 1e-6
	h := &metrics.Float64Histogram{
		// [0,1µs) [1µs,2µs) [2µs,1ms) [1ms,5ms) [5ms,∞)
		Buckets: []float64{0, 1 * us, 2 * us, 1000 * us, 5000 * us, math.Inf(1)},
		Counts:  make([]uint64, 5),
	}
	prev := make([]uint64, len(h.Counts))
	h.Counts[1], h.Counts[2] = 8, 2
	if got := meanSince(h, prev); got != 0 {
		t.Fatalf("10 waits: mean %v, want 0 (too few to judge)", got)
	}
	h.Counts[1], h.Counts[2] = 90, 10 // each at its bucket's upper bound
	if got, want := meanSince(h, prev), 101800*time.Nanosecond; got != want {
		t.Fatalf("90 waits under 2 µs, 10 under 1 ms: mean %v, want %v", got, want)
	}
	copy(prev, h.Counts) // only what came since counts
	h.Counts[1] += 80
	h.Counts[3] += 20
	got := meanSince(h, prev)
	if want := 1001600 * time.Nanosecond; got != want {
		t.Fatalf("80 short waits, 20 of 1-5 ms: mean %v, want %v", got, want)
	}
	if got < queued {
		t.Fatalf("mean %v under the threshold %v: the controller would not raise", got, queued)
	}
	copy(prev, h.Counts)
	h.Counts[4] += 30
	if got := meanSince(h, prev); got != 5*time.Millisecond {
		t.Fatalf("30 waits in the unbounded bucket: mean %v, want its lower bound 5ms", got)
	}
}
