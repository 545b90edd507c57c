package proxy

import (
	"time"

	"github.com/moat-mqtt/moat/codec"
)

// takeBucket finds the client's budget by the configured key.
func (s *session) takeBucket() {
	key := s.ident.Name
	switch s.srv.cfg.Limits.Rate.Key {
	case "client_id":
		key = "id:" + s.info.id
	case "username":
		key = "user:" + s.ident.Username
	}
	if key == "" {
		key = "id:" + s.info.id // anonymous: its client id
	}
	s.bucketKey, s.bucket = key, s.srv.rates.Get(key)
}

// limit applies the client's budget to a PUBLISH or SUBSCRIBE before
// anything else looks at it. It reports whether the packet goes on
// (false: answered here, or the session ended; ended says which).
func (p clientToBroker) limit(f codec.Frame, pk codec.Packet) (goOn bool) {
	s := p.s
	if s.bucket == nil || (f.Type != codec.PUBLISH && f.Type != codec.SUBSCRIBE) {
		return true
	}
	now := time.Now()
	action := s.srv.cfg.Limits.Rate.Action
	if action == "reject" && s.version != codec.V5 {
		action = "pace" // 3.x has no way to say "too fast"
	}
	if f.Type == codec.SUBSCRIBE {
		if action == "reject" {
			action = "pace"
		}
		return p.over(action, s.bucket.Subscribe(now), nil)
	}
	pub, _ := pk.(*codec.Publish)
	switch action {
	case "reject", "disconnect":
		if s.bucket.Allow(now, len(f.Bytes)) {
			return true
		}
		return p.over(action, time.Nanosecond, pub)
	}
	return p.over(action, s.bucket.Publish(now, len(f.Bytes)), pub)
}

// over acts on a packet that is delay over the budget.
func (p clientToBroker) over(action string, delay time.Duration, pub *codec.Publish) bool {
	s := p.s
	if delay <= 0 {
		return true
	}
	switch action {
	case "disconnect":
		s.logger().Info("rate limit exceeded; disconnecting", "client_id", s.info.id)
		s.end(endClientError, codec.MessageRateTooHigh, "message rate too high")
		return false
	case "reject":
		// MQTT 5 only: the message is refused with 0x96; QoS 0 is dropped.
		switch pub.QoS {
		case 1:
			s.replyClient(&codec.Ack{PacketType: codec.PUBACK, PacketID: pub.PacketID, ReasonCode: codec.MessageRateTooHigh})
		case 2:
			s.replyClient(&codec.Ack{PacketType: codec.PUBREC, PacketID: pub.PacketID, ReasonCode: codec.MessageRateTooHigh})
		}
		if s.cr.Buffered() == 0 {
			s.uw.flush()
		}
		return false
	}
	// Pace: stop reading from this client until it is within budget. Its
	// TCP window fills and it slows down; other clients are not touched.
	// Forward what is already queued first, so nothing waits behind the pause.
	s.uw.flush()
	for delay > 0 && !s.ended.Load() && !s.draining.Load() {
		step := min(delay, 100*time.Millisecond)
		time.Sleep(step)
		delay -= step
	}
	return !s.ended.Load()
}
