package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moat-mqtt/moat/auth"
	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/payload"
	"github.com/moat-mqtt/moat/policy"
)

// authz is the per-session policy state. Each pump owns the fields named
// for its direction; pending is shared and locked.
type authz struct {
	subj *policy.Subject

	// Client -> broker (client pump only).
	aliasMax  uint16                // the broker's Topic Alias Maximum for this client
	aliases   map[uint16]aliasEntry // the client's topic aliases, as the client sees them
	deniedRel map[uint16]struct{}   // QoS 2 publishes denied here: moat answers their PUBREL
	subs      map[string]struct{}   // filters subscribed through this connection, for the quota

	inflight inflight // QoS 1/2 publishes the broker has not finished

	// QoS 2 publishes a payload rule sent on at QoS 1 (under mu): capped
	// waits for the broker's PUBACK, cappedRel for the client's PUBREL.
	capped, cappedRel map[uint16]struct{}
	nCapped           atomic.Int32 // flows in either map, read without the lock

	// Broker -> client (broker pump only).
	droppedRel map[uint16]struct{} // QoS 2 deliveries dropped here: moat answers the broker's PUBREL

	// SUBSCRIBE / UNSUBSCRIBE with denied filters, waiting for the
	// broker's answer to merge the denials into.
	mu      sync.Mutex
	pending map[uint16]*merge

	problemInfo bool // the client accepts reason strings on acks [MQTT-3.1.2-29]
}

type aliasEntry struct {
	topic string
	// synced is false when the broker's idea of the alias differs: the
	// packet that set it here was denied and never forwarded.
	synced bool
}

// merge remembers which filters of a SUBSCRIBE or UNSUBSCRIBE moat
// refused, and with what code (0: forwarded, the broker answers).
type merge struct {
	ack   codec.PacketType // SUBACK or UNSUBACK
	codes []byte
}

// verifiedCert is the client certificate the TLS handshake verified
// against the listener's client CA, or nil.
func (s *session) verifiedCert() *x509.Certificate {
	var chains [][]*x509.Certificate
	switch c := s.client.(type) {
	case *tls.Conn:
		chains = c.ConnectionState().VerifiedChains
	case *wsConn:
		if c.state != nil {
			chains = c.state.VerifiedChains
		}
	}
	if len(chains) > 0 && len(chains[0]) > 0 {
		return chains[0][0]
	}
	return nil
}

// authenticate establishes who the client is, or refuses it: MQTT 5
// CONNACK 0x86 (bad username or password) or 0x87, 3.x return code 4 or
// 5. The log names the address and method, never the secret.
func (s *session) authenticate(c *codec.Connect) bool {
	s.cert = s.verifiedCert()
	if c.HasUsername && s.srv.live.Load().decoys.users[c.Username] {
		// A canary credential: nobody legitimate logs in with it.
		s.tripped("login", c.Username)
		s.sendConnack(c.Version, codec.BadUsernameOrPassword, codec.ConnRefusedBadCredentials311)
		return false
	}
	if c.HasUsername {
		if banned, until := s.srv.bansUser.Banned(c.Username); banned {
			s.logger().Info("username banned after failed logins", "username", c.Username, "until", until.UTC().Format(time.RFC3339))
			s.sendConnack(c.Version, codec.Banned, codec.ConnRefusedNotAuthorized311)
			return false
		}
	}
	cr := auth.Credentials{Username: c.Username, HasUsername: c.HasUsername, Password: c.Password, HasPassword: c.HasPassword, Cert: s.cert}
	if c.HasPassword {
		s.srv.authSem <- struct{}{}
		defer func() { <-s.srv.authSem }()
	}
	id, err := s.srv.live.Load().auth.Authenticate(&cr)
	if err == nil {
		if id.Method == auth.Password {
			s.srv.bansUser.Forget(c.Username)
		}
		s.ident = id
		assigned, err := s.srv.live.Load().auth.ClientID(id, c.ClientID, c.CleanStart)
		if err != nil {
			// Refused before the broker sees it: the session the id names
			// stays with its owner.
			s.logger().Info("client id refused", "client_id", c.ClientID, "identity", id.Name, "method", id.Method)
			s.sendConnack(c.Version, codec.NotAuthorized, codec.ConnRefusedNotAuthorized311)
			return false
		}
		if assigned != "" {
			c.ClientID, s.assignedID = assigned, true
		}
		return true
	}
	s.logger().Info("authentication failed", "client_id", c.ClientID, "username", c.Username, "error", err.Error())
	s.srv.m.authFailures.WithLabelValues(authCause(err)).Inc()
	if s.srv.bansAddr.Fail(s.addr) {
		s.srv.m.bans.WithLabelValues("login_address").Inc()
		s.logger().Warn("address banned after failed logins", "ban", s.srv.cfg.Auth.BruteForce.Ban.String())
	}
	if c.HasUsername && s.srv.bansUser.Fail(c.Username) {
		s.srv.m.bans.WithLabelValues("login_username").Inc()
		s.logger().Warn("username banned after failed logins", "username", c.Username, "ban", s.srv.cfg.Auth.BruteForce.Ban.String())
	}
	if errors.Is(err, auth.ErrBadCredentials) {
		s.sendConnack(c.Version, codec.BadUsernameOrPassword, codec.ConnRefusedBadCredentials311)
	} else {
		s.sendConnack(c.Version, codec.NotAuthorized, codec.ConnRefusedNotAuthorized311)
	}
	return false
}

