package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"testing"
	"time"
)

const mib = 1 << 20

func TestPercent(t *testing.T) {
	for _, c := range []struct {
		h     Heap
		floor uint64
		want  int
	}{
		{Heap{2 * mib, 0}, 32 * mib, 800},         // Go's minimum heap at 800: 32 MiB
		{Heap{2 * mib, 2 * mib}, 32 * mib, 750},   // stacks and globals count for GOGC
		{Heap{6 * mib, 0}, 32 * mib, 434},         // rounded up: never under the floor
		{Heap{8*mib + 1, 0}, 64 * mib, 700},       // 699.99...
		{Heap{16 * mib, 0}, 32 * mib, Base},       // twice the live heap is the floor
		{Heap{20 * mib, 0}, 32 * mib, Base},       // above half the floor: Go's rule
		{Heap{500 * mib, 0}, 32 * mib, Base},      // far above
		{Heap{}, 32 * mib, Base},                  // nothing measured yet
		{Heap{1024, 0}, 32 * mib, 800},            // a near-empty heap
		{Heap{2 * mib, 0}, 0, Base},               // no floor
		{Heap{mib, 0}, 3 * mib / 2, Base},         // under twice live: Go's rule
		{Heap{mib, 0}, 5 * mib, 125},              // the minimum heap decides
		{Heap{mib, 0}, 4 * mib, Base},             // Go's own minimum is the floor
		{Heap{100 * mib, 0}, 1 << 40, maxPercent}, // an absurd floor is bounded
	} {
		if got := Percent(c.h, c.floor); got != c.want {
			t.Errorf("Percent(%+v, %d) = %d, want %d", c.h, c.floor, got, c.want)
		}
	}
}

func TestBusy(t *testing.T) {
	for _, c := range []struct {
		rate uint64
		h    Heap
		want bool
	}{
		{40 * mib, Heap{2 * mib, mib}, true},     // a handshake storm
		{mib, Heap{2 * mib, 0}, false},           // Go's rule: one collection in two seconds
		{3 * mib, Heap{2 * mib, 0}, true},        // under the 4 MiB minimum heap: 2 MiB a cycle
		{2 * mib, Heap{2 * mib, 0}, false},       // exactly once a second
		{3 * mib, Heap{2 * mib, 2 * mib}, false}, // the roots count too
		{50 * mib, Heap{60 * mib, 0}, false},     // a big heap collects rarely anyway
		{70 * mib, Heap{60 * mib, 0}, true},
		{0, Heap{}, false},
		{5 * mib, Heap{}, true},
	} {
		if got := Busy(c.rate, c.h); got != c.want {
			t.Errorf("Busy(%d, %+v) = %v, want %v", c.rate, c.h, got, c.want)
		}
	}
}

// fake is the runtime as a Floor sees it.
type fake struct {
	live, allocated uint64 // no roots: Percent's own test has them
	set             []int
	collected       int
	now             time.Time
}

func newFake(floor uint64) (*Floor, *fake) {
	r := &fake{now: time.Unix(1e9, 0)}
	f := &Floor{floor: floor,
		set:     func(p int) int { r.set = append(r.set, p); return Base },
		read:    func() (Heap, uint64) { return Heap{Live: r.live}, r.allocated },
		collect: func() { r.collected++ },
		now:     func() time.Time { return r.now },
	}
	return f, r
}

func TestFloorFollowsRateAndHeap(t *testing.T) {
	f, r := newFake(32 * mib)
	r.live = 5 * mib
	f.tick() // quiet: Go's rule
	r.allocated += 50 * mib
	f.tick() // a storm's second: the floor
	r.live = 6 * mib
	r.now = r.now.Add(5 * time.Second)
	f.afterGC() // a bigger heap: the next collection still at 32 MiB
	r.live = 6*mib + 100<<10
	r.now = r.now.Add(5 * time.Second)
	f.afterGC() // 425 against 434: left alone
	if want := []int{Base, 540, 434}; !slices.Equal(r.set, want) || f.Percent() != 434 {
		t.Fatalf("GOGC set %v, now %d; want %v", r.set, f.Percent(), want)
	}
	if r.collected != 0 {
		t.Fatal("collected while busy")
	}
	r.allocated += mib
	f.tick() // quiet again: Go's rule, and the garbage collected now
	f.tick()
	if want := []int{Base, 540, 434, Base}; !slices.Equal(r.set, want) || r.collected != 1 {
		t.Fatalf("going quiet: GOGC set %v, %d collections; want %v and 1", r.set, r.collected, want)
	}
	r.live = mib
	r.now = r.now.Add(5 * time.Second)
	f.afterGC() // quiet: a small heap changes nothing
	r.allocated += 25 * mib
	r.live = 20 * mib
	f.tick() // busy over a heap past half the floor: Go's rule already
	r.allocated += mib
	f.tick() // and quiet: nothing to hand back
	if want := []int{Base, 540, 434, Base}; !slices.Equal(r.set, want) || r.collected != 1 {
		t.Fatalf("GOGC set %v, %d collections; want %v and 1", r.set, r.collected, want)
	}
	// A storm that grows the heap past half the floor: Go's rule before
	// it goes quiet, and the floor's pages handed back then.
	r.allocated += 50 * mib
	r.live = 5 * mib
	f.tick()
	r.live = 18 * mib
	f.afterGC()
	r.allocated += mib
	f.tick()
	if want := []int{Base, 540, 434, Base, 540, Base}; !slices.Equal(r.set, want) || r.collected != 2 {
		t.Fatalf("GOGC set %v, %d collections; want %v and 2", r.set, r.collected, want)
	}
	r.allocated += 50 * mib
	r.live = 5 * mib
	f.tick()
	f.Stop()
	if want := []int{Base, 540, 434, Base, 540, Base, 540, Base}; !slices.Equal(r.set, want) {
		t.Fatalf("Stop: GOGC set %v, want %v", r.set, want)
	}
	if f.afterGC() {
		t.Fatal("still following collections after Stop")
	}
	f.tick()
	if len(r.set) != 8 || r.collected != 2 {
		t.Fatalf("acted after Stop: set %v, %d collections", r.set, r.collected)
	}
}

