package proxy

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
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
		c.Write([]byte{0x20, 3, 0, 0, 0}) // v5 CONNACK success, no properties
		ch <- c
	}()
	return l.Addr().String(), ch
}

// TestForwardedByteForByte: permitted packets reach the other side exactly
// as they were sent, in both directions, even where moat's own encoder
// would have written them differently (property order).
func TestForwardedByteForByte(t *testing.T) {
	addr, conns := fakeBroker(t)
	srv := newTestServer(t, addr, nil)
	c := mqtttest.DialRaw(t, srv.Addr("mqtt").String(), nil)
	c.Connect(codec.V5, "exact", 30)
	var broker net.Conn
	select {
	case broker = <-conns:
	case <-time.After(5 * time.Second):
		t.Fatal("fake broker got no connection")
	}
	defer broker.Close()

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
