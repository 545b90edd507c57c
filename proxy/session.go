package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moat-mqtt/moat/auth"
	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/ratelimit"
)

// Reads are batched by codec.Reader, so a burst of small packets costs one
// read; writes are coalesced and flushed when the reading side has nothing
// more buffered. Both directions take their buffers from pools only while
// data flows, so an idle connection holds none.
const (
	writeBufSize = 16 << 10
	lingerTime   = 500 * time.Millisecond
)

var writePool = sync.Pool{New: func() any { b := make([]byte, 0, writeBufSize); return &b }}

// endKind says why a session ended and so how each side is closed.
type endKind int

const (
	endNone               endKind = iota
	endClientGone                 // client closed or reset without DISCONNECT: the broker sees an abrupt close (will fires)
	endClientDisconnect           // client sent DISCONNECT: forwarded, broker closes gracefully
	endClientError                // client broke the protocol or timed out: v5 DISCONNECT with a reason, abrupt upstream close
	endUpstreamGone               // broker closed without DISCONNECT
	endUpstreamDisconnect         // broker sent DISCONNECT: forwarded to the client
	endUpstreamError              // broker sent something invalid
	endShutdown                   // moat is shutting down: drain, then v5 DISCONNECT 0x8B
)

// clientInfo is what the session keeps of CONNECT once it is forwarded.
type clientInfo struct {
	id, username string
	keepAlive    uint16
	cleanStart   bool
}

// logger returns the log with the connection's attributes. Built per call,
// since logging is rare and a per-session logger costs every idle
// connection memory.
func (s *session) logger() *slog.Logger {
	return s.srv.log.With("conn", s.id, "listener", s.lst.cfg.Name, "remote", s.remote().String())
}

// logs says whether lines at level l are written. Every connection passes
// the lines guarded by it, and slog's With formats the session's
// attributes at once: 1.8% of moat's CPU in a plain connection storm, for
// lines nobody wrote.
func (s *session) logs(l slog.Level) bool {
	return s.srv.log.Enabled(context.Background(), l)
}

// remote is the client's address: from the PROXY header, or the socket.
func (s *session) remote() net.Addr {
	if s.peer != nil {
		return s.peer
	}
	return s.client.RemoteAddr()
}

// session is one client connection and its upstream connection.
type session struct {
	srv    *Server
	lst    *listener
	id     uint64
	addr   string   // the client's IP, the key of per-address limits
	peer   net.Addr // the client's address from a PROXY header; nil: the socket's
	client net.Conn
	start  time.Time

	cr  *codec.Reader // client -> moat
	cw  *peerWriter   // moat -> client
	cwc *waitConn     // socket under the client connection; nil if not a socket

	upstream net.Conn
	ur       *codec.Reader // broker -> moat
	uw       *peerWriter   // moat -> broker
	uwc      *waitConn

	info       clientInfo
	version    codec.Version
	keepAlive  time.Duration // 1.5 x the negotiated keep alive, 0 for none
	armedAt    mono          // when the client read deadline was last set (0: re-arm)
	kaDeadline time.Time     // the keep alive deadline armClient set
	lastRead   mono          // last complete client packet (to within ka/8)
	uArmedAt   mono          // when the upstream read deadline was last set (0: re-arm)
	// cAt and uAt are when the packet each pump is handling was read (or
	// when it last waited for anything since): one clock read serves the
	// packet's keep alive, rate, policy-cache and write-deadline checks.
	cAt, uAt mono
	// upDeadline is the hard upstream read deadline (unix ns; 0: none),
	// set when the session ends and the broker is given time to close.
	upDeadline atomic.Int64
	// Ids under which the pumps are parked, for unparking them, and the
	// functions that resume them (bound once: parking allocates little).
	cpark, upark                 atomic.Uint64
	resumeClient, resumeUpstream func(error)
	cStep, uStep                 func() bool // the pumps' handle, bound once
	// What each pump queued and has not flushed (client->broker: cq).
	cq, uq queued
	// clientMaxPacket is the client's own Maximum Packet Size (MQTT 5), for
	// packets moat writes to it; 0 means no limit beyond the protocol's.
	clientMaxPacket int
	// az is the per-connection policy and limits state.
	az *authz
	// ident is who the client proved to be; cert is its verified
	// certificate, if it presented one.
	ident       auth.Identity
	cert        *x509.Certificate
	assignedID  bool              // moat gave the client its identity as client id
	bucket      *ratelimit.Client // the client's PUBLISH/SUBSCRIBE budget
	bucketKey   string
	topicRates  []ratelimit.TopicRule // per topic budgets (config, or the policy's for this client)
	policyRates *ratelimit.Rates      // the policy's rates for this client, if it gave any
	expiry      *time.Timer           // ends the session when its token expires

	// Packets and bytes read from each side, for the admin API.
	fromClient, fromBroker traffic

	up       atomic.Bool  // established: the admin API may read info and ident
	pumps    atomic.Int32 // pumps still running
	draining atomic.Bool
	ended    atomic.Bool // set once end has run: later errors are consequences
	endOnce  sync.Once
	kind     endKind
	reason   string

	mu     sync.Mutex // guards closed
	closed bool
}