// armExpiry ends the session when its token expires: the connection
// lives no longer than its credential. Armed once the session is
// established, so it never races the set-up.
func (s *session) armExpiry() {
	id := s.ident
	if id.Expires.IsZero() || s.srv.cfg.Auth.JWT == nil || s.srv.cfg.Auth.JWT.OnExpiry != "disconnect" {
		return
	}
	s.expiry = time.AfterFunc(time.Until(id.Expires), func() {
		s.logger().Info("token expired; disconnecting", "client_id", s.info.id, "identity", id.Name)
		s.end(endClientError, codec.NotAuthorized, "token expired")
	})
}

// newSubject describes the client to the policy from verified facts only:
// the socket, the listener, the verified certificate and the identity the
// authentication established. An unchecked CONNECT username never
// reaches the policy.
func (s *session) newSubject(c *codec.Connect) *policy.Subject {
	cl := policy.Client{
		ID: c.ClientID, ProtocolVersion: int(c.Version), CleanStart: c.CleanStart, KeepAlive: c.KeepAlive,
		Listener: s.lst.cfg.Name, Transport: s.lst.cfg.Transport, AuthMethod: s.ident.Method, Username: s.ident.Username,
		Claims: s.ident.Claims,
	}
	if host, port, err := net.SplitHostPort(s.remote().String()); err == nil {
		cl.Address = host
		cl.Port, _ = strconv.Atoi(port)
	}
	if s.cert != nil {
		cl.Cert = policy.CertOf(s.cert)
	}
	return policy.NewSubject(s.id, cl)
}

