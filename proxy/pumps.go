package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/moat-mqtt/moat/codec"
)

// clientToBroker reads packets from the client, checks each and forwards
// the permitted ones to the broker. A named type so goroutine dumps say
// which direction a stack belongs to.
type clientToBroker struct{ s *session }

// brokerToClient reads packets from the broker, checks each and relays them
// to the client.
type brokerToClient struct{ s *session }

// scratch holds the structs a packet is decoded into. Pooled, so an idle
// connection holds none and pump stacks stay small.
type scratch struct {
	pub codec.Publish
	ack codec.Ack
	// For packets moat answers itself: the ack, its reason string and the
	// encoding (kept only up to maxScratchOut, so the pool holds little).
	reply  codec.Ack
	reason []byte
	out    []byte
}

const maxScratchOut = 512

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// start runs the pump on this goroutine until it ends or parks; resumed
// is what woke a parked pump (nil: data; a deadline; errUnparked).
func (p clientToBroker) start(resumed error) {
	if p.run(resumed) {
		return // parked: a later goroutine continues
	}
	p.s.fromClient.flush(p.s.srv.m, toBroker)
	if s := p.s; s.ended.Load() && s.kind.lingers() {
		// This pump is the client's only reader: it does the lingering.
		s.discardClient()
	}
	p.s.pumpDone()
}

func (p brokerToClient) start(resumed error) {
	if p.run(resumed) {
		return
	}
	p.s.fromBroker.flush(p.s.srv.m, toClient)
	p.s.pumpDone()
}

// run handles packets while the client sends, and waits holding no buffer
// while it is quiet: in the netpoller first, then, after idleAfter, in the
// parker with no goroutine at all. It reports whether it parked.
func (p clientToBroker) run(resumed error) (parked bool) {
	s := p.s
	if resumed != nil && resumed != errUnparked {
		p.readError(resumed) // the keep alive deadline passed while parked
		return false
	}
	for !s.ended.Load() {
		if s.cwc == nil {
			// Not a socket (a WebSocket): plain blocking reads.
			if !p.handle() {
				return false
			}
			continue
		}
		s.armClient()
		if s.draining.Load() {
			p.drain()
			return false
		}
		more, err := s.cwc.serve(s.cStep, &s.ended)
		if !more {
			return false
		}
		if err == nil {
			continue
		}
		parked, err := s.waited(s.cwc, err, &s.cpark, s.kaDeadline, &s.armedAt, s.resumeClient)
		if parked {
			return true
		}
		if err != nil {
			p.readError(err)
			return false
		}
	}
	return false
}