func newSession(srv *Server, l *listener, conn net.Conn) *session {
	id := srv.nextID.Add(1)
	s := &session{
		srv:    srv,
		lst:    l,
		id:     id,
		client: conn,
		start:  time.Now(),
	}
	wc := newWaitConn(conn, l.tls != nil)
	s.cwc, _ = wc.(*waitConn)
	s.client = wc
	if l.tls != nil && !l.webSocket() { // wss: the HTTP server did the TLS
		s.client = tls.Server(wc, l.tls)
	}
	return s
}

// serve establishes the session on the accepting goroutine, then hands
// over to the two pumps, each on a fresh goroutine: the deep stack of the
// TLS handshake is not kept for the life of the connection.
func (s *session) serve() {
	if err := s.establish(); err != nil {
		if s.logs(slog.LevelDebug) {
			s.logger().Debug("connection refused", "error", err)
		}
		s.finish()
		return
	}
	s.up.Store(true)
	if s.logs(slog.LevelInfo) {
		s.logger().Info("client connected", "client_id", s.info.id, "identity", s.ident.Name, "auth_method", s.ident.Method, "username", s.info.username,
			"protocol", s.version.String(), "clean_start", s.info.cleanStart, "keep_alive", s.info.keepAlive)
	}
	s.pumps.Store(2)
	s.armExpiry()
	s.takeBucket()
	s.resumeClient, s.resumeUpstream = clientToBroker{s}.start, brokerToClient{s}.start
	s.cStep, s.uStep = clientToBroker{s}.handle, brokerToClient{s}.handle
	s.flushBeforeReads()
	// Most clients say nothing right after CONNACK: park both sides at
	// once rather than start goroutines only to park them a second later.
	s.armClient()
	s.startPump(s.cr, s.cwc, &s.cpark, s.kaDeadline, s.clientIdle(), s.resumeClient)
	s.startPump(s.ur, s.uwc, &s.upark, time.Time{}, s.upstreamIdle(), s.resumeUpstream)
}

// readHooker is a connection that can run a function before a read that
// may wait for the network (waitConn, wsConn).
type readHooker interface{ setBeforeRead(func()) }

// flushBeforeReads makes each pump flush what it queued (and its counts)
// before it reads its side from the network, and, inside serve, stamp the
// time and move its read deadline once per wake-up rather than once per
// packet. The pumps flush once nothing read is left over, but a read can
// end in the middle of the next packet (or TLS record); without this, a
// packet would wait for the rest of the next one to arrive, which on a
// slow link carrying a large message can be seconds.
func (s *session) flushBeforeReads() {
	// Errors are left to the next write or read, which see them too.
	client, _ := s.client.(readHooker) // WebSocket
	if s.cwc != nil {
		client = s.cwc // under TLS s.client is the tls.Conn
	}
	if client != nil {
		client.setBeforeRead(func() {
			s.fromClient.flush(s.srv.m, toBroker)
			s.cq.flush(s)
			if s.armedAt == 0 {
				// The keep alive moved after the deadline was armed (in
				// serve, at the start of the wake-up): the wait needs
				// the new one.
				s.armClient()
			}
		})
	}
	if s.cwc != nil {
		s.cwc.setOnWake(func() {
			s.cAt = monoNow()
			s.armClientAt(s.cAt)
		})
	}
	if s.uwc != nil {
		s.uwc.setBeforeRead(func() {
			s.fromBroker.flush(s.srv.m, toClient)
			s.uq.flush(s)
			switch q := &s.uq; {
			case q.held && !q.holdArmed:
				// PUBACKs wait for the broker's next: wait for it at
				// most until the hold ends (holdAck).
				q.holdArmed, s.uArmedAt = true, 0
				d := q.heldAt.wall().Add(ackHold)
				if hard := s.upstreamDeadline(); !hard.IsZero() {
					d = minTime(d, hard)
				}
				s.upstream.SetReadDeadline(d)
			case !q.held && s.uArmedAt == 0:
				s.armUpstream() // a hold ended in this wake-up: its deadline goes
			}
		})
		s.uwc.setOnWake(func() {
			s.uAt = monoNow()
			if !s.uq.holdArmed {
				s.armUpstreamAt(s.uAt)
			}
		})
	}
}

// startPump parks a pump whose side has nothing to read, or starts its
// goroutine.
func (s *session) startPump(r *codec.Reader, wc *waitConn, slot *atomic.Uint64, hard time.Time, idle bool, resume func(error)) {
	if idle && s.srv.parker != nil {
		r.Release()
		if s.az != nil && s.az.subj != nil {
			s.az.subj.Release()
		}
		if ok, err := wc.TryFill(); !ok && err == nil && s.srv.parker.park(wc, slot, hard, resume) == nil {
			if s.stale(wc, hard) {
				s.srv.parker.unpark(slot) // the other pump ended or moved things meanwhile
			}
			return
		}
	}
	go resume(nil)
}