// authorizeConnect asks about the connection and its will. It answers a
// refusal itself and reports whether the client may go on.
func (s *session) authorizeConnect(c *codec.Connect) bool {
	eng := s.srv.policy
	s.az = &authz{subj: s.newSubject(c), problemInfo: true}
	if c.Version == codec.V5 && c.Properties.Has(codec.PropRequestProblemInfo) {
		s.az.problemInfo = c.Properties.RequestProblemInfo != 0
	}
	d := eng.Decide(s.az.subj, &policy.Request{Action: policy.Connect})
	if d.Allow && c.Will != nil {
		// The will is a publish the client makes now, checked now rather
		// than when it fires.
		will := policy.Request{Action: policy.Publish, Topic: c.Will.Topic,
			QoS: c.Will.QoS, Retain: c.Will.Retain, Will: true, Props: propsOf(&c.Will.Properties, c.Version)}
		if d = eng.Decide(s.az.subj, &will); d.Allow && d.Inspect {
			d = eng.CheckPayload(s.az.subj, &will, c.Will.Payload)
		}
	}
	if d.Allow {
		if eng.Mode() == policy.Shadow {
			return true // a policy on trial throttles nobody yet
		}
		lim, err := eng.Limits(s.az.subj)
		if err == nil {
			s.applyLimits(lim)
			return true
		}
		s.logger().Error("policy limits failed; refusing the connection", "client_id", c.ClientID, "error", err)
		d.Reason = "policy limits failed"
	}
	s.srv.m.authFailures.WithLabelValues("policy").Inc()
	s.logger().Info("connection not authorized", "client_id", c.ClientID, "reason", d.Reason)
	ack := &codec.Connack{ReasonCode: codec.ConnRefusedNotAuthorized311}
	v := codec.V311
	if c.Version == codec.V5 {
		v = codec.V5
		ack.ReasonCode = byte(codec.NotAuthorized)
		if limit := c.Properties.MaximumPacketSize; !c.Properties.Has(codec.PropMaximumPacketSize) || len(d.Reason)+16 <= int(limit) {
			setReason(&ack.Properties, d.Reason)
		}
	}
	if b, err := ack.Append(nil, v); err == nil {
		s.cw.write(b, true)
		s.lingerClient()
	}
	return false
}

// propsOf is the part of MQTT 5 properties the policy input carries.
func propsOf(p *codec.Properties, v codec.Version) *policy.Props {
	if v != codec.V5 || !(p.Has(codec.PropContentType) || p.Has(codec.PropResponseTopic) || p.Has(codec.PropUser)) {
		return nil
	}
	out := &policy.Props{ContentType: string(p.ContentType), ResponseTopic: string(p.ResponseTopic)}
	for _, u := range p.User {
		out.User = append(out.User, [2]string{string(u.Key), string(u.Value)})
	}
	return out
}

func setReason(p *codec.Properties, reason string) {
	if reason == "" {
		return
	}
	if len(reason) > 256 {
		reason = reason[:256]
	}
	if !codec.ValidUTF8([]byte(reason)) {
		return
	}
	p.Set(codec.PropReasonString)
	p.ReasonString = append(p.ReasonString[:0], reason...) // into a buffer the caller may have set
}

// ackReason puts the policy's reason on an ack if the client asked for
// problem information and the ack stays within the client's Maximum
// Packet Size [MQTT-3.1.2-25].
func (s *session) ackReason(p *codec.Properties, reason string) {
	if s.az.problemInfo && (s.clientMaxPacket == 0 || len(reason)+16 <= s.clientMaxPacket) {
		setReason(p, reason)
	}
}

// clientVersionAck is the version acks to the client are encoded for.
func (s *session) ackVersion() codec.Version {
	if s.version == codec.V5 {
		return codec.V5
	}
	return codec.V311
}

// reply writes a packet moat answers itself, to the client or to the
// broker, flushing when the side it answers has nothing more buffered. It
// is encoded into a pooled scratch buffer: relay has copied or written it
// by the time it returns.
func (s *session) reply(toClient bool, p codec.Packet) bool {
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	b, err := p.Append(sc.out[:0], s.ackVersion())
	if err != nil {
		s.logger().Error("encoding a reply failed", "type", p.Type().String(), "error", err)
		return true
	}
	if cap(b) <= maxScratchOut {
		sc.out = b[:0]
	}
	if toClient {
		return s.relay(b, s.cr, s.cw, false)
	}
	return s.relay(b, s.ur, s.uw, true)
}

