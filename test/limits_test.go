package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
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

// TestConnectionQuotas hits the per-connection limits: subscriptions,
// QoS 1/2 in flight each way, and user properties. (The pacing of a
// 3.x client over max_inflight needs a broker that holds its acks: a
// proxy package test.)
func TestConnectionQuotas(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Limits.MaxSubscriptions = 3
		c.Limits.MaxInflight = 2
		c.Limits.MaxUserProperties = 2
		c.Limits.MaxUserPropertyBytes = 64
	})
	suback := func(c *mqtttest.Raw, id uint16, filters ...string) []byte {
		t.Helper()
		sub := &codec.Subscribe{PacketID: id}
		for _, f := range filters {
			sub.Subscriptions = append(sub.Subscriptions, codec.Subscription{Filter: f, QoS: 1})
		}
		c.SendPacket(sub)
		a, ok := c.Expect(5 * time.Second).(*codec.Suback)
		if !ok || a.PacketID != id {
			t.Fatalf("SUBACK %#v", a)
		}
		return a.ReasonCodes
	}
	t.Run("subscriptions", func(t *testing.T) {
		for _, v := range []codec.Version{codec.V5, codec.V311} {
			c := mqtttest.DialRaw(t, e.plain, nil)
			c.Connect(v, "subs"+strconv.Itoa(int(v)), 30)
			if got := suback(c, 1, "q/1", "q/2"); !bytes.Equal(got, []byte{1, 1}) {
				t.Fatalf("v%d first SUBACK %x", v, got)
			}
			// q/1 again replaces; q/3 is the third; q/4 is one too many.
			want := []byte{1, 1, byte(codec.QuotaExceeded)}
			if v != codec.V5 {
				want[2] = codec.SubackFailure311
			}
			if got := suback(c, 2, "q/1", "q/3", "q/4"); !bytes.Equal(got, want) {
				t.Fatalf("v%d SUBACK %x, want %x", v, got, want)
			}
			// The refused filter never reached the broker.
			pub := paho5(t, e.broker.Addr, nil, "quota-pub"+strconv.Itoa(int(v)), nil)
			pub5(t, pub, "q/4", "no", 0, false)
			pub5(t, pub, "q/3", "yes", 0, false)
			if p, ok := c.Expect(5 * time.Second).(*codec.Publish); !ok || string(p.Topic) != "q/3" {
				t.Fatalf("v%d delivery %#v, want q/3 only", v, p)
			}
			// Unsubscribing frees a place.
			c.SendPacket(&codec.Unsubscribe{PacketID: 3, Filters: []string{"q/1"}})
			if _, ok := c.Expect(5 * time.Second).(*codec.Unsuback); !ok {
				t.Fatal("no UNSUBACK")
			}
			if got := suback(c, 4, "q/4"); !bytes.Equal(got, []byte{1}) {
				t.Fatalf("v%d SUBACK after unsubscribe %x", v, got)
			}
		}
	})
	t.Run("inflight v5", func(t *testing.T) {
		c := mqtttest.DialRaw(t, e.plain, nil)
		ack := c.Connect(codec.V5, "infl5", 30)
		if !ack.Properties.Has(codec.PropReceiveMaximum) || ack.Properties.ReceiveMaximum != 2 {
			t.Fatalf("CONNACK Receive Maximum %d, want 2", ack.Properties.ReceiveMaximum)
		}
		// QoS 2 without PUBREL stays in flight: the third is one too many.
		for id := uint16(1); id <= 2; id++ {
			c.SendPacket(&codec.Publish{Topic: []byte("f/x"), QoS: 2, PacketID: id, Payload: []byte("m")})
			if a, ok := c.Expect(5 * time.Second).(*codec.Ack); !ok || a.PacketType != codec.PUBREC || a.ReasonCode != 0 {
				t.Fatalf("want PUBREC, got %#v", a)
			}
		}
		c.SendPacket(&codec.Publish{Topic: []byte("f/x"), QoS: 2, PacketID: 3, Payload: []byte("m")})
		c.ExpectDisconnect(codec.ReceiveMaximumExceeded, 5*time.Second)
	})
	t.Run("the client's receive maximum reaches the broker", func(t *testing.T) {
		c := mqtttest.DialRaw(t, e.plain, nil)
		c.V = codec.V5
		con := &codec.Connect{Version: codec.V5, ClientID: "rm5", CleanStart: true, KeepAlive: 30}
		con.Properties.Set(codec.PropReceiveMaximum)
		con.Properties.ReceiveMaximum = 2
		c.SendPacket(con)
		if a, ok := c.Expect(5 * time.Second).(*codec.Connack); !ok || a.ReasonCode != 0 {
			t.Fatalf("CONNACK %+v", a)
		}
		if got := suback(c, 1, "h/#"); !bytes.Equal(got, []byte{1}) {
			t.Fatalf("SUBACK %x", got)
		}
		pub := paho5(t, e.broker.Addr, nil, "rm-pub", nil)
		for i := 0; i < 4; i++ {
			pub5(t, pub, "h/x", strconv.Itoa(i), 1, false)
		}
		// The broker holds back what the client has not acknowledged.
		var ids []uint16
		for {
			p, err := c.Read(700 * time.Millisecond)
			if err != nil {
				break
			}
			if pk, ok := p.(*codec.Publish); ok {
				ids = append(ids, pk.PacketID)
			}
		}
		if len(ids) != 2 {
			t.Fatalf("%d deliveries unacknowledged, want 2 (Receive Maximum)", len(ids))
		}
		c.SendPacket(&codec.Ack{PacketType: codec.PUBACK, PacketID: ids[0]})
		if _, ok := c.Expect(5 * time.Second).(*codec.Publish); !ok {
			t.Fatal("no delivery after an ack freed a slot")
		}
		// A client that names no Receive Maximum is not held to
		// max_inflight (2 here) by moat.
		free := mqtttest.DialRaw(t, e.plain, nil)
		free.Connect(codec.V5, "rm-none", 30)
		if got := suback(free, 1, "h2/#"); !bytes.Equal(got, []byte{1}) {
			t.Fatalf("SUBACK %x", got)
		}
		for i := 0; i < 4; i++ {
			pub5(t, pub, "h2/x", strconv.Itoa(i), 1, false)
		}
		for i := 0; i < 4; i++ {
			if _, ok := free.Expect(5 * time.Second).(*codec.Publish); !ok {
				t.Fatalf("delivery %d held back", i)
			}
		}
	})
	t.Run("user properties", func(t *testing.T) {
		props := func(kv ...string) codec.Properties {
			var p codec.Properties
			p.Set(codec.PropUser)
			for i := 0; i+1 < len(kv); i += 2 {
				p.User = append(p.User, codec.UserProperty{Key: []byte(kv[i]), Value: []byte(kv[i+1])})
			}
			return p
		}
		c := mqtttest.DialRaw(t, e.plain, nil)
		c.Connect(codec.V5, "up-ok", 30)
		c.SendPacket(&codec.Publish{Topic: []byte("u/x"), QoS: 1, PacketID: 1, Properties: props("a", "1", "b", "2")})
		if a, ok := c.Expect(5 * time.Second).(*codec.Ack); !ok || a.ReasonCode >= 0x80 {
			t.Fatalf("two user properties: %#v", a)
		}
		c.SendPacket(&codec.Publish{Topic: []byte("u/x"), QoS: 1, PacketID: 2, Properties: props("a", "1", "b", "2", "c", "3")})
		c.ExpectDisconnect(codec.ImplementationSpecificError, 5*time.Second)

		c = mqtttest.DialRaw(t, e.plain, nil)
		c.Connect(codec.V5, "up-big", 30)
		c.SendPacket(&codec.Subscribe{PacketID: 1, Properties: props("k", strings.Repeat("v", 64)),
			Subscriptions: []codec.Subscription{{Filter: "u/#"}}})
		c.ExpectDisconnect(codec.ImplementationSpecificError, 5*time.Second)

		c = mqtttest.DialRaw(t, e.plain, nil)
		c.V = codec.V5
		c.SendPacket(&codec.Connect{Version: codec.V5, ClientID: "up-con", CleanStart: true, Properties: props("a", "1", "b", "2", "c", "3")})
		if a, ok := c.Expect(5 * time.Second).(*codec.Connack); !ok || a.ReasonCode != byte(codec.ImplementationSpecificError) {
			t.Fatalf("CONNECT with three user properties: %#v", a)
		}
	})
}