// pumpDone is called by each pump as it stops; the last one finishes.
func (s *session) pumpDone() {
	if s.pumps.Add(-1) != 0 {
		return
	}
	if s.kind == endShutdown {
		if s.version == codec.V5 {
			s.sendClientDisconnect(codec.ServerShuttingDown, "server shutting down")
		}
		s.lingerClient()
	}
	if s.logs(slog.LevelInfo) {
		s.logger().Info("client disconnected", "client_id", s.info.id, "identity", s.ident.Name, "protocol", s.version.String(),
			"duration", time.Since(s.start).Round(time.Millisecond).String(), "reason", s.reason)
	}
	s.finish()
}

// finish closes both connections, returns buffers and forgets the session.
func (s *session) finish() {
	if s.expiry != nil {
		s.expiry.Stop()
	}
	if s.bucket != nil {
		s.srv.live.Load().rates.Put(s.bucketKey, s.bucket)
	}
	if s.addr != "" && !s.lst.webSocket() {
		// (A WebSocket's admission is released with its HTTP connection.)
		s.srv.conns.Release(s.addr)
	}
	s.closeAll()
	if s.cr != nil {
		s.cr.Drop()
	}
	if s.ur != nil {
		s.ur.Drop()
	}
	if s.cwc != nil {
		s.cwc.Release()
	}
	if s.uwc != nil {
		s.uwc.Release()
	}
	s.srv.forget(s)
}

