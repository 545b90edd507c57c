package proxy

import (
	"testing"

	"github.com/moat-mqtt/moat/codec"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A pump's counts reach the session's totals and the server's counters
// in runs: at the last packet of a read, a change of type, 64 packets,
// or an explicit flush; none is lost or given the wrong type.
func TestTrafficRuns(t *testing.T) {
	m := newMetrics(&Server{})
	var tr traffic
	frame := func(typ codec.PacketType, n int) codec.Frame { return codec.Frame{Type: typ, Bytes: make([]byte, n)} }
	want := func(step string, pubs, acks float64, packets, bytes uint64) {
		t.Helper()
		if got := testutil.ToFloat64(m.packets[toBroker][codec.PUBLISH]); got != pubs {
			t.Errorf("%s: PUBLISH counter %v, want %v", step, got, pubs)
		}
		if got := testutil.ToFloat64(m.packets[toBroker][codec.PUBACK]); got != acks {
			t.Errorf("%s: PUBACK counter %v, want %v", step, got, acks)
		}
		if got := tr.packets.Load(); got != packets {
			t.Errorf("%s: session packets %d, want %d", step, got, packets)
		}
		if got := tr.bytes.Load(); got != bytes {
			t.Errorf("%s: session bytes %d, want %d", step, got, bytes)
		}
	}

	tr.count(m, toBroker, frame(codec.PUBLISH, 10), false)
	tr.count(m, toBroker, frame(codec.PUBLISH, 20), false)
	want("two not last", 0, 0, 0, 0)
	tr.count(m, toBroker, frame(codec.PUBLISH, 30), true)
	want("last of the read", 3, 0, 3, 60)
	if got := testutil.ToFloat64(m.bytes[toBroker][codec.PUBLISH]); got != 60 {
		t.Errorf("PUBLISH bytes counter %v, want 60", got)
	}

	tr.count(m, toBroker, frame(codec.PUBLISH, 5), false)
	tr.count(m, toBroker, frame(codec.PUBACK, 4), false)
	want("type changed", 4, 0, 4, 65)
	tr.flush(m, toBroker)
	want("flushed", 4, 1, 5, 69)
	tr.flush(m, toBroker)
	want("flushed again", 4, 1, 5, 69)

	for range 63 {
		tr.count(m, toBroker, frame(codec.PUBLISH, 1), false)
	}
	want("63 not last", 4, 1, 5, 69)
	tr.count(m, toBroker, frame(codec.PUBLISH, 1), false)
	want("64th", 68, 1, 69, 133)
	if got := testutil.ToFloat64(m.packets[toClient][codec.PUBLISH]); got != 0 {
		t.Errorf("other direction counted %v", got)
	}
}