// handle reads, checks and forwards one packet; false ends the pump.
func (p clientToBroker) handle() bool {
	s := p.s
	if s.ended.Load() {
		return false
	}
	serving := s.cwc != nil && s.cwc.inServe // the wake-up armed and stamped
	if !serving {
		s.armClient()
	}
	if s.draining.Load() {
		p.drain()
		return false
	}
	if serving && s.cwc.emptied() && s.clientIdle() {
		s.cwc.waitNext()
		s.cr.Release() // waiting: hold no buffer
		return true
	}
	f, err := s.cr.ReadPacket()
	if err != nil {
		if err == errWouldBlock {
			if s.clientIdle() {
				s.cr.Release() // waiting: hold no buffer
			}
			return true
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && !expired(s.kaDeadline) && !s.draining.Load() {
			// Only the idle deadline, in the middle of a packet: keep reading.
			s.armedAt = 0
			return true
		}
		p.readError(err)
		return false
	}
	if serving {
		s.clientPacket(s.cAt)
	} else {
		s.clientPacket(monoNow())
	}
	s.fromClient.count(s.srv.m, toBroker, f, s.drained(s.cr))
	sc := scratchPool.Get().(*scratch)
	pk, err := p.check(f, &sc.pub, &sc.ack)
	if err != nil {
		scratchPool.Put(sc)
		s.logger().Info("client protocol error", "client_id", s.info.id, "type", f.Type.String(), "error", err)
		s.end(endClientError, codec.ReasonOf(err), err.Error())
		return false
	}
	if f.Type == codec.DISCONNECT {
		scratchPool.Put(sc)
		s.endWith(endClientDisconnect, codec.Success, "client disconnected", f.Bytes)
		return false
	}
	if !p.limit(f, pk) {
		scratchPool.Put(sc)
		return !s.ended.Load() && s.relay(nil, s.cr, s.uw, true)
	}
	out, ok := p.protocolLimits(f, pk)
	if ok {
		f.Bytes = out // a stripped retain flag is what the broker sees
		out, ok = p.authorize(f, pk)
	}
	scratchPool.Put(sc)
	return ok && s.relay(out, s.cr, s.uw, true)
}

// check validates one client packet. PUBLISH and the acks, the bulk of the
// traffic, decode into reused structs without allocating.
func (p clientToBroker) check(f codec.Frame, pub *codec.Publish, ack *codec.Ack) (codec.Packet, error) {
	s := p.s
	if !f.Type.FromClient() {
		// Server-only packets (CONNACK, SUBACK, ...) from a client.
		return nil, &codec.Error{Code: codec.ProtocolError, Clause: "MQTT-2.1.2", Msg: f.Type.String() + " may only be sent by a server"}
	}
	switch f.Type {
	case codec.PUBLISH:
		if err := codec.DecodePublish(pub, f, s.version); err != nil {
			return nil, err
		}
		if pub.Properties.Has(codec.PropSubscriptionID) {
			// [MQTT-3.3.4-6] a client PUBLISH has no Subscription Identifier.
			return nil, &codec.Error{Code: codec.ProtocolError, Clause: "MQTT-3.3.4-6", Msg: "PUBLISH from a client carries a Subscription Identifier"}
		}
		return pub, nil
	case codec.CONNECT:
		// [MQTT-3.1.0-2] a second CONNECT is a protocol error.
		return nil, &codec.Error{Code: codec.ProtocolError, Clause: "MQTT-3.1.0-2", Msg: "second CONNECT on the connection"}
	case codec.AUTH:
		// [MQTT-4.12.0-7] no AUTH without an Authentication Method in CONNECT,
		// and moat admits no CONNECT that has one.
		return nil, &codec.Error{Code: codec.ProtocolError, Clause: "MQTT-4.12.0-7", Msg: "AUTH without enhanced authentication"}
	}
	return decode(f, s.version, pub, ack)
}

// decode validates a packet either pump relays. PUBLISH and the acks, the
// bulk of the traffic, decode into reused structs without allocating.
func decode(f codec.Frame, v codec.Version, pub *codec.Publish, ack *codec.Ack) (codec.Packet, error) {
	switch f.Type {
	case codec.PUBLISH:
		return pub, codec.DecodePublish(pub, f, v)
	case codec.PUBACK, codec.PUBREC, codec.PUBREL, codec.PUBCOMP:
		return ack, codec.DecodeAck(ack, f, v)
	}
	return codec.Decode(f, v)
}

// readError ends the session after a failed client read.
func (p clientToBroker) readError(err error) {
	s := p.s
	if s.ended.Load() {
		return
	}
	var ce *codec.Error
	switch {
	case errors.As(err, &ce):
		s.logger().Info("client protocol error", "client_id", s.info.id, "error", err)
		s.end(endClientError, ce.Code, err.Error())
	case errors.Is(err, os.ErrDeadlineExceeded):
		if s.draining.Load() {
			p.drain()
			return
		}
		s.logger().Info("keep alive timeout", "client_id", s.info.id, "keep_alive", s.info.keepAlive)
		s.end(endClientError, codec.KeepAliveTimeout, "keep alive timeout")
	case errors.Is(err, io.EOF):
		s.end(endClientGone, codec.Success, "client closed the connection without DISCONNECT")
	default:
		if errors.Is(err, net.ErrClosed) {
			s.end(endClientGone, codec.Success, "connection closed")
			return
		}
		s.end(endClientGone, codec.Success, "client connection failed: "+err.Error())
	}
}

// drain hands the broker a normal DISCONNECT so the session ends without
// the will, and lets the other pump relay the broker's remaining packets.
func (p clientToBroker) drain() {
	s := p.s
	d, _ := (&codec.Disconnect{}).Append(nil, s.version)
	s.endWith(endShutdown, codec.ServerShuttingDown, "server shutting down", d)
}

func (p brokerToClient) run(resumed error) (parked bool) {
	s := p.s
	if resumed != nil && resumed != errUnparked {
		p.readError(resumed) // the drain deadline passed while parked
		return false
	}
	for {
		if s.uwc == nil || s.ended.Load() {
			// Not a socket, or the session has ended (which is what makes
			// serve return) and this pump relays what the broker still
			// sends until it closes: plain blocking reads.
			if !p.handle() {
				return false
			}
			continue
		}
		s.armUpstream()
		more, err := s.uwc.serve(s.uStep, &s.ended)
		if s.uq.held {
			// Whatever ended the serve (the hold's deadline, the session
			// ending, an error), the acks go out now.
			s.uq.written()
			s.uArmedAt = 0
			s.cw.flush()
			if more && errors.Is(err, os.ErrDeadlineExceeded) && !expired(s.upstreamDeadline()) {
				continue // the hold's deadline, not the idle one: serve on
			}
		}
		if !more {
			return false
		}
		if err == nil {
			continue
		}
		parked, err := s.waited(s.uwc, err, &s.upark, s.upstreamDeadline(), &s.uArmedAt, s.resumeUpstream)
		if parked {
			return true
		}
		if err != nil {
			p.readError(err)
			return false
		}
	}
}

// handle reads, checks and relays one packet; false ends the pump.
func (p brokerToClient) handle() bool {
	s := p.s
	serving := s.uwc != nil && s.uwc.inServe // the wake-up armed and stamped
	if !serving {
		s.armUpstream()
	}
	if serving && s.uwc.emptied() && s.upstreamIdle() {
		s.uwc.waitNext()
		s.ur.Release()
		return true
	}
	f, err := s.ur.ReadPacket()
	if err != nil {
		if err == errWouldBlock {
			if s.upstreamIdle() {
				s.ur.Release()
			}
			return true
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && !expired(s.upstreamDeadline()) {
			s.uArmedAt = 0
			return true
		}
		p.readError(err)
		return false
	}
	if !serving {
		s.uAt = monoNow()
	}
	if f.Skipped > 0 {
		return p.dropOversize(f)
	}
	s.fromBroker.count(s.srv.m, toClient, f, s.drained(s.ur))
	sc := scratchPool.Get().(*scratch)
	pk, err := p.check(f, &sc.pub, &sc.ack)
	if err != nil {
		scratchPool.Put(sc)
		s.logger().Warn("broker protocol error", "client_id", s.info.id, "type", f.Type.String(), "error", err)
		s.end(endUpstreamError, codec.ReasonOf(err), "upstream broker sent an invalid packet")
		return false
	}
	if f.Type == codec.DISCONNECT {
		scratchPool.Put(sc)
		s.cw.write(f.Bytes, true)
		s.end(endUpstreamDisconnect, codec.Success, "broker sent DISCONNECT")
		return false
	}
	out, ok := p.authorize(f, pk)
	scratchPool.Put(sc)
	return ok && s.relay(out, s.ur, s.cw, false)
}

// dropOversize answers for a delivery larger than limits.max_packet_size
// that the Reader read past (3.x clients only: they cannot tell the broker
// their limit). The message is lost to this client; it is logged, counted
// and acknowledged, so the broker's flow goes on instead of redelivering
// it to every reconnect.
func (p brokerToClient) dropOversize(f codec.Frame) bool {
	s := p.s
	qos := f.Flags >> 1 & 3
	if s.srv.m != nil {
		s.srv.m.oversize.Inc()
	}
	s.logger().Warn("dropped a delivery over limits.max_packet_size", "client_id", s.info.id,
		"bytes", f.Skipped, "limit", s.srv.live.Load().limits.MaxPacketSize, "qos", qos)
	return p.ackDropped(qos, f.SkippedID) && s.relay(nil, s.ur, s.cw, false)
}

// relay finishes one packet: out goes to w, flushed once nothing more read
// from the same peer is waiting in moat (a PUBACK may wait a little longer,
// for the broker's next: holdAck); nil out means moat answered the
// packet itself, and then only what earlier packets queued is flushed, so
// it does not wait. toBroker says whose writer w is, for the error. It
// reports whether the pump goes on.
func (s *session) relay(out []byte, r *codec.Reader, w *peerWriter, toBroker bool) bool {
	// Under TLS the Reader sees one record at a time while more records of
	// the same read wait in the waitConn: a client that sends each packet
	// in its own record (most do) would otherwise cost one write per packet.
	// The reading side's socket, its pump's queue and packet time (each
	// pump touches only its own).
	var (
		q  *queued
		at mono
	)
	if r == s.cr {
		q, at = &s.cq, s.cAt
	} else {
		q, at = &s.uq, s.uAt
	}
	last := s.drained(r)
	if out == nil {
		if last {
			w.flush()
			q.written()
		}
		return true
	}
	hold := last && r == s.ur && s.holdAck(out)
	if err := w.writeAt(out, last && !hold, at); err != nil {
		if toBroker {
			s.end(endUpstreamGone, codec.UnspecifiedError, "writing to the broker failed: "+err.Error())
		} else {
			s.end(endClientGone, codec.Success, "writing to the client failed: "+err.Error())
		}
		return false
	}
	switch {
	case hold:
		q.client = false // held, not queued: the read hook must not flush it
	case !last:
		q.mark(w == s.uw)
		if w == s.cw && out[0] != pubackByte {
			q.mixed = true
		}
	default:
		q.written()
	}
	return true
}

// pubackByte is a PUBACK's fixed header byte [MQTT-3.4.1].
const pubackByte = byte(codec.PUBACK) << 4

// ackHold bounds how long a PUBACK may wait in the client's writer for the
// broker's next ack (see holdAck). The poller's timers wake in whole
// milliseconds, so the wait is 1-2 ms at worst. A variable for tests.
var ackHold = time.Millisecond

// holdAck reports whether the PUBACK out, the last packet of what the
// broker sent, may wait in the client's writer instead of being written
// now. It may while the broker still owes an ack for another publish of
// this client, because then another PUBACK is on its way: a client that
// keeps a window of QoS 1 publishes open gets its acks a few per write
// rather than one or two (Mosquitto acks each publish in its own segment),
// which on a busy connection halves the writes on the way back. Only
// PUBACKs wait, and only behind other PUBACKs: a delivery is never held.
// The first held ack waits at most ackHold: the serve's read deadline is
// moved to it (the read hook), and the pump flushes when the serve ends.
func (s *session) holdAck(out []byte) bool {
	q := &s.uq
	if out[0] != pubackByte || q.mixed || s.uwc == nil || !s.uwc.inServe || s.az == nil || s.az.inflight.n.Load() <= 0 {
		return false
	}
	if !q.held {
		q.held, q.holdArmed, q.heldAt = true, false, s.uAt
		return true
	}
	return s.uAt-q.heldAt < mono(ackHold)
}

// drained reports that nothing read from r's peer is left in moat: not in
// r, not in the waitConn under it (which under TLS holds the records of a
// read that crypto/tls has not asked for yet).
func (s *session) drained(r *codec.Reader) bool {
	src := s.uwc
	if r == s.cr {
		src = s.cwc
	}
	return r.Buffered() == 0 && (src == nil || src.Buffered() == 0)
}

// queued records which writers a pump left bytes in without flushing; its
// read hook flushes those before the pump reads again. Only that pump's
// goroutine touches it. Flushing only its own keeps one pump from waiting
// on a writer the other holds while a slow peer drains it.
type queued struct {
	up, client bool
	// The broker pump's PUBACK hold (holdAck): held, the client's writer
	// has PUBACKs waiting since heldAt; holdArmed, the read deadline is
	// moved to the hold's end. mixed: something other than a PUBACK this
	// pump queued for the client is not yet written, so nothing is held.
	held, holdArmed, mixed bool
	heldAt                 mono
}

// written notes that the pump flushed the client's writer.
func (q *queued) written() { q.held, q.holdArmed, q.mixed = false, false, false }

func (q *queued) mark(up bool) {
	if up {
		q.up = true
	} else {
		q.client = true
	}
}

// flush writes out what the pump queued.
func (q *queued) flush(s *session) {
	if q.up {
		q.up = false
		s.uw.flush()
	}
	if q.client {
		q.client = false
		q.written() // held acks go out with what was queued
		s.cw.flush()
	}
}

func (p brokerToClient) check(f codec.Frame, pub *codec.Publish, ack *codec.Ack) (codec.Packet, error) {
	s := p.s
	if !f.Type.FromServer() || f.Type == codec.CONNACK || f.Type == codec.AUTH {
		return nil, &codec.Error{Code: codec.ProtocolError, Clause: "MQTT-2.1.2", Msg: f.Type.String() + " is not valid from the broker here"}
	}
	return decode(f, s.version, pub, ack)
}

func (p brokerToClient) readError(err error) {
	s := p.s
	if s.ended.Load() {
		return
	}
	var ce *codec.Error
	switch {
	case errors.As(err, &ce):
		s.logger().Warn("broker protocol error", "client_id", s.info.id, "error", err)
		s.end(endUpstreamError, ce.Code, "upstream broker sent an invalid packet")
	case errors.Is(err, io.EOF):
		s.end(endUpstreamGone, codec.UnspecifiedError, "upstream broker closed the connection")
	default:
		s.end(endUpstreamGone, codec.UnspecifiedError, "upstream connection failed")
	}
}
