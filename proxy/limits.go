package proxy

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/time/rate"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/policy"
	"github.com/moat-mqtt/moat/ratelimit"
)

// connectLimits checks CONNECT against the protocol limits: client id
// length and the will's topic. Over a limit, MQTT 5 clients get a CONNACK
// that says which (0x85, 0x90); 3.x clients get return code 2 for the
// client id and a close for the will, which their protocol cannot name.
func (s *session) connectLimits(c *codec.Connect) bool {
	lim := s.srv.limits()
	if n := lim.MaxClientIDLength; n > 0 && len(c.ClientID) > n {
		s.logger().Info("client id too long", "length", len(c.ClientID), "limit", n)
		s.sendConnack(c.Version, codec.ClientIdentifierNotValid, codec.ConnRefusedIdentifier311)
		return false
	}
	if c.Version == codec.V5 {
		why := s.userPropsOver(&c.Properties)
		if why == "" && c.Will != nil {
			why = s.userPropsOver(&c.Will.Properties)
		}
		if why != "" {
			s.logger().Info("CONNECT over a limit", "error", why)
			s.sendConnack(c.Version, codec.ImplementationSpecificError, 0)
			return false
		}
	}
	if c.Will != nil {
		if err := s.topicLimit(c.Will.Topic); err != "" {
			s.logger().Info("will topic over a limit", "error", err)
			if c.Version == codec.V5 {
				s.sendConnack(c.Version, codec.TopicNameInvalid, 0)
			}
			return false
		}
	}
	return true
}

// topicLimit says why a topic or filter is over the configured length
// or depth, or "".
func (s *session) topicLimit(t string) string {
	lim := s.srv.limits()
	if n := lim.MaxTopicLength; n > 0 && len(t) > n {
		return "topic longer than limits.max_topic_length (" + strconv.Itoa(n) + " bytes)"
	}
	if n := lim.MaxTopicLevels; n > 0 && strings.Count(t, "/")+1 > n {
		return "topic deeper than limits.max_topic_levels (" + strconv.Itoa(n) + ")"
	}
	return ""
}

// clampKeepAlive holds a keep alive of 0 (none) or above the maximum to
// limits.max_keep_alive, so no connection may sit silent for ever.
func (s *session) clampKeepAlive(ka uint16) uint16 {
	limit := uint16(s.srv.limits().MaxKeepAlive / time.Second)
	if ka == 0 || ka > limit {
		return limit
	}
	return ka
}

// protocolLimits checks a client packet against the listener's maximum
// QoS and retain availability and the topic limits. It returns the bytes
// to go on with (the retain flag stripped for a 3.x client where retain
// is off) and false when the session ended.
func (p clientToBroker) protocolLimits(f codec.Frame, pk codec.Packet) ([]byte, bool) {
	s := p.s
	if s.version == codec.V5 {
		if props := propertiesOf(pk); props != nil {
			if why := s.userPropsOver(props); why != "" {
				s.end(endClientError, codec.ImplementationSpecificError, why)
				return nil, false
			}
		}
	}
	switch pk := pk.(type) {
	case *codec.Publish:
		if mq := s.lst.cfg.MaxQoS; mq != nil && int(pk.QoS) > *mq {
			// [MQTT-3.3.1-4]-style: above the Maximum QoS granted.
			s.end(endClientError, codec.QoSNotSupported, "QoS "+strconv.Itoa(int(pk.QoS))+" above the listener's maximum")
			return nil, false
		}
		if s.version == codec.V5 && pk.Properties.Has(codec.PropPayloadFormat) && pk.Properties.PayloadFormat == 1 && !utf8.Valid(pk.Payload) {
			// [MQTT-3.3.2-4] a payload said to be UTF-8 must be.
			s.end(endClientError, codec.PayloadFormatInvalid, "payload format indicator says UTF-8, the payload is not")
			return nil, false
		}
		out := f.Bytes
		if ra := s.lst.cfg.RetainAvailable; ra != nil && !*ra && pk.Retain {
			if s.version == codec.V5 {
				// [MQTT-3.3.1-11] retain when Retain Available is 0.
				s.end(endClientError, codec.RetainNotSupported, "retain is not available on this listener")
				return nil, false
			}
			out = append([]byte(nil), f.Bytes...)
			out[0] &^= 0x01
			pk.Retain = false
		}
		if len(pk.Topic) > 0 {
			t := policy.View(pk.Topic) // a view: no copy per publish
			if err := s.topicLimit(t); err != "" {
				s.end(endClientError, codec.TopicNameInvalid, err)
				return nil, false
			}
			if len(s.srv.live.Load().decoys.topics) > 0 && s.decoyTopic(t, false) && !s.trippedEnd("publish", string(pk.Topic)) {
				return nil, false
			}
		}
		return out, true
	case *codec.Subscribe:
		for _, sb := range pk.Subscriptions {
			if err := s.topicLimit(sb.Filter); err != "" {
				s.end(endClientError, codec.TopicFilterInvalid, err)
				return nil, false
			}
			filter := sb.Filter
			if _, inner, shared := codec.SplitShared(filter); shared {
				filter = inner
			}
			if s.decoyTopic(filter, true) && !s.trippedEnd("subscribe", sb.Filter) {
				return nil, false
			}
		}
	case *codec.Unsubscribe:
		for _, fl := range pk.Filters {
			if err := s.topicLimit(fl); err != "" {
				s.end(endClientError, codec.TopicFilterInvalid, err)
				return nil, false
			}
		}
	}
	return f.Bytes, true
}