// TestCollectionsCloseTogetherMeanBusy: a storm is seen from its second
// collection, before the next tick.
func TestCollectionsCloseTogetherMeanBusy(t *testing.T) {
	f, r := newFake(32 * mib)
	r.live = 5 * mib
	f.afterGC()
	r.now = r.now.Add(1500 * time.Millisecond)
	f.afterGC() // 1.5 s apart: not busy
	if want := []int{Base}; !slices.Equal(r.set, want) {
		t.Fatalf("GOGC set %v, want %v", r.set, want)
	}
	r.now = r.now.Add(50 * time.Millisecond)
	f.afterGC()
	if want := []int{Base, 540}; !slices.Equal(r.set, want) {
		t.Fatalf("two collections 50 ms apart: GOGC set %v, want %v", r.set, want)
	}
	f.tick() // and the tick that finds the rate low ends it
	if want := []int{Base, 540, Base}; !slices.Equal(r.set, want) || r.collected != 1 {
		t.Fatalf("GOGC set %v, %d collections; want %v and 1", r.set, r.collected, want)
	}
	// The collection the tick asked for, 100 ms after the storm's last:
	// not a storm of its own, and the next quiet tick collects no more.
	r.now = r.now.Add(100 * time.Millisecond)
	f.afterGC()
	f.tick()
	if want := []int{Base, 540, Base}; !slices.Equal(r.set, want) || r.collected != 1 {
		t.Fatalf("after its own collection: GOGC set %v, %d collections; want %v and 1", r.set, r.collected, want)
	}
}

// TestFloorDefersCollections runs the real collector: 24 MiB of garbage
// in 32 KiB pieces with the floor raised, and then without it. How many
// cycles 24 MiB takes at Go's own 4 MiB goal depends on how soon each
// concurrent mark ends, which a loaded machine stretches (2 to 8 seen);
// so without the floor the test asks for the goal and one collection.
func TestFloorDefersCollections(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(Base))
	collections := func() uint32 {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.NumGC
	}
	churn := func(n int) uint32 {
		c := collections()
		for i := 0; i < n<<20/(32<<10); i++ {
			sink = make([]byte, 32<<10)
		}
		return collections() - c
	}
	runtime.GC()
	f := New(64 << 20)
	f.Start()
	defer f.Stop()
	churn(16) // busy
	f.tick()
	if f.Percent() <= Base {
		t.Fatalf("GOGC %d after allocating 16 MiB at once, want the floor raised", f.Percent())
	}
	runtime.GC()
	goal := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}}
	metrics.Read(goal)
	// apply leaves a GOGC within 10% of the last alone, and the live heap
	// this collection left is not the one the tick saw.
	if g := goal[0].Value.Uint64(); g < 56<<20 || g > 72<<20 {
		t.Fatalf("the runtime's heap goal is %d MiB at GOGC %d, want the 64 MiB floor", g>>20, f.Percent())
	}
	with := churn(24)
	f.Stop()
	runtime.GC()
	metrics.Read(goal)
	if g := goal[0].Value.Uint64(); g > 16<<20 {
		t.Fatalf("the runtime's heap goal is %d MiB after Stop, want Go's own", g>>20)
	}
	without := churn(24)
	if with > 1 || without < 1 {
		t.Fatalf("collections while making 24 MiB of garbage: %d under a 64 MiB floor (want at most 1), %d without (want at least 1)", with, without)
	}
}

var sink []byte

// TestFinalizerFollowsCollections: the real runtime calls afterGC once per
// collection, and no more after Stop.
func TestFinalizerFollowsCollections(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(Base))
	f := New(1 << 40)
	calls := 0
	set := f.set
	f.set = func(p int) int { calls++; return set(p) }
	runtime.GC()
	f.Start()
	f.mu.Lock()
	f.busy = true // as after a busy second
	f.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for f.Percent() != maxPercent {
		if time.Now().After(deadline) {
			t.Fatalf("no GOGC from the collections' finalizer: %d", f.Percent())
		}
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
	f.Stop()
	if p := debug.SetGCPercent(Base); p != Base {
		t.Fatalf("GOGC %d after Stop, want %d", p, Base)
	}
	n := calls
	for i := 0; i < 3; i++ {
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
	if calls != n {
		t.Fatalf("GOGC set %d times after Stop", calls-n)
	}
}