// replyAck answers with an ack of type t for packet id: with code and, if
// the client asked for problem information, reason (MQTT 5 only; 3.x acks
// carry neither). The Ack lives in a pooled scratch, so answering a flood
// of denied publishes allocates nothing.
func (s *session) replyAck(toClient bool, t codec.PacketType, id uint16, code codec.ReasonCode, reason string) bool {
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	sc.reply = codec.Ack{PacketType: t, PacketID: id}
	if s.version == codec.V5 {
		sc.reply.ReasonCode = code
		if reason != "" && toClient {
			sc.reply.Properties.ReasonString = sc.reason[:0]
			s.ackReason(&sc.reply.Properties, reason)
			if rs := sc.reply.Properties.ReasonString; cap(rs) <= maxScratchOut {
				sc.reason = rs[:0]
			}
		}
	}
	return s.reply(toClient, &sc.reply)
}

func (s *session) replyClient(p codec.Packet) bool { return s.reply(true, p) }

// authorize decides a client packet. It returns the bytes to forward (the
// original, a rewrite, or nil when moat answered it itself) and false when
// the session has ended.
func (p clientToBroker) authorize(f codec.Frame, pk codec.Packet) ([]byte, bool) {
	switch pk := pk.(type) {
	case *codec.Publish:
		return p.publish(f, pk)
	case *codec.Subscribe:
		return p.subscribe(f, pk)
	case *codec.Unsubscribe:
		return p.unsubscribe(f, pk)
	case *codec.Ack:
		if pk.PacketType != codec.PUBREL {
			break
		}
		az := p.s.az
		if _, ok := az.deniedRel[pk.PacketID]; ok {
			// The second half of a QoS 2 flow moat completed itself.
			delete(az.deniedRel, pk.PacketID)
			return nil, p.s.replyAck(true, codec.PUBCOMP, pk.PacketID, codec.Success, "")
		}
		if az.nCapped.Load() > 0 {
			az.mu.Lock()
			_, ok := az.cappedRel[pk.PacketID]
			delete(az.cappedRel, pk.PacketID)
			az.mu.Unlock()
			if ok {
				// The broker finished at QoS 1: the rest is moat's.
				az.nCapped.Add(-1)
				return nil, p.s.replyAck(true, codec.PUBCOMP, pk.PacketID, codec.Success, "")
			}
		}
	}
	return f.Bytes, true
}

func (p clientToBroker) publish(f codec.Frame, pub *codec.Publish) ([]byte, bool) {
	s, az := p.s, p.s.az
	topic := policy.View(pub.Topic)
	var alias uint16
	if s.version == codec.V5 && pub.Properties.Has(codec.PropTopicAlias) {
		alias = pub.Properties.TopicAlias
		if alias == 0 || alias > az.aliasMax {
			// [MQTT-3.3.2-8] [MQTT-3.3.2-9]
			s.end(endClientError, codec.TopicAliasInvalid, "topic alias "+strconv.Itoa(int(alias))+" is outside 1.."+strconv.Itoa(int(az.aliasMax)))
			return nil, false
		}
		if topic == "" {
			e, ok := az.aliases[alias]
			if !ok {
				// [MQTT-3.3.4] an alias must be set before it is used alone.
				s.end(endClientError, codec.ProtocolError, "topic alias "+strconv.Itoa(int(alias))+" used before it was set")
				return nil, false
			}
			topic = e.topic
		}
	}
	if len(s.topicRates) > 0 && !p.topicRate(topic, pub) {
		az.learn(alias, pub, false) // refused, but the client set its alias
		return nil, !s.ended.Load()
	}
	// The policy, then the payload rules; either may refuse.
	code, reason, out := codec.Success, "", f.Bytes
	if eng := s.srv.policy; eng != nil {
		req := policy.Request{Action: policy.Publish, Topic: topic, QoS: pub.QoS,
			Retain: pub.Retain, Props: propsOf(&pub.Properties, s.version), At: s.cAt.wall()}
		d := eng.Decide(az.subj, &req)
		if !d.Allow {
			code, reason = codec.NotAuthorized, d.Reason
		} else if d.Inspect {
			if pd := eng.CheckPayload(az.subj, &req, pub.Payload); !pd.Allow {
				code, reason = codec.PayloadFormatInvalid, pd.Reason
			}
		}
	}
	var capped payload.Verdict
	if code == codec.Success {
		if rule := s.srv.live.Load().payload.Rule(topic); rule != nil {
			v := rule.Check(pub.Payload, pub.QoS, pub.Retain)
			switch {
			case v.Refuse != nil:
				code, reason = codec.PayloadFormatInvalid, v.Refuse.Error()
			case v.StripRetain:
				out = append([]byte(nil), f.Bytes...)
				out[0] &^= 0x01
			}
			capped = v
		}
	}
	allowed := code == codec.Success
	az.learn(alias, pub, allowed)
	if !allowed {
		return nil, p.refuse(pub, topic, code, reason)
	}
	resync := alias != 0 && len(pub.Topic) == 0 && !az.aliases[alias].synced
	if !resync && !capped.Capped {
		return out, pub.QoS == 0 || s.acquire()
	}
	fwd := *pub
	fwd.Retain = out[0]&0x01 != 0
	if resync {
		// The broker's alias still names an older topic: say the topic in
		// full, which also re-points the broker's alias.
		e := az.aliases[alias]
		fwd.Topic = []byte(e.topic)
		az.aliases[alias] = aliasEntry{topic: e.topic, synced: true}
	}
	if capped.Capped {
		fwd.QoS = capped.QoS
		if fwd.QoS == 0 {
			fwd.PacketID, fwd.Dup = 0, false // [MQTT-3.3.1-2]
		}
	}
	b, err := fwd.Append(nil, s.version)
	if err != nil {
		s.end(endClientError, codec.ReasonOf(err), err.Error())
		return nil, false
	}
	if !capped.Capped {
		return b, pub.QoS == 0 || s.acquire()
	}
	return nil, p.forwardCapped(b, pub, fwd.QoS)
}