// takeBucket decides whose budget the client spends; the buckets
// themselves are fetched at its first PUBLISH or SUBSCRIBE, so a
// connection that only listens holds none.
func (s *session) takeBucket() {
	key := s.ident.Name
	switch s.srv.live.Load().rate.Key {
	case "client_id":
		key = "id:" + s.info.id
	case "username":
		if s.ident.Username != "" {
			key = "user:" + s.ident.Username
		} else {
			key = "" // no verified username: fall back to the client id below
		}
	}
	if key == "" {
		key = "id:" + s.info.id // anonymous: its client id
	}
	s.bucketKey = key
	if s.topicRates == nil {
		s.topicRates = s.srv.live.Load().topicRates
	}
}

// limit applies the client's budget to a PUBLISH or SUBSCRIBE before
// anything else looks at it. It reports whether the packet goes on
// (false: answered here, or the session ended; ended says which).
func (p clientToBroker) limit(f codec.Frame, pk codec.Packet) (goOn bool) {
	s := p.s
	if f.Type != codec.PUBLISH && f.Type != codec.SUBSCRIBE {
		return true
	}
	if s.bucket == nil {
		s.bucket = s.srv.live.Load().rates.Get(s.bucketKey)
		if s.policyRates != nil {
			s.bucket.Override(*s.policyRates)
		}
	}
	now := s.cAt.wall()
	action := p.action()
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

// action is what limits.rate.action does to this client.
func (p clientToBroker) action() string {
	action := p.s.srv.live.Load().rate.Action
	if action == "reject" && p.s.version != codec.V5 {
		action = "pace" // 3.x has no way to say "too fast"
	}
	return action
}

// topicRate applies the first topic rule (limits.topic_rates, or the
// policy's for this client) whose filters match the alias-resolved
// topic. Topics no rule names pay only the match.
func (p clientToBroker) topicRate(topic string, pub *codec.Publish) bool {
	s := p.s
	for i := range s.topicRates {
		tr := &s.topicRates[i]
		if !matchesAny(tr.Filters, topic) {
			continue
		}
		now := s.cAt.wall()
		switch action := p.action(); action {
		case "reject", "disconnect":
			if s.bucket.TopicAllow(i, now, tr) {
				return true
			}
			return p.over(action, time.Nanosecond, pub)
		default:
			return p.over(action, s.bucket.TopicWait(i, now, tr), pub)
		}
	}
	return true
}

func matchesAny(filters []string, topic string) bool {
	for _, f := range filters {
		if codec.TopicMatches(f, topic) {
			return true
		}
	}
	return false
}

// over acts on a packet that is delay over the budget.
func (p clientToBroker) over(action string, delay time.Duration, pub *codec.Publish) bool {
	s := p.s
	if delay <= 0 {
		return true
	}
	s.srv.m.rateLimited.WithLabelValues(action).Inc()
	switch action {
	case "disconnect":
		s.logger().Info("rate limit exceeded; disconnecting", "client_id", s.info.id)
		s.end(endClientError, codec.MessageRateTooHigh, "message rate too high")
		return false
	case "reject":
		// MQTT 5 only: the message is refused with 0x97 (quota exceeded:
		// 0x96 is not a PUBACK/PUBREC code); QoS 0 is dropped.
		if !s.denied() {
			return false
		}
		switch pub.QoS {
		case 1:
			s.replyAck(true, codec.PUBACK, pub.PacketID, codec.QuotaExceeded, "")
		case 2:
			s.replyAck(true, codec.PUBREC, pub.PacketID, codec.QuotaExceeded, "")
		}
		return false
	}
	// Pace: stop reading from this client until it is within budget. Its
	// TCP window fills and it slows down; other clients are not touched.
	// Forward what is already queued first, so nothing waits behind the pause.
	s.cq.flush(s)
	for delay > 0 && !s.ended.Load() && !s.draining.Load() {
		step := min(delay, 100*time.Millisecond)
		time.Sleep(step)
		delay -= step
	}
	s.cAt = monoNow()
	return !s.ended.Load()
}

// applyLimits takes the budgets the policy gave this client, if any.
func (s *session) applyLimits(l *policy.Limits) {
	if l == nil {
		return
	}
	s.policyRates = &ratelimit.Rates{
		Messages: rate.Limit(l.PublishPerSecond), MessageBurst: l.PublishBurst,
		Bytes: rate.Limit(l.BytesPerSecond), ByteBurst: l.BytesBurst,
		Subscribes: rate.Limit(l.SubscribePerSecond), SubscribeBurst: l.SubscribeBurst,
	}
	if l.TopicRates != nil {
		s.topicRates = make([]ratelimit.TopicRule, 0, len(l.TopicRates))
		for _, tr := range l.TopicRates {
			s.topicRates = append(s.topicRates, ratelimit.TopicRule{Filters: tr.Topics, PerSecond: tr.PublishPerSecond, Burst: tr.PublishBurst})
		}
	}
}
