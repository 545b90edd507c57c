package proxy

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/moat-mqtt/moat/codec"
)

// inflight counts the client's QoS 1/2 publishes forwarded to the broker
// and not yet acknowledged by it (PUBACK, PUBCOMP, or PUBREC with a
// failure code). The client pump takes a slot, the broker pump gives it
// back. Publishes moat answers itself take none, so the count never
// exceeds the client's own.
type inflight struct {
	n   atomic.Int32
	max int32
	// free wakes a paced 3.x client pump when a slot frees; made the
	// first time one waits, so connections that never do hold none.
	free atomic.Pointer[chan struct{}]
}

// acquire takes a slot for a publish about to be forwarded. MQTT 5
// clients were told the limit (Receive Maximum) and one that goes over
// it is disconnected [MQTT-3.3.4-9]; a 3.x client, which cannot be told,
// is paced: moat stops reading from it until the broker acknowledges.
func (s *session) acquire() bool {
	q := &s.az.inflight
	if q.max <= 0 {
		return true
	}
	for q.n.Load() >= q.max {
		if s.version == codec.V5 {
			s.end(endClientError, codec.ReceiveMaximumExceeded, "more than "+strconv.Itoa(int(q.max))+" QoS 1/2 publishes unacknowledged (Receive Maximum)")
			return false
		}
		s.uw.flush() // what is queued may be what the broker must ack
		free := q.free.Load()
		if free == nil {
			ch := make(chan struct{}, 1)
			q.free.CompareAndSwap(nil, &ch)
			free = q.free.Load()
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-*free:
		case <-t.C:
		}
		t.Stop()
		s.cAt = monoNow()
		if s.ended.Load() || s.draining.Load() {
			return false
		}
	}
	q.n.Add(1)
	return true
}

// release gives back the slot of a publish the broker has finished with.
func (s *session) release() {
	q := &s.az.inflight
	if q.max <= 0 {
		return
	}
	if q.n.Add(-1) < 0 {
		// An ack for a publish sent before this connection (a resumed
		// session's PUBREL): it held no slot here.
		q.n.Add(1)
	}
	if free := q.free.Load(); free != nil {
		select {
		case *free <- struct{}{}:
		default:
		}
	}
}

// finished reports whether a broker ack frees its publish's in-flight
// slot. MQTT 5 counts as Receive Maximum does: until PUBACK, PUBCOMP or a
// failed PUBREC. A paced 3.x client's QoS 2 slot is freed at PUBREC: its
// PUBREL may be queued behind the very publish that waits for the slot.
func (s *session) finished(a *codec.Ack) bool {
	switch a.PacketType {
	case codec.PUBACK:
		return true
	case codec.PUBCOMP:
		return s.version == codec.V5
	case codec.PUBREC:
		// [MQTT-4.3.3] a failed PUBREC ends the flow.
		return s.version != codec.V5 || a.ReasonCode >= 0x80
	}
	return false
}

// userPropsOver says why a client packet's user properties are over
// limits.max_user_properties or max_user_property_bytes, or "".
func (s *session) userPropsOver(p *codec.Properties) string {
	if len(p.User) == 0 {
		return ""
	}
	lim := s.srv.limits()
	if n := lim.MaxUserProperties; n > 0 && len(p.User) > n {
		return strconv.Itoa(len(p.User)) + " user properties; limits.max_user_properties is " + strconv.Itoa(n)
	}
	if n := int(lim.MaxUserPropertyBytes); n > 0 {
		size := 0
		for _, u := range p.User {
			size += len(u.Key) + len(u.Value)
		}
		if size > n {
			return "user properties of " + strconv.Itoa(size) + " bytes; limits.max_user_property_bytes is " + strconv.Itoa(n)
		}
	}
	return ""
}

// propertiesOf is the property set of a decoded client packet, or nil.
func propertiesOf(pk codec.Packet) *codec.Properties {
	switch pk := pk.(type) {
	case *codec.Publish:
		return &pk.Properties
	case *codec.Ack:
		return &pk.Properties
	case *codec.Subscribe:
		return &pk.Properties
	case *codec.Unsubscribe:
		return &pk.Properties
	case *codec.Disconnect:
		return &pk.Properties
	}
	return nil
}
