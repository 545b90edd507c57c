package procs

import (
	"math"
	"runtime/metrics"
	"time"
)

// schedWaits reads the runtime's histogram of how long runnable
// goroutines waited for a P (the runtime samples one wait in eight).
type schedWaits struct {
	s    []metrics.Sample
	prev []uint64
}

func newSchedWaits() *schedWaits {
	return &schedWaits{s: []metrics.Sample{{Name: "/sched/latencies:seconds"}}}
}

// mean returns the mean wait since the last call, or 0 when fewer than
// minWaits were sampled.
func (w *schedWaits) mean() time.Duration {
	metrics.Read(w.s) // reuses the histogram's slices: no allocation
	if w.s[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0
	}
	h := w.s[0].Value.Float64Histogram()
	if len(w.prev) != len(h.Counts) {
		w.prev = make([]uint64, len(h.Counts))
		copy(w.prev, h.Counts)
		return 0
	}
	d := meanSince(h, w.prev)
	copy(w.prev, h.Counts)
	return d
}

// meanSince is the mean of the waits h counted since prev, each taken at
// its bucket's upper bound (the lower one for the last, unbounded
// bucket); 0 when fewer than minWaits.
//
// The mean, not the median: most wake-ups find a P at once even when
// some wait behind long work. In a handshake storm on one P the median
// wait was 1-10 µs while the mean was 0.2-0.8 ms (a TLS handshake holds
// the P for about half a millisecond), and the connections took longer.
func meanSince(h *metrics.Float64Histogram, prev []uint64) time.Duration {
	var n uint64
	var sum float64
	for i, c := range h.Counts {
		k := c - prev[i]
		if k == 0 {
			continue
		}
		b := h.Buckets[i+1]
		if math.IsInf(b, 1) {
			b = h.Buckets[i]
		}
		n += k
		sum += float64(k) * b
	}
	if n < minWaits {
		return 0
	}
	return max(time.Duration(sum/float64(n)*float64(time.Second)), 1)
}
