// Package gcfloor keeps Go's garbage collector from running every few
// hundred kilobytes while moat's live heap is small and it is busy.
//
// With GOGC=100 the collector runs whenever the heap has doubled since the
// last collection. moat's live heap is a few MiB until it holds thousands
// of connections, and a full TLS handshake leaves about 50 KiB of garbage,
// so a connection storm collected 20 times a second: 12% of moat's CPU,
// spent scanning the same small heap. While moat allocates fast enough for
// Go's rule to collect more than once a second, Floor sets GOGC after every
// collection so that the next runs when the heap reaches the floor, or
// twice the live heap, whichever is larger: it notices a storm from two
// collections less than a second apart, and stays on while the allocation
// rate would make Go's rule collect more than once a second. Once the rate
// falls it goes back to Go's rule, collects and returns the freed memory
// to the OS, so a quiet moat does not sit on the floor's garbage. A memory
// limit (GOMEMLIMIT) still bounds the heap.
package gcfloor

import (
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

// Base is the GOGC percentage outside the floor: Go's default.
const Base = 100

// maxPercent bounds GOGC for a near-empty heap, where floor/live is huge.
const maxPercent = 10000

// minHeap is the heap size below which Go does not collect at all, at
// GOGC=100.
const minHeap = 4 << 20

// Every is how often Floor looks at the allocation rate.
const Every = time.Second

// Heap is what a collection left: the live heap, and the goroutine stacks
// and globals that GOGC counts with it (the next collection comes at
// live + (live+roots)*GOGC/100).
type Heap struct{ Live, Roots uint64 }

// Percent is the GOGC that makes the collection after one that left h
// run at floor bytes of heap, or at Go's default rule when that is later.
// Go's 4 MiB minimum heap grows with GOGC too, so GOGC stays at most
// floor/4 MiB x 100, where that minimum is the floor.
func Percent(h Heap, floor uint64) int {
	if h.Live == 0 || floor <= h.Live {
		return Base
	}
	p := math.Ceil(float64(floor-h.Live) * 100 / float64(h.Live+h.Roots))
	p = min(p, math.Floor(float64(floor)*100/minHeap), maxPercent)
	return int(max(p, Base))
}

// Busy reports whether allocating rate bytes a second makes Go's rule
// collect more than once a second after a collection that left h.
func Busy(rate uint64, h Heap) bool {
	return rate > max(h.Live+h.Roots, minHeap-min(h.Live, minHeap))
}

// Floor sets GOGC from the live heap and the allocation rate; Start it,
// Stop it.
type Floor struct {
	floor uint64
	// The runtime, replaced in unit tests.
	set     func(int) int         // debug.SetGCPercent
	read    func() (Heap, uint64) // runtime/metrics: the heap, bytes allocated so far
	collect func()                // go debug.FreeOSMemory()
	now     func() time.Time

	mu        sync.Mutex
	stopped   bool
	busy      bool
	raised    bool      // the floor was raised since moat was last quiet
	allocated uint64    // total allocated at the last tick
	lastGC    time.Time // when afterGC last ran
	percent   int       // what was last set; 0 before the first
	timer     *time.Timer
}

// New returns a Floor of floor bytes.
func New(floor uint64) *Floor {
	samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"},
		{Name: "/gc/scan/globals:bytes"}, {Name: "/gc/heap/allocs:bytes"}}
	return &Floor{floor: floor, set: debug.SetGCPercent,
		read: func() (Heap, uint64) { // under Floor.mu
			metrics.Read(samples)
			return Heap{Live: uint64Of(samples[0]), Roots: uint64Of(samples[1]) + uint64Of(samples[2])}, uint64Of(samples[3])
		},
		collect: func() { go debug.FreeOSMemory() },
		now:     time.Now,
	}
}

func uint64Of(s metrics.Sample) uint64 {
	if s.Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s.Value.Uint64()
}

// Start follows the allocation rate every second and the live heap after
// every collection.
func (f *Floor) Start() {
	f.mu.Lock()
	_, f.allocated = f.read()
	f.timer = time.AfterFunc(Every, f.tick)
	f.mu.Unlock()
	f.arm()
}

// Stop leaves GOGC at Base and stops following.
func (f *Floor) Stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	if f.timer != nil {
		f.timer.Stop()
	}
	f.busy = false
	f.apply(Heap{})
}

// Percent is the GOGC the floor last set; 0 before it set any.
func (f *Floor) Percent() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.percent
}

// tick judges the last second's allocation rate. Going quiet after the
// floor was raised, it collects and hands the free memory back at once:
// an idle moat would otherwise keep the floor's garbage until its next
// allocations, and the pages it took, which Go keeps while they fit under
// its heap goal.
func (f *Floor) tick() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return
	}
	h, allocated := f.read()
	rate := allocated - f.allocated
	f.allocated = allocated
	f.busy = Busy(rate, h)
	f.apply(h)
	if f.raised && !f.busy {
		f.raised = false
		// Its own collection, however soon after the last one, is no
		// sign of a storm.
		f.lastGC = time.Time{}
		f.collect()
	}
	if f.timer != nil {
		f.timer.Reset(Every)
	}
}

// afterGC sets GOGC from the live heap the collection left; a collection
// less than a second after the one before means busy. It reports false
// once stopped.
func (f *Floor) afterGC() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return false
	}
	now := f.now()
	if !f.lastGC.IsZero() && now.Sub(f.lastGC) < Every {
		f.busy = true
	}
	f.lastGC = now
	h, _ := f.read()
	f.apply(h)
	return true
}

// apply sets GOGC for h (zero: unknown, Go's rule). Small changes are
// left alone: the goal they move is a few percent.
func (f *Floor) apply(h Heap) {
	p := Base
	if f.busy {
		p = Percent(h, f.floor)
	}
	if p == f.percent || p != Base && f.percent != Base && f.percent != 0 && p >= f.percent*9/10 && p <= f.percent*11/10 {
		return
	}
	f.set(p)
	f.percent = p
	f.raised = f.raised || p > Base
}

// sentinel is garbage the moment it is made: its finalizer runs once per
// collection cycle, after the cycle that found it unreachable, and makes
// the next one.
type sentinel struct{ f *Floor }

func (f *Floor) arm() {
	runtime.SetFinalizer(&sentinel{f: f}, func(s *sentinel) {
		if s.f.afterGC() {
			s.f.arm()
		}
	})
}
