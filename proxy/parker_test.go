package proxy

import (
	"bytes"
	"context"
	"net"
	"os"
	"runtime"
	"sync/atomic"
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

// TestParkerDeadlines: pumps parked with deadlines are resumed once each,
// in deadline order and not before; one taken out early is not resumed by
// its deadline; one parked later with an earlier deadline moves the timer.
func TestParkerDeadlines(t *testing.T) {
	p, err := newParker()
	if p == nil || err != nil {
		t.Skip("no parker on this platform")
	}
	defer p.close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conn := func() *waitConn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		srv, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(); srv.Close() })
		return newWaitConn(srv, false).(*waitConn)
	}
	type woke struct {
		name string
		err  error
		at   time.Time
	}
	got := make(chan woke, 10)
	start := time.Now()
	park := func(name string, after time.Duration) (*atomic.Uint64, time.Time) {
		slot := new(atomic.Uint64)
		d := start.Add(after)
		if err := p.park(conn(), slot, d, func(err error) { got <- woke{name, err, time.Now()} }); err != nil {
			t.Fatal(err)
		}
		return slot, d
	}
	_, dLate := park("late", 1300*time.Millisecond)
	cancel, _ := park("cancelled", time.Second)
	_, dMid := park("mid", 1100*time.Millisecond)
	_, dEarly := park("early", 200*time.Millisecond) // parked last, due first
	p.unpark(cancel)
	want := []struct {
		name string
		err  error
		due  time.Time
	}{{"cancelled", errUnparked, time.Time{}}, {"early", os.ErrDeadlineExceeded, dEarly}, {"mid", os.ErrDeadlineExceeded, dMid}, {"late", os.ErrDeadlineExceeded, dLate}}
	for _, w := range want {
		select {
		case g := <-got:
			if g.name != w.name || g.err != w.err {
				t.Fatalf("woke %s with %v, want %s with %v", g.name, g.err, w.name, w.err)
			}
			if g.at.Before(w.due) {
				t.Fatalf("%s woke %v before its deadline", g.name, w.due.Sub(g.at))
			}
			// The timer was armed for the cancelled pump's deadline when
			// the earlier one parked: it must have moved.
			if w.name == "early" && g.at.After(start.Add(900*time.Millisecond)) {
				t.Fatalf("early woke %v after parking, not at its deadline", g.at.Sub(start))
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s never woke", w.name)
		}
	}
	select {
	case g := <-got:
		t.Fatalf("%s woke twice (%v)", g.name, g.err)
	case <-time.After(300 * time.Millisecond):
	}
	p.mu.Lock()
	n := len(p.due)
	p.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d deadlines left after all fired", n)
	}
}
