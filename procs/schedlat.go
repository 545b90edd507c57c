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

// median returns the median wait since the last call (the upper bound
// of its bucket), or 0 when fewer than minWaits were sampled.
func (w *schedWaits) median() time.Duration {
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
	defer copy(w.prev, h.Counts)
	var total uint64
	for i, n := range h.Counts {
		total += n - w.prev[i]
	}
	if total < minWaits {
		return 0
	}
	var at uint64
	for i, n := range h.Counts {
		if at += n - w.prev[i]; at > total/2 {
			b := h.Buckets[i+1] // the bucket's upper bound
			if math.IsInf(b, 1) {
				b = h.Buckets[i]
			}
			return max(time.Duration(b*float64(time.Second)), 1)
		}
	}
	return 0 // not reached: the counts add up to total
}