// forwardCapped forwards a publish a payload rule capped to a lower QoS,
// then completes the client's flow at its own QoS: at QoS 0 moat answers
// PUBACK, or PUBREC and later PUBCOMP, itself; a QoS 2 publish sent on at
// QoS 1 gets its PUBREC when the broker's PUBACK comes.
func (p clientToBroker) forwardCapped(b []byte, pub *codec.Publish, qos byte) bool {
	s, az := p.s, p.s.az
	if qos == 1 {
		if !s.acquire() {
			return false
		}
		az.mu.Lock()
		if az.capped == nil {
			az.capped = make(map[uint16]struct{})
		}
		az.capped[pub.PacketID] = struct{}{}
		az.mu.Unlock()
		az.nCapped.Add(1)
		return s.relay(b, s.cr, s.uw, true)
	}
	if !s.relay(b, s.cr, s.uw, true) {
		return false
	}
	if pub.QoS == 1 {
		return s.replyAck(true, codec.PUBACK, pub.PacketID, codec.Success, "")
	}
	if az.deniedRel == nil {
		az.deniedRel = make(map[uint16]struct{})
	}
	az.deniedRel[pub.PacketID] = struct{}{}
	return s.replyAck(true, codec.PUBREC, pub.PacketID, codec.Success, "")
}

// learn records that the client now means pub's topic by alias; the
// broker does too only if the packet is forwarded (synced).
func (az *authz) learn(alias uint16, pub *codec.Publish, synced bool) {
	if alias == 0 || len(pub.Topic) == 0 {
		return
	}
	if az.aliases == nil {
		az.aliases = make(map[uint16]aliasEntry)
	}
	az.aliases[alias] = aliasEntry{topic: string(pub.Topic), synced: synced}
}