// establish runs the TLS handshake, reads CONNECT, dials the broker and
// relays its CONNACK. On error the client has been answered where the
// protocol allows, and serve's deferred closeAll cleans up.
func (s *session) establish() error {
	lim := s.srv.limits()
	if tc, ok := s.client.(*tls.Conn); ok {
		ctx, cancel := context.WithTimeout(context.Background(), s.lst.cfg.TLS.HandshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			s.srv.m.tlsFailures.WithLabelValues(s.lst.cfg.Name, tlsCause(err)).Inc()
			s.logger().Info("tls handshake failed", "error", err)
			return err
		}
	}
	s.cr = codec.NewReader(s.client, int(lim.MaxPacketSize))
	s.cw = newPeerWriter(s.client, lim.WriteTimeout)

	// [MQTT-3.1.0-1] the first packet must be CONNECT, and it must arrive
	// complete within connect_timeout.
	s.client.SetReadDeadline(time.Now().Add(lim.ConnectTimeout))
	f, err := s.cr.ReadPacket()
	if err != nil {
		s.logReadError("reading CONNECT", err)
		return err
	}
	s.fromClient.count(s.srv.m, toBroker, f, true)
	if f.Type != codec.CONNECT {
		s.logger().Info("first packet is not CONNECT; closing", "type", f.Type.String())
		return fmt.Errorf("first packet %s", f.Type)
	}
	c, err := codec.DecodeConnect(f)
	if err != nil {
		s.logger().Info("invalid CONNECT", "error", err)
		s.refuseConnect(c, err)
		return err
	}
	if c.Version == codec.V5 && c.Properties.Has(codec.PropAuthMethod) {
		// Enhanced authentication (AUTH exchanges) is not implemented: refuse
		// it plainly rather than pass an unchecked exchange to the broker.
		s.logger().Info("enhanced authentication refused", "method", string(c.Properties.AuthMethod), "client_id", c.ClientID)
		s.sendConnack(c.Version, codec.BadAuthenticationMethod, 0)
		return errors.New("enhanced authentication is not supported")
	}
	s.version = c.Version
	if !s.connectLimits(c) {
		return errors.New("CONNECT over a limit")
	}
	if !s.authenticate(c) {
		return errors.New("authentication failed")
	}
	if s.srv.policy != nil && !s.authorizeConnect(c) {
		return errors.New("connection not authorized")
	}
	if s.az == nil {
		// Payload rules and the per-connection limits need the topic
		// behind every alias, and the refusal machinery, even without a
		// policy.
		s.az = &authz{problemInfo: !(c.Version == codec.V5 && c.Properties.Has(codec.PropRequestProblemInfo) && c.Properties.RequestProblemInfo == 0)}
	}
	if n := lim.MaxInflight; n > 0 {
		s.az.inflight.max = int32(n)
	}
	s.lastRead = monoNow()
	s.info = clientInfo{id: c.ClientID, username: c.Username, keepAlive: c.KeepAlive, cleanStart: c.CleanStart}
	ka := s.clampKeepAlive(c.KeepAlive)
	s.setKeepAlive(ka)
	if c.Version == codec.V5 && c.Properties.Has(codec.PropMaximumPacketSize) {
		s.clientMaxPacket = int(c.Properties.MaximumPacketSize)
	}

	// Dial the broker and forward CONNECT.
	up, err := s.dialUpstream()
	if err != nil {
		s.logger().Warn("upstream unavailable", "upstream", s.srv.cfg.Upstream.Address, "error", err)
		s.sendConnack(c.Version, codec.ServerUnavailable, codec.ConnRefusedServerUnavailable)
		return err
	}
	s.mu.Lock()
	s.upstream = up
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return errors.New("session closed while dialing")
	}
	s.ur = codec.NewReader(up, int(lim.MaxPacketSize))
	// An MQTT 5 client's limit reaches the broker in CONNECT; a 3.x
	// client's cannot, so a delivery over it costs that message only.
	s.ur.SkipOversizePublish(s.version != codec.V5)
	s.uw = newPeerWriter(up, lim.WriteTimeout)

	connectBytes, err := s.upstreamConnect(c, f.Bytes)
	if err != nil {
		return err
	}
	if err := s.uw.write(connectBytes, true); err != nil {
		s.logger().Warn("upstream write failed", "error", err)
		s.sendConnack(c.Version, codec.ServerUnavailable, codec.ConnRefusedServerUnavailable)
		return err
	}

	// Relay the broker's CONNACK.
	up.SetReadDeadline(time.Now().Add(lim.ConnectTimeout))
	f, err = s.ur.ReadPacket()
	if err == nil {
		s.fromBroker.count(s.srv.m, toClient, f, true)
	}
	if err == nil && f.Type != codec.CONNACK {
		err = fmt.Errorf("broker answered CONNECT with %s", f.Type)
	}
	var ack *codec.Connack
	if err == nil {
		var p codec.Packet
		p, err = codec.Decode(f, c.Version)
		ack, _ = p.(*codec.Connack)
	}
	if err != nil {
		s.logger().Warn("upstream did not accept the connection", "upstream", s.srv.cfg.Upstream.Address, "error", err)
		s.sendConnack(c.Version, codec.ServerUnavailable, codec.ConnRefusedServerUnavailable)
		return err
	}
	up.SetReadDeadline(time.Time{})
	connack := f.Bytes
	if c.Version == codec.V5 {
		if ack.Properties.Has(codec.PropServerKeepAlive) && ack.Properties.ServerKeepAlive <= ka && ack.Properties.ServerKeepAlive != 0 {
			ka = ack.Properties.ServerKeepAlive
		}
		s.setKeepAlive(ka)
		if ka != c.KeepAlive && (!ack.Properties.Has(codec.PropServerKeepAlive) || ack.Properties.ServerKeepAlive != ka) {
			// [MQTT-3.2.2-21] the client must use the keep alive moat holds it to.
			ack.Properties.Set(codec.PropServerKeepAlive)
			ack.Properties.ServerKeepAlive = ka
			connack = nil
		}
		if mq := s.lst.cfg.MaxQoS; mq != nil && *mq < 2 && (!ack.Properties.Has(codec.PropMaximumQoS) || int(ack.Properties.MaximumQoS) > *mq) {
			ack.Properties.Set(codec.PropMaximumQoS)
			ack.Properties.MaximumQoS = byte(*mq)
			connack = nil
		}
		if ra := s.lst.cfg.RetainAvailable; ra != nil && !*ra {
			ack.Properties.Set(codec.PropRetainAvailable)
			ack.Properties.RetainAvailable = 0
			connack = nil
		}
		if n := lim.MaxInflight; n > 0 && (!ack.Properties.Has(codec.PropReceiveMaximum) || int(ack.Properties.ReceiveMaximum) > n) {
			// [MQTT-3.3.4-9] the client may have no more than this in flight.
			ack.Properties.Set(codec.PropReceiveMaximum)
			ack.Properties.ReceiveMaximum = uint16(n)
			connack = nil
		}
		if ack.Properties.Has(codec.PropTopicAliasMaximum) {
			s.az.aliasMax = ack.Properties.TopicAliasMaximum
		}
		// Tell the client the largest packet moat accepts [MQTT-3.2.2-15].
		if !ack.Properties.Has(codec.PropMaximumPacketSize) || int(ack.Properties.MaximumPacketSize) > int(lim.MaxPacketSize) {
			ack.Properties.Set(codec.PropMaximumPacketSize)
			ack.Properties.MaximumPacketSize = uint32(lim.MaxPacketSize)
			connack = nil
		}
		if s.assignedID && ack.ReasonCode == 0 && !ack.Properties.Has(codec.PropAssignedClientID) {
			// [MQTT-3.2.2-16] tell the client the id it was given.
			ack.Properties.Set(codec.PropAssignedClientID)
			ack.Properties.AssignedClientID = []byte(c.ClientID)
			connack = nil
		}
		if connack == nil {
			if connack, err = ack.Append(nil, codec.V5); err != nil {
				return fmt.Errorf("re-encoding CONNACK: %w", err)
			}
		}
	}
	if err := s.cw.write(connack, true); err != nil {
		return err
	}
	if ack.ReasonCode != 0 {
		s.logger().Info("broker refused the connection", "client_id", c.ClientID, "code", ack.ReasonCode)
		return fmt.Errorf("broker refused the connection with code 0x%02X", ack.ReasonCode)
	}
	s.client.SetReadDeadline(time.Time{})
	return nil
}

