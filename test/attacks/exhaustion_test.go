package attacks

import (
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// heapInUse is the live heap after a collection, for bounds on what an
// attack makes moat hold (moat runs in this process).
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

func TestExhaustion(t *testing.T) {
	tg := newTarget(t, func(c *config.Config) {
		c.Limits.WriteTimeout = 2 * time.Second
		c.Limits.MaxKeepAlive = time.Hour
	})
	run := func(name, ref string, f func(t *testing.T)) {
		t.Run(name, func(t *testing.T) {
			count("exhaustion")
			f(t)
			tg.clean(t, name)
		})
	}

	run("thousands of user properties", "limits.max_user_properties", func(t *testing.T) {
		c := mqtttest.DialRaw(t, tg.addr, nil)
		c.Connect(codec.V5, "props", 30)
		var p codec.Properties
		p.Set(codec.PropUser)
		for range 5000 {
			p.User = append(p.User, codec.UserProperty{Key: []byte("k"), Value: []byte("v")})
		}
		c.SendPacket(&codec.Publish{Topic: []byte("ok/p"), Properties: p, Payload: []byte("v")})
		c.ExpectDisconnect(codec.ImplementationSpecificError, 5*time.Second)
	})

	run("a 65,000-byte client id", "limits.max_client_id_length; MQTT-3.1.3-5", func(t *testing.T) {
		for _, v := range []codec.Version{codec.V311, codec.V5} {
			c := mqtttest.DialRaw(t, tg.addr, nil)
			c.V = v
			c.SendPacket(&codec.Connect{Version: v, ClientID: strings.Repeat("x", 65000), CleanStart: true, KeepAlive: 30})
			a, ok := c.Expect(5 * time.Second).(*codec.Connack)
			want := codec.ConnRefusedIdentifier311
			if v == codec.V5 {
				want = byte(codec.ClientIdentifierNotValid)
			}
			if !ok || a.ReasonCode != want {
				t.Fatalf("%s: CONNACK %+v", v, a)
			}
		}
	})

	run("huge declared lengths on many connections", "limits.max_packet_size; MQTT-3.1.2-24", func(t *testing.T) {
		before := heapInUse()
		const n = 200
		conns := make([]*mqtttest.Raw, n)
		for i := range conns {
			c := mqtttest.DialRaw(t, tg.addr, nil)
			c.Connect(codec.V5, "big"+strings.Repeat("x", i%7)+string(rune('a'+i%26)), 30)
			// 900 KiB declared (under the 1 MiB limit), 10 bytes sent: moat
			// must grow with what arrives, not with what is announced.
			c.Send([]byte{0x30, 0x80, 0x94, 0x37, 0, 4, 'o', 'k', '/', 'b', 0, 'x', 'y', 'z'})
			conns[i] = c
		}
		time.Sleep(300 * time.Millisecond)
		if grown := int64(heapInUse()) - int64(before); grown > 64<<20 {
			t.Fatalf("moat's heap grew %d MiB for %d connections announcing 900 KiB each", grown>>20, n)
		}
		// Over the limit: refused before anything is read.
		c := mqtttest.DialRaw(t, tg.addr, nil)
		c.Connect(codec.V5, "toobig", 30)
		c.Send([]byte{0x30, 0xFF, 0xFF, 0xFF, 0x7F})
		c.ExpectDisconnect(codec.PacketTooLarge, 5*time.Second)
		for _, c := range conns {
			c.Conn.Close()
		}
	})

	run("a byte-at-a-time CONNECT", "connect_timeout", func(t *testing.T) {
		c := mqtttest.DialRaw(t, tg.addr, nil)
		c.V = codec.V311
		for _, b := range mustConnect(codec.V311, "slow") {
			c.Send([]byte{b})
			time.Sleep(20 * time.Millisecond)
		}
		if a, ok := c.Expect(5 * time.Second).(*codec.Connack); !ok || a.ReasonCode != 0 {
			t.Fatalf("CONNACK %+v", a)
		}
	})

	run("a stall in the middle of CONNECT", "connect_timeout", func(t *testing.T) {
		c := mqtttest.DialRaw(t, tg.addr, nil)
		c.Send(mustConnect(codec.V311, "stall")[:6])
		start := time.Now()
		c.ExpectClosed(10 * time.Second)
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("closed after %v with a 2s connect timeout", d)
		}
	})

	run("a stall in the middle of a packet", "MQTT-3.1.2-22 (1.5 x keep alive)", func(t *testing.T) {
		c := mqtttest.DialRaw(t, tg.addr, nil)
		c.Connect(codec.V5, "stall5", 1)
		c.Send([]byte{0x30, 20, 0, 4, 'o', 'k'})
		start := time.Now()
		c.ExpectDisconnect(codec.KeepAliveTimeout, 10*time.Second)
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("closed after %v with keep alive 1s", d)
		}
	})

	run("keep alive 0 and 65535", "MQTT-3.2.2-21 (Server Keep Alive)", func(t *testing.T) {
		for _, ka := range []uint16{0, 65535} {
			c := mqtttest.DialRaw(t, tg.addr, nil)
			a := c.Connect(codec.V5, "ka", ka)
			if !a.Properties.Has(codec.PropServerKeepAlive) || a.Properties.ServerKeepAlive != 3600 {
				t.Fatalf("keep alive %d: Server Keep Alive %d, want 3600", ka, a.Properties.ServerKeepAlive)
			}
		}
	})

	run("a subscriber that never reads", "limits.write_timeout", func(t *testing.T) {
		slow := mqtttest.DialRaw(t, tg.addr, nil)
		slow.Connect(codec.V311, "never-reads", 30)
		slow.SendPacket(&codec.Subscribe{PacketID: 1, Subscriptions: []codec.Subscription{{Filter: "ok/flood"}}})
		slow.Expect(5 * time.Second)
		before := heapInUse()
		pub := mqtttest.DialRaw(t, tg.broker.Addr, nil)
		pub.Connect(codec.V311, "corpus-flood", 30)
		payload := make([]byte, 64<<10)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 600 { // ~38 MiB toward a client that reads nothing
				if err := pub.TrySend(mustPublish("ok/flood", payload)); err != nil {
					return
				}
			}
		}()
		// moat cuts the stuck subscriber after write_timeout rather than
		// buffering for it.
		deadline := time.Now().Add(20 * time.Second)
		for tg.srv.Sessions() > 0 && time.Now().Before(deadline) {
			sessions := tg.srv.Connections()
			found := false
			for _, s := range sessions {
				found = found || s.ClientID == "never-reads"
			}
			if !found {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		for _, s := range tg.srv.Connections() {
			if s.ClientID == "never-reads" {
				t.Fatal("the subscriber that never reads is still connected after 20s")
			}
		}
		if grown := int64(heapInUse()) - int64(before); grown > 32<<20 {
			t.Fatalf("moat's heap grew %d MiB for one stuck subscriber", grown>>20)
		}
		pub.Conn.Close()
		wg.Wait()
	})
}

func mustPublish(topic string, payload []byte) []byte {
	b, err := (&codec.Publish{Topic: []byte(topic), Payload: payload}).Append(nil, codec.V311)
	if err != nil {
		panic(err)
	}
	return b
}
