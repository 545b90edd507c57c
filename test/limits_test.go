package e2e

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// A flooding publisher is paced to its budget, measured at the broker,
// while a well-behaved client on the same proxy is not slowed.
func TestRatePacing(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Limits.Rate = config.ClientRate{PublishPerSecond: 100, PublishBurst: 100, BytesPerSecond: -1, SubscribePerSecond: -1}
	})
	spied := spy(t, e)
	flood := mqtttest.DialRaw(t, e.plain, nil)
	flood.Connect(codec.V311, "flooder", 30)
	msg, _ := (&codec.Publish{Topic: []byte("flood/x"), Payload: make([]byte, 64)}).Append(nil, codec.V311)
	var batch []byte
	for range 100 {
		batch = append(batch, msg...)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			flood.Conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			flood.Conn.Write(batch) // blocks when moat stops reading: that is the point
		}
	}()
	// The well-behaved client: 20 QoS 1 publishes, each acknowledged promptly.
	good := paho5(t, e.plain, nil, "good", nil)
	start := time.Now()
	for range 20 {
		pub5(t, good, "calm/x", "v", 1, false)
	}
	calm := time.Since(start)
	time.Sleep(2*time.Second - calm)
	window := time.Since(start)
	close(stop)
	wg.Wait()
	flooded := 0
	for _, m := range spied.wait(t, 20, 5*time.Second) {
		if m.Topic == "flood/x" {
			flooded++
		}
	}
	// Burst (100) plus 100/s over the window, with slack for timing.
	limit := 100 + int(100*window.Seconds()) + 30
	if flooded > limit || flooded < 100 {
		t.Fatalf("flooder got %d messages to the broker in %v; budget allows about %d", flooded, window, limit-30)
	}
	if calm > 2*time.Second {
		t.Fatalf("the calm client's 20 publishes took %v", calm)
	}
	t.Logf("flooder: %d messages in %v; calm client: 20 acks in %v", flooded, window.Round(time.Millisecond), calm.Round(time.Millisecond))
}

func TestRateRejectAndDisconnect(t *testing.T) {
	rates := config.ClientRate{PublishPerSecond: 1, PublishBurst: 2, BytesPerSecond: -1, SubscribePerSecond: -1}
	t.Run("reject v5", func(t *testing.T) {
		e := newEnv(t, func(c *config.Config) { r := rates; r.Action = "reject"; c.Limits.Rate = r })
		c := paho5(t, e.plain, nil, "r5", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var codes []byte
		for range 4 {
			r, err := c.Publish(ctx, &paho.Publish{Topic: "x", QoS: 1, Payload: []byte("v")})
			if r == nil {
				t.Fatal(err)
			}
			codes = append(codes, r.ReasonCode)
		}
		// 0x00 or 0x10 (no subscribers) from the broker, then 0x97 from
		// moat (0x96 is not a PUBACK code).
		if codes[0] >= 0x80 || codes[1] >= 0x80 || codes[2] != byte(codec.QuotaExceeded) || codes[3] != byte(codec.QuotaExceeded) {
			t.Fatalf("reason codes %v", codes)
		}
	})
	t.Run("reject falls back to pacing for 3.1.1", func(t *testing.T) {
		e := newEnv(t, func(c *config.Config) { r := rates; r.Action = "reject"; c.Limits.Rate = r })
		c := paho3(t, e.plain, nil, "r3", true)
		start := time.Now()
		for range 4 {
			wait3(t, c.Publish("x", 1, false, "v"), "publish")
		}
		if d := time.Since(start); d < 1500*time.Millisecond {
			t.Fatalf("4 publishes at 1/s with a burst of 2 took %v", d)
		}
	})
	t.Run("disconnect", func(t *testing.T) {
		e := newEnv(t, func(c *config.Config) { r := rates; r.Action = "disconnect"; c.Limits.Rate = r })
		c5 := mqtttest.DialRaw(t, e.plain, nil)
		c5.Connect(codec.V5, "d5", 30)
		c3 := mqtttest.DialRaw(t, e.plain, nil)
		c3.Connect(codec.V311, "d3", 30)
		for range 3 {
			c5.SendPacket(&codec.Publish{Topic: []byte("x"), Payload: []byte("v")})
			c3.SendPacket(&codec.Publish{Topic: []byte("x"), Payload: []byte("v")})
		}
		c5.ExpectDisconnect(codec.MessageRateTooHigh, 5*time.Second)
		if got := c3.ExpectClosed(5 * time.Second); len(got) != 0 {
			t.Fatalf("3.1.1 got %v", got)
		}
	})
}

// A connection storm from one address is cut before TLS; other
// addresses still connect. Concurrent connections per address are capped.
func TestConnectionLimits(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Limits.Connections = config.ConnectionLimits{PerAddressPerSecond: 1, PerAddressBurst: 5, PerAddress: -1, PerSecond: -1, Max: -1}
	})
	dialFrom := func(from string) error {
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		conn, err := tls.DialWithDialer(d, "tcp", e.tls, e.tlsConfig(""))
		if err != nil {
			return err
		}
		conn.Close()
		return nil
	}
	ok := 0
	for range 12 {
		if dialFrom("127.0.0.9") == nil {
			ok++
		}
	}
	// The burst is 5 and one more token arrives per second: a slow
	// machine may fit one or two more in, a cut storm never twelve.
	if ok < 5 || ok > 8 {
		t.Fatalf("%d of 12 handshakes from one address succeeded; the burst is 5", ok)
	}
	if err := dialFrom("127.0.0.10"); err != nil {
		t.Fatalf("another address: %v", err)
	}

	e2 := newEnv(t, func(c *config.Config) {
		c.Limits.Connections = config.ConnectionLimits{PerAddressPerSecond: -1, PerAddress: 3, PerSecond: -1, Max: -1}
	})
	var open []*mqtttest.Raw
	for i := range 3 {
		c := mqtttest.DialRawFrom(t, "127.0.0.11", e2.plain)
		c.Connect(codec.V311, "c"+string(rune('a'+i)), 30)
		open = append(open, c)
	}
	fourth := mqtttest.DialRawFrom(t, "127.0.0.11", e2.plain)
	fourth.V = codec.V311
	fourth.SendPacket(&codec.Connect{Version: codec.V311, CleanStart: true, ClientID: "cd", KeepAlive: 30})
	if got := fourth.ExpectClosed(5 * time.Second); len(got) != 0 {
		t.Fatalf("fourth connection got %v", got)
	}
	open[0].Conn.Close()
	time.Sleep(200 * time.Millisecond) // moat notices the close
	again := mqtttest.DialRawFrom(t, "127.0.0.11", e2.plain)
	again.Connect(codec.V311, "ce", 30)
}