// upstreamConnect is the CONNECT the broker gets: the client's own bytes
// when nothing needs to change, otherwise re-encoded with moat's changes.
// c carries the assigned client id already.
func (s *session) upstreamConnect(c *codec.Connect, orig []byte) ([]byte, error) {
	lim := s.srv.limits()
	cred := &s.srv.cfg.Upstream.Credentials
	fwd := *c
	changed := s.assignedID
	if c.Version == codec.V5 && (!c.Properties.Has(codec.PropMaximumPacketSize) || int(c.Properties.MaximumPacketSize) > int(lim.MaxPacketSize)) {
		// Ask the broker not to send this client more than moat accepts,
		// so an oversized message is dropped by the broker rather than
		// cutting the session here.
		fwd.Properties.Set(codec.PropMaximumPacketSize)
		fwd.Properties.MaximumPacketSize = uint32(lim.MaxPacketSize)
		changed = true
	}
	// Toward the client the client's own Receive Maximum applies, as it
	// sent it: lowering it would make Mosquitto 2.0 reorder deliveries to
	// a subscriber that sits at the limit (seen in the soak test), which
	// the broker would otherwise deliver in order.
	if c.Version == codec.V5 && s.srv.policy != nil && c.Properties.Has(codec.PropTopicAliasMaximum) && c.Properties.TopicAliasMaximum > 0 {
		// Deliveries must name their topic: a delivery moat drops could
		// otherwise set an alias the client never learns.
		fwd.Properties.Clear(codec.PropTopicAliasMaximum)
		changed = true
	}
	switch cred.Mode {
	case "strip":
		fwd.HasUsername, fwd.Username, fwd.HasPassword, fwd.Password = false, "", false, nil
		changed = changed || c.HasUsername || c.HasPassword
	case "replace":
		fwd.HasUsername, fwd.Username, fwd.HasPassword, fwd.Password = true, cred.Username, s.srv.svcPass != nil, s.srv.svcPass
		changed = true
	}
	if cred.IdentityAsUsername && s.ident.Name != "" {
		fwd.HasUsername, fwd.Username = true, s.ident.Name
		changed = true
	}
	if c.Version != codec.V5 && fwd.HasPassword && !fwd.HasUsername {
		// [MQTT-3.1.2-22] 3.1.1 has no password without a username.
		fwd.HasPassword, fwd.Password = false, nil
	}
	if !changed {
		return orig, nil
	}
	b, err := fwd.Append(nil, c.Version)
	if err != nil {
		return nil, fmt.Errorf("re-encoding CONNECT: %w", err)
	}
	return b, nil
}

func (s *session) dialUpstream() (conn net.Conn, err error) {
	// The broker that answered last goes first; the others, in their
	// configured order, when it does not.
	addrs := s.srv.upstreams
	first := int(s.srv.upPreferred.Load())
	for i := range addrs {
		n := (first + i) % len(addrs)
		if conn, err = s.dialBroker(n); err == nil {
			if n != first {
				s.srv.upPreferred.Store(int32(n))
				s.logger().Warn("upstream failover", "from", addrs[first], "to", addrs[n])
			}
			return conn, nil
		}
		if len(addrs) > 1 {
			s.logger().Warn("upstream unavailable, trying the next", "upstream", addrs[n], "error", err)
		}
	}
	return nil, err
}

// dialBroker connects to upstream n (TCP, then TLS if configured).
func (s *session) dialBroker(n int) (conn net.Conn, err error) {
	start := time.Now()
	defer func() { s.srv.m.observeDial(start, err) }()
	cfg := &s.srv.cfg.Upstream
	ctx, cancel := context.WithTimeout(context.Background(), cfg.DialTimeout)
	defer cancel()
	dial := dialer.DialContext
	if s.srv.dial != nil {
		dial = s.srv.dial
	}
	conn, err = dial(ctx, "tcp", s.srv.upstreams[n])
	if err != nil {
		return nil, err
	}
	wc := newWaitConn(conn, s.srv.upstream != nil)
	s.uwc, _ = wc.(*waitConn)
	if s.srv.upstream == nil {
		return wc, nil
	}
	tc := tls.Client(wc, s.srv.upstreamTLS[n])
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return tc, nil
}

// refuseConnect answers an invalid CONNECT in the client's protocol where
// the spec gives a way to say why, and otherwise just closes.
func (s *session) refuseConnect(c *codec.Connect, err error) {
	if c == nil {
		return
	}
	code := codec.ReasonOf(err)
	switch code {
	case codec.UnsupportedProtocolVersion:
		// [MQTT-3.1.2-2] answer 0x84 to a v5 level, return code 1 otherwise.
		s.sendConnack(c.Version, codec.UnsupportedProtocolVersion, codec.ConnRefusedVersion311)
	case codec.ClientIdentifierNotValid:
		s.sendConnack(c.Version, code, codec.ConnRefusedIdentifier311)
	default:
		if c.Version == codec.V5 {
			s.sendConnack(c.Version, code, 0)
		}
		// [MQTT-3.1.4-1] 3.x has no return code for a malformed CONNECT: close.
	}
}