// refuse answers a PUBLISH moat will not forward, as on_publish_deny
// says: drop and acknowledge (MQTT 5 with the reason code; a 3.x QoS 2
// flow is completed here), or disconnect.
func (p clientToBroker) refuse(pub *codec.Publish, topic string, code codec.ReasonCode, reason string) bool {
	s, az := p.s, p.s.az
	s.srv.m.refused(code)
	if !s.denied() {
		return false
	}
	if s.srv.cfg.Policy.OnPublishDeny == "disconnect" {
		s.logger().Info("publish refused; disconnecting", "client_id", s.info.id, "topic", topic, "reason", reason)
		s.end(endClientError, code, reason)
		return false
	}
	switch pub.QoS {
	case 1:
		return s.replyAck(true, codec.PUBACK, pub.PacketID, code, reason)
	case 2:
		// [MQTT-4.3.3] in MQTT 5 a PUBREC with a failure code ends the
		// flow; a 3.x client goes on with PUBREL, which moat completes.
		if s.version != codec.V5 {
			if az.deniedRel == nil {
				az.deniedRel = make(map[uint16]struct{})
			}
			az.deniedRel[pub.PacketID] = struct{}{}
		}
		return s.replyAck(true, codec.PUBREC, pub.PacketID, code, reason)
	}
	return true
}

// failCode is the SUBACK / UNSUBACK code for a filter refused with code
// (MQTT 5); 3.x SUBACKs only know 0x80.
func (s *session) failCode(code codec.ReasonCode) byte {
	if s.version == codec.V5 {
		return byte(code)
	}
	return codec.SubackFailure311
}

// subscribe decides each filter of a SUBSCRIBE: the policy, then the
// connection's subscription quota. Refused filters never reach the
// broker; codes holds, per filter, 0 (the broker answers) or the code
// moat answers with.
func (p clientToBroker) subscribe(f codec.Frame, sub *codec.Subscribe) ([]byte, bool) {
	s, az := p.s, p.s.az
	codes := make([]byte, len(sub.Subscriptions))
	refused, reason := 0, ""
	for i, sb := range sub.Subscriptions {
		if s.srv.policy == nil {
			break // no policy: only the quota below
		}
		if d := s.srv.policy.Decide(az.subj, filterRequest(policy.Subscribe, sb.Filter, sb.QoS)); !d.Allow {
			codes[i], reason = s.failCode(codec.NotAuthorized), d.Reason
			refused++
			s.srv.m.refused(codec.NotAuthorized)
			if !s.denied() {
				return nil, false
			}
		}
	}
	if limit := s.srv.limits().MaxSubscriptions; limit > 0 {
		for i, sb := range sub.Subscriptions {
			if codes[i] != 0 {
				continue
			}
			if _, held := az.subs[sb.Filter]; held {
				continue // a re-subscription replaces, it does not add
			}
			if len(az.subs) >= limit {
				codes[i] = s.failCode(codec.QuotaExceeded)
				s.srv.m.refused(codec.QuotaExceeded)
				reason = "more than limits.max_subscriptions (" + strconv.Itoa(limit) + ") filters on this connection"
				refused++
				s.logger().Info("subscription refused: quota", "client_id", s.info.id, "filter", sb.Filter, "limit", limit)
				continue
			}
			if az.subs == nil {
				az.subs = make(map[string]struct{})
			}
			az.subs[sb.Filter] = struct{}{}
		}
	}
	switch refused {
	case 0:
		return f.Bytes, true
	case len(sub.Subscriptions):
		ack := &codec.Suback{PacketID: sub.PacketID, ReasonCodes: codes}
		if s.version == codec.V5 {
			s.ackReason(&ack.Properties, reason)
		}
		return nil, s.replyClient(ack)
	}
	fwd := *sub
	fwd.Subscriptions = make([]codec.Subscription, 0, len(codes)-refused)
	for i, sb := range sub.Subscriptions {
		if codes[i] == 0 {
			fwd.Subscriptions = append(fwd.Subscriptions, sb)
		}
	}
	return p.forwardPart(&fwd, sub.PacketID, codec.SUBACK, codes)
}

