package proxy

import "time"

// time.Now reads two clocks, wall and monotonic, each a vDSO call; on the
// packet path they were the largest single item of moat's own CPU (perf:
// 4% of the process). The per-packet checks (is a deadline due for
// re-arming, has keep alive/12 passed, how many tokens has a bucket
// earned) only need the monotonic clock. They keep mono values and turn
// one into wall time only when they arm a deadline.

// epoch anchors the monotonic clock.
var epoch = time.Now()

// mono is nanoseconds since epoch on the monotonic clock. Zero means
// "not set": a session never starts at the very instant of epoch.
type mono int64

// monoNow reads the monotonic clock only (time.Since takes that path for a
// time with a monotonic reading).
func monoNow() mono { return mono(time.Since(epoch)) }

// wall is m as a time.Time, monotonic reading included, for deadlines and
// rate limiters.
func (m mono) wall() time.Time { return epoch.Add(time.Duration(m)) }

// monoOf is the inverse of wall.
func monoOf(t time.Time) mono { return mono(t.Sub(epoch)) }