// A topic rate is a budget per client shared by every topic its filters
// match; other topics and other clients are not charged.
func TestTopicRates(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Limits.Rate = config.ClientRate{PublishPerSecond: -1, BytesPerSecond: -1, SubscribePerSecond: -1, Action: "reject"}
		c.Limits.TopicRates = []config.TopicRate{{Topics: []string{"tr/+/telemetry"}, PublishPerSecond: 0.5, PublishBurst: 2}}
	})
	codes := func(c *paho.Client, topics ...string) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var out []byte
		for _, tp := range topics {
			r, err := c.Publish(ctx, &paho.Publish{Topic: tp, QoS: 1, Payload: []byte("v")})
			if r == nil {
				t.Fatal(err)
			}
			out = append(out, r.ReasonCode&0x80) // 0x80: refused
		}
		return out
	}
	a := paho5(t, e.plain, nil, "tr-a", nil)
	// Burst 2, shared by both telemetry topics; other topics are free.
	if got := codes(a, "tr/1/telemetry", "tr/2/telemetry", "tr/3/telemetry", "tr/1/status", "tr/1/status", "tr/1/status"); !bytes.Equal(got, []byte{0, 0, 0x80, 0, 0, 0}) {
		t.Fatalf("refusals %x", got)
	}
	b := paho5(t, e.plain, nil, "tr-b", nil)
	if got := codes(b, "tr/1/telemetry"); !bytes.Equal(got, []byte{0}) {
		t.Fatalf("another client was charged: %x", got)
	}
}

