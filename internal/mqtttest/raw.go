package mqtttest

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
)

// Raw is a byte-level MQTT client for hostile-input tests.
type Raw struct {
	t    testing.TB
	Conn net.Conn
	r    *codec.Reader
	V    codec.Version
}

// Dial connects to addr (with TLS when tc is not nil) or fails the test.
func Dial(t testing.TB, addr string, tc *tls.Config) net.Conn {
	t.Helper()
	var (
		c   net.Conn
		err error
	)
	if tc != nil {
		c, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, tc)
	} else {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
	}
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	return c
}

// DialRaw connects to addr (with TLS when tc is not nil).
func DialRaw(t testing.TB, addr string, tc *tls.Config) *Raw {
	t.Helper()
	c := Dial(t, addr, tc)
	t.Cleanup(func() { c.Close() })
	return &Raw{t: t, Conn: c, r: codec.NewReader(c, 0), V: codec.V311}
}

// NewRaw is a Raw client on a connection the test set up itself.
func NewRaw(t testing.TB, c net.Conn) *Raw {
	t.Helper()
	t.Cleanup(func() { c.Close() })
	return &Raw{t: t, Conn: c, r: codec.NewReader(c, 0), V: codec.V311}
}

// DialRawFrom connects to addr from the local address from (e.g.
// "127.0.0.2", another loopback address), for tests of per-address limits.
func DialRawFrom(t testing.TB, from, addr string) *Raw {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, from, err)
	}
	t.Cleanup(func() { c.Close() })
	return &Raw{t: t, Conn: c, r: codec.NewReader(c, 0), V: codec.V311}
}

// Send writes raw bytes.
func (r *Raw) Send(b []byte) {
	r.t.Helper()
	r.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.Conn.Write(b); err != nil {
		r.t.Fatalf("send: %v", err)
	}
}

// TrySend writes raw bytes and reports the error, for peers that may have closed.
func (r *Raw) TrySend(b []byte) error {
	r.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := r.Conn.Write(b)
	return err
}

// SendPacket encodes p for the client's version and writes it.
func (r *Raw) SendPacket(p codec.Packet) {
	r.t.Helper()
	b, err := p.Append(nil, r.V)
	if err != nil {
		r.t.Fatalf("encode %T: %v", p, err)
	}
	r.Send(b)
}

// Connect sends CONNECT for version v and expects a successful CONNACK.
func (r *Raw) Connect(v codec.Version, clientID string, keepAlive uint16) *codec.Connack {
	r.t.Helper()
	r.V = v
	r.SendPacket(&codec.Connect{Version: v, CleanStart: true, ClientID: clientID, KeepAlive: keepAlive})
	p := r.Expect(5 * time.Second)
	ack, ok := p.(*codec.Connack)
	if !ok || ack.ReasonCode != 0 {
		r.t.Fatalf("CONNECT %s: got %#v", clientID, p)
	}
	return ack
}

// Read returns the next packet, or an error (io.EOF when moat closed).
func (r *Raw) Read(timeout time.Duration) (codec.Packet, error) {
	r.Conn.SetReadDeadline(time.Now().Add(timeout))
	f, err := r.r.ReadPacket()
	if err != nil {
		return nil, err
	}
	return codec.Decode(f, r.V)
}

// Expect returns the next packet or fails the test.
func (r *Raw) Expect(timeout time.Duration) codec.Packet {
	r.t.Helper()
	p, err := r.Read(timeout)
	if err != nil {
		r.t.Fatalf("expected a packet: %v", err)
	}
	return p
}

// ExpectClosed reads until the connection closes and returns the packets
// seen before; it fails if the connection is still open after timeout.
func (r *Raw) ExpectClosed(timeout time.Duration) []codec.Packet {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	var got []codec.Packet
	for {
		p, err := r.Read(time.Until(deadline))
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				r.t.Fatalf("connection still open after %v (saw %d packets)", timeout, len(got))
			}
			var ce *codec.Error
			if errors.As(err, &ce) {
				r.t.Fatalf("moat sent an invalid packet: %v", err)
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !isReset(err) {
				r.t.Fatalf("unexpected read error: %v", err)
			}
			return got
		}
		got = append(got, p)
	}
}

func isReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe)
}

// ExpectDisconnect expects a DISCONNECT with code (MQTT 5), then the close.
func (r *Raw) ExpectDisconnect(code codec.ReasonCode, timeout time.Duration) {
	r.t.Helper()
	got := r.ExpectClosed(timeout)
	if r.V != codec.V5 {
		for _, p := range got {
			if p.Type() != codec.DISCONNECT {
				continue
			}
			r.t.Fatalf("MQTT %s client got a DISCONNECT", r.V)
		}
		return
	}
	for _, p := range got {
		if d, ok := p.(*codec.Disconnect); ok {
			if d.ReasonCode != code {
				r.t.Fatalf("DISCONNECT %s (%s), want %s", d.ReasonCode, d.Properties.ReasonString, code)
			}
			return
		}
	}
	r.t.Fatalf("connection closed without DISCONNECT %s (saw %d packets)", code, len(got))
}

// DialRawErr reports whether addr accepts a TCP connection.
func DialRawErr(addr string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return c, err
}