// Each protocol limit refused, in the protocol's own terms.
func TestProtocolLimits(t *testing.T) {
	one, no := 1, false
	e := newEnv(t, func(c *config.Config) {
		c.Limits.MaxClientIDLength = 8
		c.Limits.MaxTopicLength = 20
		c.Limits.MaxTopicLevels = 3
		c.Limits.MaxKeepAlive = 60 * time.Second
		for i := range c.Listeners {
			if c.Listeners[i].Name == "mqtt" {
				c.Listeners[i].MaxQoS, c.Listeners[i].RetainAvailable = &one, &no
			}
		}
	})
	connack := func(v codec.Version, con *codec.Connect) (*mqtttest.Raw, *codec.Connack) {
		t.Helper()
		c := mqtttest.DialRaw(t, e.plain, nil)
		c.V = v
		con.Version, con.CleanStart = v, true
		c.SendPacket(con)
		p, err := c.Read(5 * time.Second)
		if err != nil {
			return c, nil
		}
		a, _ := p.(*codec.Connack)
		return c, a
	}
	if _, a := connack(codec.V5, &codec.Connect{ClientID: "much-too-long"}); a == nil || a.ReasonCode != byte(codec.ClientIdentifierNotValid) {
		t.Errorf("long client id, v5: %+v", a)
	}
	if _, a := connack(codec.V311, &codec.Connect{ClientID: "much-too-long"}); a == nil || a.ReasonCode != codec.ConnRefusedIdentifier311 {
		t.Errorf("long client id, 3.1.1: %+v", a)
	}
	if _, a := connack(codec.V5, &codec.Connect{ClientID: "w", Will: &codec.Will{Topic: "a/b/c/d", Payload: []byte("x")}}); a == nil || a.ReasonCode != byte(codec.TopicNameInvalid) {
		t.Errorf("deep will topic: %+v", a)
	}
	// Keep alive 0 is clamped, and MQTT 5 clients are told; so are the
	// listener's maximum QoS and retain availability.
	c, a := connack(codec.V5, &codec.Connect{ClientID: "k0", KeepAlive: 0})
	if a == nil || a.ReasonCode != 0 || a.Properties.ServerKeepAlive != 60 || !a.Properties.Has(codec.PropMaximumQoS) ||
		a.Properties.MaximumQoS != 1 || !a.Properties.Has(codec.PropRetainAvailable) || a.Properties.RetainAvailable != 0 {
		t.Fatalf("CONNACK %+v", a)
	}
	c.SendPacket(&codec.Publish{Topic: []byte("x"), QoS: 2, PacketID: 1})
	c.ExpectDisconnect(codec.QoSNotSupported, 5*time.Second)
	for _, cs := range []struct {
		p    codec.Packet
		want codec.ReasonCode
	}{
		{&codec.Publish{Topic: []byte("x"), Retain: true}, codec.RetainNotSupported},
		{&codec.Publish{Topic: []byte("a/b/c/d")}, codec.TopicNameInvalid},
		{&codec.Publish{Topic: []byte("abcdefghijklmnopqrstuvwxyz")}, codec.TopicNameInvalid},
		{&codec.Subscribe{PacketID: 1, Subscriptions: []codec.Subscription{{Filter: "a/b/c/#"}}}, codec.TopicFilterInvalid},
	} {
		c, _ := connack(codec.V5, &codec.Connect{ClientID: "p", KeepAlive: 30})
		c.SendPacket(cs.p)
		c.ExpectDisconnect(cs.want, 5*time.Second)
	}
	// 3.1.1 cannot be told retain is off: the flag is stripped.
	spied := spy(t, e)
	c3 := paho3(t, e.plain, nil, "r3", true)
	wait3(t, c3.Publish("keep/me", 1, true, "v"), "retained publish")
	if m := spied.wait(t, 1, 5*time.Second); m[0].Topic != "keep/me" || m[0].Retain {
		t.Fatalf("broker got %+v", m)
	}
	late := newReceived()
	sub3(t, paho3(t, e.plain, nil, "late", true), "keep/#", 0, late)
	time.Sleep(300 * time.Millisecond)
	if late.count() != 0 {
		t.Fatal("a stripped retained message was stored by the broker")
	}
}