func (s *session) sendConnack(v codec.Version, code5 codec.ReasonCode, code3 byte) {
	ack := &codec.Connack{ReasonCode: code3}
	if v == codec.V5 {
		ack.ReasonCode = byte(code5)
	} else {
		v = codec.V311
	}
	b, err := ack.Append(nil, v)
	if err == nil {
		s.cw.write(b, true)
		s.lingerClient()
	}
}

// setKeepAlive arms the client read deadline at 1.5 x keep alive
// [MQTT-3.1.2-24]; 0 disables it.
func (s *session) setKeepAlive(ka uint16) {
	s.keepAlive = time.Duration(ka) * 1500 * time.Millisecond
}

// idleAfter is how long a pump waits for its socket in the Go netpoller
// before it hands the wait to the parker and its goroutine exits: busy
// connections keep their goroutines, quiet ones cost none.
const idleAfter = time.Second

// armClient moves the client read deadline forward: the keep alive
// deadline [MQTT-3.1.2-24], counted from the last packet received, or
// idleAfter from now if sooner. To keep a timer update off every packet it
// re-arms at most every eighth of the shorter period; lastRead is likewise
// kept to within keep alive/8, and that much slack is added, so a client is
// never cut before 1.5 x keep alive and at most keep alive/8 after.
func (s *session) armClient() { s.armClientAt(monoNow()) }

// armClientAt is armClient with the clock already read.
func (s *session) armClientAt(now mono) {
	period := idleAfter
	if s.keepAlive > 0 {
		period = min(period, s.keepAlive)
	}
	if s.armedAt != 0 && now-s.armedAt < mono(period/8) {
		return
	}
	s.armedAt = now
	d := now.wall().Add(idleAfter + idleAfter/8)
	if s.keepAlive > 0 {
		s.kaDeadline = s.lastRead.wall().Add(s.keepAlive + s.keepAlive/12) // (1.5 x ka)/12 = ka/8
		d = minTime(d, s.kaDeadline)
	}
	s.client.SetReadDeadline(d)
}

// clientPacket notes that a complete packet arrived at now: it stamps cAt
// and moves the keep alive.
func (s *session) clientPacket(now mono) {
	s.cAt = now
	if s.keepAlive == 0 {
		return
	}
	if now := s.cAt; now-s.lastRead >= mono(s.keepAlive/12) {
		s.lastRead = now
		s.armedAt = 0 // the keep alive deadline moved: re-arm
	}
}

// armUpstream does the same for the broker side, where the only hard
// deadline is the drain deadline set when the session ends.
func (s *session) armUpstream() { s.armUpstreamAt(monoNow()) }

