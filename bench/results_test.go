package main

import (
	"slices"
	"testing"
	"time"
)

func TestPairedRatio(t *testing.T) {
	r := newResults(options{})
	for _, c := range [][2]float64{{10, 20}, {9, 10}, {8, 10}, {1, 0}} {
		r.add("s", "a", sample{cpuPerOp: c[0]})
		r.add("s", "b", sample{cpuPerOp: c[1]})
	}
	// Pairs 0.5, 0.9, 0.8; the zero denominator is left out.
	if got, n := r.pairedRatio("s", "a", "b", cpuOp); n != 3 || got != 0.8 {
		t.Fatalf("got %v over %d pairs, want 0.8 over 3", got, n)
	}
	r.add("s", "a", sample{cpuPerOp: 7})
	r.add("s", "b", sample{cpuPerOp: 10})
	// 0.5, 0.7, 0.8, 0.9: an even count takes the mean of the middle two.
	if got, n := r.pairedRatio("s", "a", "b", cpuOp); n != 4 || got < 0.7499 || got > 0.7501 {
		t.Fatalf("got %v over %d pairs, want 0.75 over 4", got, n)
	}
	if _, n := r.pairedRatio("s", "a", "missing", cpuOp); n != 0 {
		t.Fatal("pairs counted against a path with no samples")
	}
}

func TestIdleCounts(t *testing.T) {
	for limit, want := range map[int][]int{
		1 << 20: {5000, 20000}, // 5,000 and 20,000 where the limit allows
		20000:   {5000, 9000},  // each proxy holds two descriptors per connection
		12000:   {5000},
		4096:    {1000},
		1024:    {300},
	} {
		if got := idleCounts(limit); !slices.Equal(got, want) {
			t.Errorf("idleCounts(%d) = %v, want %v", limit, got, want)
		}
	}
}

func TestPooledP99(t *testing.T) {
	r := newResults(options{})
	run := func(from, to int) sample {
		var l latencyResult
		for i := from; i <= to; i++ {
			l.all = append(l.all, time.Duration(i))
		}
		return sample{lat: l}
	}
	// Two runs of 100: the p99 of the 200 is the 199th smallest, which
	// neither run's own p99 (100 and 200) is.
	r.add("latency", "a", run(101, 200))
	r.add("latency", "a", run(1, 100))
	if got, n := r.pooledP99("latency", "a"); n != 200 || got != 199 {
		t.Fatalf("pooled p99 %v of %d, want 199 of 200", got, n)
	}
	if _, n := r.pooledP99("latency", "missing"); n != 0 {
		t.Fatal("a path with no samples has a pooled p99")
	}
}
