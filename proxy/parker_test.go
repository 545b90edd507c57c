package proxy

import (
	"bytes"
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// pumps counts the goroutines running a pump (the pump types are named so
// stacks say so). Counting all goroutines instead would count whatever an
// earlier test left winding down.
func pumps() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	c := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("proxy.clientToBroker.")) || bytes.Contains(g, []byte("proxy.brokerToClient.")) {
			c++
		}
	}
	return c
}

// waitPumps waits until at most n pump goroutines run.
func waitPumps(t *testing.T, n int, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		g := pumps()
		if g <= n || time.Now().After(deadline) {
			return g
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestParkedSessions: sessions quiet for longer than idleAfter give up
// their goroutines, and everything still works from there: traffic both
// ways, keep alive, the broker going away, shutdown.
func TestParkedSessions(t *testing.T) {
	if newParkerOK() == false {
		t.Skip("no parker on this platform")
	}
	broker := mqtttest.Start(t, "")
	srv := newTestServer(t, broker.Addr, nil)
	addr := srv.Addr("mqtt").String()

	const n = 20
	clients := make([]*mqtttest.Raw, n)
	for i := range clients {
		clients[i] = mqtttest.DialRaw(t, addr, nil)
		clients[i].Connect(codec.V5, "parked-"+string(rune('a'+i)), 60)
	}
	// Quiet after CONNACK: the pumps park at once, without goroutines.
	if g := waitPumps(t, 0, 5*time.Second); g > 0 {
		t.Fatalf("%d pump goroutines after %d sessions went quiet, want 0", g, n)
	}

	// A parked subscriber and a parked publisher still work, both ways.
	sub, pub := clients[0], clients[1]
	sub.SendPacket(&codec.Subscribe{PacketID: 1, Subscriptions: []codec.Subscription{{Filter: "parked/#", QoS: 1}}})
	if p := sub.Expect(5 * time.Second); p.Type() != codec.SUBACK {
		t.Fatalf("got %s, want SUBACK", p.Type())
	}
	// After traffic a pump waits in the netpoller, then parks after idleAfter.
	if g := pumps(); g != 2 {
		t.Fatalf("%d pump goroutines right after traffic, want the subscriber's 2", g)
	}
	if g := waitPumps(t, 0, 5*time.Second); g > 0 {
		t.Fatalf("%d pump goroutines after traffic stopped, want 0", g)
	}
	pub.SendPacket(&codec.Publish{QoS: 1, PacketID: 9, Topic: []byte("parked/x"), Payload: []byte("woken")})
	if p := pub.Expect(5 * time.Second); p.Type() != codec.PUBACK {
		t.Fatalf("got %s, want PUBACK", p.Type())
	}
	p := sub.Expect(5 * time.Second)
	if m, ok := p.(*codec.Publish); !ok || string(m.Payload) != "woken" {
		t.Fatalf("subscriber got %#v", p)
	}
	sub.SendPacket(&codec.Ack{PacketType: codec.PUBACK, PacketID: p.(*codec.Publish).PacketID})

	// Shutdown reaches parked sessions: MQTT 5 clients are told 0x8B.
	waitPumps(t, 0, 5*time.Second)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- srv.Shutdown(ctx)
	}()
	for _, c := range clients {
		c.ExpectDisconnect(codec.ServerShuttingDown, 5*time.Second)
	}
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

// TestParkedKeepAliveAndBrokerLoss: the keep alive deadline fires for a
// parked client, and a broker that dies wakes a parked session.
func TestParkedKeepAliveAndBrokerLoss(t *testing.T) {
	if newParkerOK() == false {
		t.Skip("no parker on this platform")
	}
	broker := mqtttest.Start(t, "")
	srv := newTestServer(t, broker.Addr, nil)
	addr := srv.Addr("mqtt").String()

	sleepy := mqtttest.DialRaw(t, addr, nil)
	start := time.Now()
	sleepy.Connect(codec.V5, "sleepy", 2) // cut after 3 s, parked after 1 s
	alive := mqtttest.DialRaw(t, addr, nil)
	alive.Connect(codec.V5, "alive", 0)

	sleepy.ExpectDisconnect(codec.KeepAliveTimeout, 10*time.Second)
	if d := time.Since(start); d < 3*time.Second {
		t.Fatalf("cut after %v, before 1.5 x keep alive", d)
	}
	broker.Stop()
	alive.ExpectDisconnect(codec.UnspecifiedError, 10*time.Second)
}

func newParkerOK() bool {
	p, err := newParker()
	if p == nil || err != nil {
		return false
	}
	p.close()
	return true
}

// TestParkedSessionsEndEveryWay: parked sessions that end by DISCONNECT,
// by a vanished client or by a protocol error all finish; none is left
// parked forever.
func TestParkedSessionsEndEveryWay(t *testing.T) {
	if !newParkerOK() {
		t.Skip("no parker on this platform")
	}
	broker := mqtttest.Start(t, "")
	srv := newTestServer(t, broker.Addr, nil)
	addr := srv.Addr("mqtt").String()
	const n = 30
	clients := make([]*mqtttest.Raw, n)
	for i := range clients {
		clients[i] = mqtttest.DialRaw(t, addr, nil)
		clients[i].Connect(codec.V5, "end-"+string(rune('A'+i)), 60)
	}
	time.Sleep(idleAfter + 300*time.Millisecond) // all parked
	for i, c := range clients {
		switch i % 3 {
		case 0:
			c.SendPacket(&codec.Disconnect{})
		case 1:
			c.Conn.Close()
		case 2:
			c.Send([]byte{0x20, 2, 0, 0}) // CONNACK from a client
		}
	}
	waitSessions(t, srv, 0)
}