// Budgets from the policy: one identity gets its own message rate,
// another a topic budget; clients the rule does not name keep the
// configured ones.
func TestPolicyLimits(t *testing.T) {
	dir := t.TempDir()
	rules := `package moat.authz
allow := true
limits := {"publish_per_second": 0.5, "publish_burst": 1} if input.client.id == "slow"
limits := {"topic_rates": [{"topics": ["pl/+/telemetry"], "publish_per_second": 0.5, "publish_burst": 1}]} if input.client.id == "sensor"
`
	if err := os.WriteFile(filepath.Join(dir, "limits.rego"), []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *config.Config) {
		c.Policy = &config.Policy{Mode: config.ModeEnforce, Paths: []string{dir}, WatchInterval: config.OptDuration{Set: true}}
		c.Limits.Rate = config.ClientRate{PublishPerSecond: -1, BytesPerSecond: -1, SubscribePerSecond: -1, Action: "reject"}
	})
	refused := func(id string, topics ...string) []bool {
		t.Helper()
		c := paho5(t, e.plain, nil, id, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var out []bool
		for _, tp := range topics {
			r, err := c.Publish(ctx, &paho.Publish{Topic: tp, QoS: 1, Payload: []byte("v")})
			if r == nil {
				t.Fatal(err)
			}
			out = append(out, r.ReasonCode == byte(codec.QuotaExceeded))
		}
		return out
	}
	if got := refused("slow", "a", "b"); !reflect.DeepEqual(got, []bool{false, true}) {
		t.Fatalf("slow: refused %v", got)
	}
	if got := refused("sensor", "pl/1/telemetry", "pl/2/telemetry", "pl/1/status", "a", "b"); !reflect.DeepEqual(got, []bool{false, true, false, false, false}) {
		t.Fatalf("sensor: refused %v", got)
	}
	if got := refused("other", "a", "b", "c"); !reflect.DeepEqual(got, []bool{false, false, false}) {
		t.Fatalf("other: refused %v", got)
	}
}