func (p clientToBroker) unsubscribe(f codec.Frame, uns *codec.Unsubscribe) ([]byte, bool) {
	s, az := p.s, p.s.az
	codes := make([]byte, len(uns.Filters))
	refused := 0
	for i, filter := range uns.Filters {
		if s.srv.policy == nil {
			break
		}
		if !s.srv.policy.Decide(az.subj, filterRequest(policy.Unsubscribe, filter, 0)).Allow {
			codes[i] = byte(codec.NotAuthorized)
			refused++
		}
	}
	for i, filter := range uns.Filters {
		if codes[i] == 0 {
			delete(az.subs, filter)
		}
	}
	switch refused {
	case 0:
		return f.Bytes, true
	case len(uns.Filters):
		ack := &codec.Unsuback{PacketID: uns.PacketID}
		if s.version == codec.V5 {
			ack.ReasonCodes = codes
		}
		return nil, s.replyClient(ack)
	}
	fwd := *uns
	fwd.Filters = make([]string, 0, len(codes)-refused)
	for i, filter := range uns.Filters {
		if codes[i] == 0 {
			fwd.Filters = append(fwd.Filters, filter)
		}
	}
	if s.version != codec.V5 {
		// A 3.x UNSUBACK carries no per-filter codes: the broker's answer
		// goes through as it is.
		b, err := fwd.Append(nil, s.version)
		return b, p.encoded(err)
	}
	return p.forwardPart(&fwd, uns.PacketID, codec.UNSUBACK, codes)
}

// filterRequest is the policy question about one filter: a $share
// filter is asked about by its inner filter, with the group.
func filterRequest(a policy.Action, filter string, qos byte) *policy.Request {
	r := &policy.Request{Action: a, Topic: filter, QoS: qos}
	if group, inner, ok := codec.SplitShared(filter); ok {
		r.Topic, r.Shared, r.ShareGroup = inner, true, group
	}
	return r
}

// forwardPart forwards the permitted part of a SUBSCRIBE or UNSUBSCRIBE
// under the same packet id, and remembers moat's codes for the answer.
func (p clientToBroker) forwardPart(pk codec.Packet, id uint16, ack codec.PacketType, codes []byte) ([]byte, bool) {
	s := p.s
	b, err := pk.Append(nil, s.version)
	if !p.encoded(err) {
		return nil, false
	}
	s.az.mu.Lock()
	if s.az.pending == nil {
		s.az.pending = make(map[uint16]*merge)
	}
	s.az.pending[id] = &merge{ack: ack, codes: codes}
	s.az.mu.Unlock()
	return b, true
}

func (p clientToBroker) encoded(err error) bool {
	if err != nil {
		p.s.end(endClientError, codec.ReasonOf(err), err.Error())
		return false
	}
	return true
}

// authorize decides a broker packet: deliveries the client may not
// receive are dropped (and acknowledged on its behalf), and SUBACK /
// UNSUBACK get the denials merged back in.
func (p brokerToClient) authorize(f codec.Frame, pk codec.Packet) ([]byte, bool) {
	s, az := p.s, p.s.az
	switch pk := pk.(type) {
	case *codec.Publish:
		if s.srv.policy == nil {
			return f.Bytes, true
		}
		if s.version == codec.V5 && pk.Properties.Has(codec.PropTopicAlias) {
			// moat withholds the client's Topic Alias Maximum from the
			// broker, so every delivery names its topic [MQTT-3.3.2-10].
			s.logger().Warn("broker protocol error", "client_id", s.info.id, "error", "topic alias on a delivery; none were allowed")
			s.end(endUpstreamError, codec.TopicAliasInvalid, "upstream broker sent an invalid packet")
			return nil, false
		}
		d := s.srv.policy.Decide(az.subj, &policy.Request{Action: policy.Receive, Topic: policy.View(pk.Topic),
			QoS: pk.QoS, Retain: pk.Retain, Props: propsOf(&pk.Properties, s.version), At: s.uAt.wall()})
		if d.Allow {
			return f.Bytes, true
		}
		return nil, p.ackDropped(pk.QoS, pk.PacketID)
	case *codec.Ack:
		if s.finished(pk) {
			s.release()
		}
		if pk.PacketType == codec.PUBACK && az.nCapped.Load() > 0 {
			if b, ok := p.cappedAck(pk); ok {
				return b, true
			}
		}
		if pk.PacketType == codec.PUBREL && az.droppedRel != nil {
			if _, ok := az.droppedRel[pk.PacketID]; ok {
				delete(az.droppedRel, pk.PacketID)
				return nil, s.replyAck(false, codec.PUBCOMP, pk.PacketID, codec.Success, "")
			}
		}
	case *codec.Suback:
		return p.merge(f, codec.SUBACK, pk.PacketID, &pk.ReasonCodes, pk)
	case *codec.Unsuback:
		return p.merge(f, codec.UNSUBACK, pk.PacketID, &pk.ReasonCodes, pk)
	}
	return f.Bytes, true
}

