package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/devpki"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// fakeBroker is a scripted upstream for byte-exact checks: it accepts one
// connection, answers CONNECT with CONNACK and hands the connection to the test.
func fakeBroker(t *testing.T) (addr string, conns <-chan net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		r := codec.NewReader(c, 0)
		f, err := r.ReadPacket()
		if err != nil || f.Type != codec.CONNECT {
			c.Close()
			return
		}
		if cp, err := codec.DecodeConnect(f); err == nil && cp.Version != codec.V5 {
			c.Write([]byte{0x20, 2, 0, 0}) // 3.x CONNACK accepted
		} else {
			c.Write([]byte{0x20, 3, 0, 0, 0}) // v5 CONNACK success, no properties
		}
		ch <- c
	}()
	return l.Addr().String(), ch
}

// viaFakeBroker connects an MQTT 5 client through a fresh moat to a
// fakeBroker and returns both ends; the broker's closes with the test.
func viaFakeBroker(t *testing.T, clientID string) (*mqtttest.Raw, net.Conn) {
	t.Helper()
	return viaFakeBrokerAs(t, codec.V5, clientID)
}

// viaFakeBrokerAs is viaFakeBroker for a client of protocol version v.
func viaFakeBrokerAs(t *testing.T, v codec.Version, clientID string) (*mqtttest.Raw, net.Conn) {
	t.Helper()
	addr, conns := fakeBroker(t)
	srv := newTestServer(t, addr, nil)
	c := mqtttest.DialRaw(t, srv.Addr("mqtt").String(), nil)
	c.Connect(v, clientID, 30)
	select {
	case broker := <-conns:
		t.Cleanup(func() { broker.Close() })
		return c, broker
	case <-time.After(5 * time.Second):
		t.Fatal("fake broker got no connection")
	}
	return nil, nil
}