func (s *session) armUpstreamAt(now mono) {
	if s.uArmedAt != 0 && now-s.uArmedAt < mono(idleAfter/8) {
		return
	}
	s.uArmedAt = now
	d := now.wall().Add(idleAfter + idleAfter/8)
	if hard := s.upstreamDeadline(); !hard.IsZero() {
		d = minTime(d, hard)
	}
	s.upstream.SetReadDeadline(d)
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func (s *session) upstreamDeadline() time.Time {
	if ns := s.upDeadline.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// expired reports whether hard (zero: none) has passed.
func expired(hard time.Time) bool { return !hard.IsZero() && !time.Now().Before(hard) }

// waited decides what follows a wait for wc's socket that ended in err.
// Past the hard deadline, or on any error but a deadline, the pump ends
// (err). A wait that ran into the idle deadline moves to the parker: it
// returns parked, the caller's goroutine must return, and resume continues
// the pump later on a new goroutine.
func (s *session) waited(wc *waitConn, err error, slot *atomic.Uint64, hard time.Time, armedAt *mono, resume func(error)) (parked bool, _ error) {
	if !errors.Is(err, os.ErrDeadlineExceeded) || expired(hard) {
		return false, err
	}
	*armedAt = 0 // the connection's deadline is spent: re-arm
	if s.stale(wc, hard) {
		if wc == s.cwc {
			return false, err // ending or draining: the pump's error path decides
		}
		return false, nil // the broker side waits again, under its new deadline
	}
	if s.srv.parker == nil {
		return false, nil
	}
	if s.az != nil && s.az.subj != nil {
		s.az.subj.Release() // quiet for a while: keep no policy document either
	}
	if err := s.srv.parker.park(wc, slot, hard, resume); err != nil {
		return false, err
	}
	if s.stale(wc, hard) {
		// The session changed while this pump was registering: whoever
		// changed it may have looked for a parked pump too early. Resume.
		s.srv.parker.unpark(slot)
	}
	return true, nil
}

// stale reports whether a pump about to park (or just parked) must look
// at the session again: the client side when the session ends or drains,
// the broker side when its hard deadline moved.
func (s *session) stale(wc *waitConn, hard time.Time) bool {
	if wc == s.cwc {
		return s.ended.Load() || s.draining.Load()
	}
	return !s.upstreamDeadline().Equal(hard)
}

// clientIdle reports that nothing from the client is pending in moat:
// not in the codec.Reader, not in crypto/tls, not under it.
func (s *session) clientIdle() bool {
	return s.cwc != nil && s.cr.Buffered() == 0 && !s.cr.LastReadFull() && s.cwc.Buffered() == 0
}

func (s *session) upstreamIdle() bool {
	return s.uwc != nil && s.ur.Buffered() == 0 && !s.ur.LastReadFull() && s.uwc.Buffered() == 0
}

// drain asks the session to finish: stop reading from the client at a
// packet boundary, hand the broker DISCONNECT, relay what it still sends.
func (s *session) drain() {
	s.draining.Store(true)
	s.client.SetReadDeadline(time.Now())
	if s.srv.parker != nil {
		s.srv.parker.unpark(&s.cpark)
	}
}

// unparkAll resumes parked pumps so they see that the session ends.
func (s *session) unparkAll() {
	if s.srv.parker != nil {
		s.srv.parker.unpark(&s.cpark)
		s.srv.parker.unpark(&s.upark)
	}
}

// forceClose closes both connections now.
func (s *session) forceClose() {
	s.end(endShutdown, codec.ServerShuttingDown, "drain deadline passed")
	s.closeAll()
	s.unparkAll()
}

// end records why the session ends (first caller wins) and closes what must
// be closed so the other pump stops.
func (s *session) end(kind endKind, code codec.ReasonCode, reason string) {
	s.endWith(kind, code, reason, nil)
}

// endWith is end with a last packet for the broker (a DISCONNECT), written
// only once the outcome is decided, so the broker closing in answer cannot
// be mistaken for the broker going away.
func (s *session) endWith(kind endKind, code codec.ReasonCode, reason string, lastUp []byte) {
	s.endOnce.Do(func() {
		s.kind, s.reason = kind, reason
		s.ended.Store(true) // after kind: readers of ended may read kind
		switch kind {
		case endClientDisconnect, endShutdown:
			if lastUp != nil && s.uw != nil {
				s.uw.write(lastUp, true)
			}
			// Let the broker close after it has processed everything; the
			// broker->client pump keeps relaying until then.
			s.closeUpstreamWrite()
		case endClientGone:
			s.closeUpstream()
			s.client.Close()
		case endClientError:
			// The broker sees an abrupt close, so it publishes the will
			// as it would for any client that broke the protocol.
			s.closeUpstream()
			if s.version == codec.V5 {
				s.sendClientDisconnect(code, reason)
			}
			s.halfCloseClient()
		case endUpstreamGone, endUpstreamError:
			if kind == endUpstreamError && s.version == codec.V5 {
				s.writeUpstreamDisconnect(codec.MalformedPacket)
			}
			s.closeUpstream()
			if s.version == codec.V5 {
				s.sendClientDisconnect(codec.UnspecifiedError, reason)
			}
			s.halfCloseClient()
		case endUpstreamDisconnect:
			s.closeUpstream()
			s.halfCloseClient()
		}
		s.unparkAll()
	})
}

// sendClientDisconnect writes an MQTT 5 DISCONNECT to the client, keeping
// within the client's Maximum Packet Size.
func (s *session) sendClientDisconnect(code codec.ReasonCode, reason string) {
	d := &codec.Disconnect{ReasonCode: code}
	// [MQTT-3.14.2-3] no Reason String that would exceed the client's
	// Maximum Packet Size: drop the string, not the packet.
	if reason != "" && (s.clientMaxPacket == 0 || len(reason)+16 <= s.clientMaxPacket) {
		d.Properties.Set(codec.PropReasonString)
		d.Properties.ReasonString = []byte(reason)
	}
	b, err := d.Append(nil, codec.V5)
	if err != nil {
		// A code DISCONNECT cannot carry (one meant for CONNACK, say):
		// still tell the client, as unspecified.
		d.ReasonCode = codec.UnspecifiedError
		if b, err = d.Append(nil, codec.V5); err != nil {
			return
		}
	}
	s.cw.writeFinal(b)
}

func (s *session) writeUpstreamDisconnect(code codec.ReasonCode) {
	if s.uw == nil {
		return
	}
	d := &codec.Disconnect{ReasonCode: code}
	b, _ := d.Append(nil, s.version)
	s.uw.writeFinal(b)
}

// lingerClient half-closes the client connection and discards what it
// still sends for a moment, so the last packet moat wrote is not lost to a
// reset caused by unread data. Only for a goroutine that may read the
// client: the establishing one, or the last pump.
func (s *session) lingerClient() {
	s.halfCloseClient()
	s.discardClient()
	s.client.Close()
}

// halfCloseClient ends moat's side of the client connection and bounds how
// long the client's remaining bytes are read. The client pump, if running,
// does that reading (and discards what it reads once the session ended).
func (s *session) halfCloseClient() {
	s.cw.writeFinal(nil) // what waits in the writer (held PUBACKs) goes first
	closeWrite(s.client)
	s.client.SetReadDeadline(time.Now().Add(lingerTime))
}

// discardClient reads and drops what the client still sends, until it
// closes or the linger deadline passes.
func (s *session) discardClient() {
	io.Copy(io.Discard, io.LimitReader(s.client, 64<<10))
}

// lingers reports whether the session's end leaves a last packet on its
// way to the client that unread client bytes could destroy.
func (k endKind) lingers() bool {
	switch k {
	case endClientError, endUpstreamGone, endUpstreamError, endUpstreamDisconnect:
		return true
	}
	return false
}

func (s *session) closeUpstreamWrite() {
	s.mu.Lock()
	up := s.upstream
	s.mu.Unlock()
	if up != nil {
		closeWrite(up)
		d := time.Now().Add(s.srv.cfg.Shutdown.DrainTimeout)
		s.upDeadline.Store(d.UnixNano())
		up.SetReadDeadline(d)
	}
}

func (s *session) closeUpstream() {
	s.mu.Lock()
	up := s.upstream
	s.mu.Unlock()
	if up != nil {
		up.Close()
	}
}

func (s *session) closeAll() {
	s.mu.Lock()
	s.closed = true
	up := s.upstream
	s.mu.Unlock()
	s.client.Close()
	if up != nil {
		up.Close()
	}
}

type closeWriter interface{ CloseWrite() error }

func closeWrite(c net.Conn) {
	if cw, ok := c.(closeWriter); ok {
		cw.CloseWrite()
	}
}

func (s *session) logReadError(what string, err error) {
	var ce *codec.Error
	switch {
	case errors.As(err, &ce):
		s.logger().Info(what, "error", err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.logger().Info(what+": timed out", "error", err)
	case !s.logs(slog.LevelDebug):
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		s.logger().Debug(what+": connection closed", "error", err)
	default:
		s.logger().Debug(what, "error", err)
	}
}

// peerWriter serialises writes to one connection: both pumps may write to
// the client (a relayed packet, or one moat answers itself). Pending bytes
// live in a pooled buffer that goes back to the pool on every flush.
type peerWriter struct {
	mu      sync.Mutex
	conn    net.Conn
	buf     []byte // pending bytes; nil when nothing is pending
	bufp    *[]byte
	timeout time.Duration
	armedAt mono // 0: arm at the next write
}

func newPeerWriter(conn net.Conn, timeout time.Duration) *peerWriter {
	return &peerWriter{conn: conn, timeout: timeout}
}

// write queues b and flushes when asked. A packet written with nothing
// pending and flush set goes straight to the connection, uncopied. The
// write deadline is re-armed at most every timeout/8, so a peer that stops
// reading is cut after between 7/8 and 1 x the timeout.
func (w *peerWriter) write(b []byte, flush bool) error { return w.writeAt(b, flush, monoNow()) }

// writeAt is write for a packet read at at (a pump's cAt or uAt, a few
// microseconds old): the re-arm check needs no clock read of its own. A
// re-arm reads the clock afresh, so an old at can only make it later.
func (w *peerWriter) writeAt(b []byte, flush bool, at mono) error {
	w.mu.Lock() // no defer: this runs for every packet
	if w.timeout > 0 && (w.armedAt == 0 || at-w.armedAt > mono(w.timeout/8)) {
		now := monoNow()
		w.armedAt = now
		w.conn.SetWriteDeadline(now.wall().Add(w.timeout))
	}
	err := w.writeLocked(b, flush)
	w.mu.Unlock()
	return err
}

func (w *peerWriter) writeLocked(b []byte, flush bool) error {
	if w.buf != nil && len(w.buf)+len(b) > cap(w.buf) {
		if err := w.flushLocked(); err != nil {
			return err
		}
	}
	if w.buf == nil && (flush || len(b) >= writeBufSize) {
		_, err := w.conn.Write(b)
		return err
	}
	if w.buf == nil {
		w.bufp = writePool.Get().(*[]byte)
		w.buf = (*w.bufp)[:0]
	}
	w.buf = append(w.buf, b...)
	if flush {
		return w.flushLocked()
	}
	return nil
}

// flush writes whatever is pending.
func (w *peerWriter) flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.flushLocked()
}

func (w *peerWriter) flushLocked() error {
	if w.buf == nil {
		return nil
	}
	_, err := w.conn.Write(w.buf)
	*w.bufp = w.buf[:0] // the pooled pointer: a new one would allocate
	writePool.Put(w.bufp)
	w.buf, w.bufp = nil, nil
	return err
}

// writeFinal writes a last packet (nil: only what is pending) under a
// short deadline. The deadline is set before taking the lock too, so a
// writer blocked on a peer that does not read gives the lock up promptly.
func (w *peerWriter) writeFinal(b []byte) error {
	deadline := time.Now().Add(lingerTime)
	w.conn.SetWriteDeadline(deadline)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.conn.SetWriteDeadline(deadline)
	w.armedAt = monoOf(deadline) // in the future: no re-arm for the final write
	if b == nil {
		return w.flushLocked()
	}
	return w.writeLocked(b, true)
}