// ackDropped completes the broker's side of a delivery moat dropped: at
// QoS 1 a PUBACK; at QoS 2 a PUBREC, and the broker's PUBREL is answered
// here. It reports whether the session goes on.
func (p brokerToClient) ackDropped(qos byte, id uint16) bool {
	s, az := p.s, p.s.az
	switch qos {
	case 1:
		return s.replyAck(false, codec.PUBACK, id, codec.Success, "")
	case 2:
		if az.droppedRel == nil {
			az.droppedRel = make(map[uint16]struct{})
		}
		az.droppedRel[id] = struct{}{}
		return s.replyAck(false, codec.PUBREC, id, codec.Success, "")
	}
	return true
}

// cappedAck turns the broker's PUBACK for a QoS 2 publish moat sent on
// at QoS 1 into the PUBREC the client waits for; the client's PUBREL is
// then answered here. ok is false for any other PUBACK.
func (p brokerToClient) cappedAck(a *codec.Ack) (b []byte, ok bool) {
	az := p.s.az
	az.mu.Lock()
	_, ok = az.capped[a.PacketID]
	if ok {
		delete(az.capped, a.PacketID)
		if az.cappedRel == nil {
			az.cappedRel = make(map[uint16]struct{})
		}
		az.cappedRel[a.PacketID] = struct{}{}
	}
	az.mu.Unlock()
	if !ok {
		return nil, false
	}
	rec := &codec.Ack{PacketType: codec.PUBREC, PacketID: a.PacketID, ReasonCode: a.ReasonCode, Properties: a.Properties}
	if a.ReasonCode >= 0x80 {
		// A failed PUBREC ends the client's flow: no PUBREL will come.
		az.mu.Lock()
		delete(az.cappedRel, a.PacketID)
		az.mu.Unlock()
		az.nCapped.Add(-1)
	}
	b, err := rec.Append(nil, p.s.ackVersion())
	if err != nil {
		return nil, false
	}
	return b, true
}

// merge puts the denied filters' codes back into the broker's answer, at
// their positions in the client's request.
func (p brokerToClient) merge(f codec.Frame, t codec.PacketType, id uint16, codes *[]byte, pk codec.Packet) ([]byte, bool) {
	s, az := p.s, p.s.az
	az.mu.Lock()
	m := az.pending[id]
	if m != nil && m.ack == t {
		delete(az.pending, id)
	}
	az.mu.Unlock()
	if m == nil || m.ack != t {
		return f.Bytes, true
	}
	allowed := 0
	for _, c := range m.codes {
		if c == 0 {
			allowed++
		}
	}
	if len(*codes) != allowed {
		s.logger().Warn("broker protocol error", "client_id", s.info.id, "error", t.String()+" has "+strconv.Itoa(len(*codes))+" codes for "+strconv.Itoa(allowed)+" filters")
		s.end(endUpstreamError, codec.ProtocolError, "upstream broker sent an invalid packet")
		return nil, false
	}
	j := 0
	for i, c := range m.codes {
		if c == 0 {
			m.codes[i] = (*codes)[j]
			j++
		}
	}
	*codes = m.codes
	b, err := pk.Append(nil, s.version)
	if err != nil {
		s.end(endUpstreamError, codec.ReasonOf(err), "re-encoding "+t.String()+": "+err.Error())
		return nil, false
	}
	return b, true
}