// TestForwardedByteForByte: permitted packets reach the other side exactly
// as they were sent, in both directions, even where moat's own encoder
// would have written them differently (property order).
func TestForwardedByteForByte(t *testing.T) {
	c, broker := viaFakeBroker(t, "exact")

	// A v5 PUBLISH whose properties are in descending identifier order:
	// user property (0x26) before content type (0x03).
	up := []byte{
		0x32, 24,
		0, 3, 'a', '/', 'b',
		0, 9, // packet id
		14,                         // property length
		0x26, 0, 1, 'k', 0, 1, 'v', // user property
		0x03, 0, 4, 't', 'e', 'x', 't', // content type
		'h', 'i',
	}
	c.Send(up)
	got := make([]byte, len(up))
	broker.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := readFull(broker, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, up) {
		t.Fatalf("broker got % x\nclient sent % x", got, up)
	}

	// Broker -> client: a PUBLISH with two subscription identifiers, then a PUBACK.
	down := []byte{
		0x30, 10, 0, 1, 't',
		4, 0x0B, 2, 0x0B, 1, // subscription ids 2 then 1
		'o', 'k',
		0x40, 2, 0, 9, // PUBACK for packet 9
	}
	broker.Write(down)
	gotDown := make([]byte, len(down))
	c.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := readFull(c.Conn, gotDown); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(gotDown, down) {
		t.Fatalf("client got % x\nbroker sent % x", gotDown, down)
	}
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// batchConn holds what crypto/tls writes until flush, so that one TCP
// write carries several TLS records.
type batchConn struct {
	net.Conn
	mu   sync.Mutex
	held bool
	buf  []byte
}

func (c *batchConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held {
		c.buf = append(c.buf, b...)
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// hold starts queueing writes.
func (c *batchConn) hold() {
	c.mu.Lock()
	c.held = true
	c.mu.Unlock()
}

func (c *batchConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.held = false
	_, err := c.Conn.Write(c.buf)
	c.buf = nil
	return err
}

// tlsTestConfig is a server config with a plain and a TLS listener in
// front of broker, and the directory its generated certificates are in.
func tlsTestConfig(t *testing.T, broker string) (*config.Config, string) {
	t.Helper()
	dir := t.TempDir()
	if _, err := devpki.Ensure(dir); err != nil {
		t.Fatal(err)
	}
	return &config.Config{
		Listeners: []config.Listener{
			{Name: "mqtt", Address: "127.0.0.1:0", Transport: "tcp"},
			{Name: "mqtts", Address: "127.0.0.1:0", Transport: "tls",
				TLS: &config.ServerTLS{CertFile: filepath.Join(dir, devpki.ServerCert), KeyFile: filepath.Join(dir, devpki.ServerKey), ClientAuth: "none"}},
		},
		Upstream: config.Upstream{Address: broker, DialTimeout: time.Second},
		Auth:     config.Auth{Anonymous: true},
		Policy:   &config.Policy{Mode: config.ModeAllowAll},
		Limits:   config.Limits{ConnectTimeout: 2 * time.Second},
		Shutdown: config.Shutdown{DrainTimeout: time.Second},
	}, dir
}

// dialBatched connects as id to srv's TLS listener through a batchConn,
// trusting the certificates in dir, so the test can hold TLS records back
// and send them in one write.
func dialBatched(t *testing.T, srv *Server, dir, id string) (*mqtttest.Raw, *batchConn) {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(dir, devpki.CACert))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tcp, err := net.Dial("tcp", srv.Addr("mqtts").String())
	if err != nil {
		t.Fatal(err)
	}
	bc := &batchConn{Conn: tcp}
	c := mqtttest.NewRaw(t, tls.Client(bc, &tls.Config{RootCAs: pool, ServerName: "localhost"}))
	c.Connect(codec.V311, id, 30)
	return c, bc
}

// countingConn counts moat's writes to the broker. It hides the socket
// (no syscall.Conn), so moat writes through its Write.
type countingConn struct {
	net.Conn
	writes, bytes atomic.Int64
}

func (c *countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	c.bytes.Add(int64(len(b)))
	return c.Conn.Write(b)
}

// TestRecordsCoalesced: packets that arrive in one read, each in its own
// TLS record (how most clients send), reach the broker in one write, not
// one write per record.
func TestRecordsCoalesced(t *testing.T) {
	broker := mqtttest.Start(t, "")
	cfg, dir := tlsTestConfig(t, broker.Addr)
	var up atomic.Pointer[countingConn]
	srv := startTestServer(t, cfg, func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		cc := &countingConn{Conn: c}
		up.Store(cc)
		return cc, nil
	})
	c, bc := dialBatched(t, srv, dir, "records")
	cc := up.Load()
	writes0, bytes0 := cc.writes.Load(), cc.bytes.Load()

	const n = 10
	var want int64
	bc.hold()
	for i := range n {
		p := &codec.Publish{Topic: []byte("records/t"), Payload: []byte{byte(i)}}
		b, _ := p.Append(nil, codec.V311)
		want += int64(len(b))
		c.Send(b) // one tls.Conn.Write: one record
	}
	if err := bc.flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for cc.bytes.Load()-bytes0 < want {
		if time.Now().After(deadline) {
			t.Fatalf("the broker got %d of %d bytes", cc.bytes.Load()-bytes0, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := cc.writes.Load() - writes0; got != 1 {
		t.Fatalf("%d PUBLISHes in %d TLS records of one read reached the broker in %d writes, want 1", n, n, got)
	}
}

// TestForwardedBeforePartialPacket: a packet is forwarded even when the
// same read brought the start of the next one and the rest of it is slow
// to come (a large message on a slow link), over plain TCP and over TLS
// with the next record cut short.
func TestForwardedBeforePartialPacket(t *testing.T) {
	broker := mqtttest.Start(t, "")
	cfg, dir := tlsTestConfig(t, broker.Addr)
	srv := startTestServer(t, cfg, nil)
	a, _ := (&codec.Publish{QoS: 1, PacketID: 1, Topic: []byte("partial/a"), Payload: []byte("a")}).Append(nil, codec.V311)
	b, _ := (&codec.Publish{QoS: 1, PacketID: 2, Topic: []byte("partial/b"), Payload: make([]byte, 4000)}).Append(nil, codec.V311)

	t.Run("tcp", func(t *testing.T) {
		c := mqtttest.DialRaw(t, srv.Addr("mqtt").String(), nil)
		c.Connect(codec.V311, "partial-tcp", 30)
		c.Send(append(append([]byte{}, a...), b[:100]...))
		if p := c.Expect(3 * time.Second); p.Type() != codec.PUBACK {
			t.Fatalf("got %s, want the PUBACK for the complete packet", p.Type())
		}
		c.Send(b[100:])
		if p := c.Expect(3 * time.Second); p.Type() != codec.PUBACK {
			t.Fatalf("got %s, want the PUBACK for the second packet", p.Type())
		}
	})
	t.Run("from the broker", func(t *testing.T) {
		c, up := viaFakeBroker(t, "partial-down")
		a5, _ := (&codec.Publish{Topic: []byte("partial/a"), Payload: []byte("a")}).Append(nil, codec.V5)
		b5, _ := (&codec.Publish{Topic: []byte("partial/b"), Payload: make([]byte, 4000)}).Append(nil, codec.V5)
		if _, err := up.Write(append(append([]byte{}, a5...), b5[:100]...)); err != nil {
			t.Fatal(err)
		}
		if p, ok := c.Expect(3 * time.Second).(*codec.Publish); !ok || string(p.Topic) != "partial/a" {
			t.Fatalf("got %#v, want the complete delivery", p)
		}
		if _, err := up.Write(b5[100:]); err != nil {
			t.Fatal(err)
		}
		if p, ok := c.Expect(3 * time.Second).(*codec.Publish); !ok || string(p.Topic) != "partial/b" {
			t.Fatalf("got %#v, want the second delivery", p)
		}
	})
	t.Run("tls", func(t *testing.T) {
		c, bc := dialBatched(t, srv, dir, "partial-tls")
		tcp := bc.Conn
		bc.hold()
		c.Send(a)
		c.Send(b)
		bc.mu.Lock()
		held := bc.buf
		bc.buf, bc.held = nil, false
		bc.mu.Unlock()
		cut := len(held) - 1000 // inside the second record
		if _, err := tcp.Write(held[:cut]); err != nil {
			t.Fatal(err)
		}
		if p := c.Expect(3 * time.Second); p.Type() != codec.PUBACK {
			t.Fatalf("got %s, want the PUBACK for the complete record", p.Type())
		}
		if _, err := tcp.Write(held[cut:]); err != nil {
			t.Fatal(err)
		}
		if p := c.Expect(3 * time.Second); p.Type() != codec.PUBACK {
			t.Fatalf("got %s, want the PUBACK for the second record", p.Type())
		}
	})
}
