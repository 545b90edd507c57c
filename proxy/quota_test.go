package proxy

import (
	"net"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// holdingBroker accepts one connection, answers CONNECT and passes on
// every later packet; it acknowledges only what the test sends.
func holdingBroker(t *testing.T) (addr string, got <-chan codec.Frame, conn <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	frames, conns := make(chan codec.Frame, 16), make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		t.Cleanup(func() { c.Close() })
		r := codec.NewReader(c, 1<<20)
		if _, err := r.ReadPacket(); err != nil {
			return
		}
		ack, _ := (&codec.Connack{}).Append(nil, codec.V311)
		c.Write(ack)
		conns <- c
		for {
			f, err := r.ReadPacket()
			if err != nil {
				close(frames)
				return
			}
			b := append([]byte(nil), f.Bytes...) // the frame is a view into r's buffer
			f.Body, f.Bytes = b[len(b)-len(f.Body):], b
			frames <- f
		}
	}()
	return ln.Addr().String(), frames, conns
}

// A 3.x client cannot be told a Receive Maximum: over max_inflight it is
// paced until the broker acknowledges.
func TestInflightPaces3x(t *testing.T) {
	addr, got, conns := holdingBroker(t)
	srv := newTestServer(t, addr, func(c *config.Config) { c.Limits.MaxInflight = 2 })
	c := mqtttest.DialRaw(t, srv.Addr("mqtt").String(), nil)
	c.Connect(codec.V311, "paced", 30)
	up := <-conns
	for id := uint16(1); id <= 3; id++ {
		c.SendPacket(&codec.Publish{Topic: []byte("t"), QoS: 1, PacketID: id, Payload: []byte("m")})
	}
	next := func(wait time.Duration) *codec.Publish {
		select {
		case f := <-got:
			var p codec.Publish
			if err := codec.DecodePublish(&p, f, codec.V311); err != nil {
				t.Fatalf("broker got %s: %v", f.Type, err)
			}
			return &p
		case <-time.After(wait):
			return nil
		}
	}
	for id := uint16(1); id <= 2; id++ {
		if p := next(5 * time.Second); p == nil || p.PacketID != id {
			t.Fatalf("publish %d not forwarded: %+v", id, p)
		}
	}
	if p := next(300 * time.Millisecond); p != nil {
		t.Fatalf("publish %d forwarded with 2 in flight", p.PacketID)
	}
	ack, _ := (&codec.Ack{PacketType: codec.PUBACK, PacketID: 1}).Append(nil, codec.V311)
	up.Write(ack)
	if p := next(5 * time.Second); p == nil || p.PacketID != 3 {
		t.Fatalf("publish 3 not forwarded once a slot was free: %+v", p)
	}
	if a, ok := c.Expect(5 * time.Second).(*codec.Ack); !ok || a.PacketID != 1 {
		t.Fatalf("client got %#v, want PUBACK 1", a)
	}
}
