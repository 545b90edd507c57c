package attacks

import (
	"bytes"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

func props(set func(*codec.Properties)) codec.Properties {
	var p codec.Properties
	set(&p)
	return p
}

// ack reads until an ack of type t for id, and returns its code.
func ack(t *testing.T, c *mqtttest.Raw, typ codec.PacketType, id uint16) codec.ReasonCode {
	t.Helper()
	for {
		p := c.Expect(5 * time.Second)
		if a, ok := p.(*codec.Ack); ok && a.PacketType == typ && a.PacketID == id {
			return a.ReasonCode
		}
	}
}

func TestBypasses(t *testing.T) {
	tg := newTarget(t, nil)
	run := func(name, ref string, f func(t *testing.T)) {
		t.Run(name, func(t *testing.T) {
			count("bypass")
			f(t)
			tg.clean(t, name)
		})
	}

	// A will is a publish the client makes at CONNECT.
	for _, w := range []struct {
		name string
		v    codec.Version
		will codec.Will
	}{
		{"will to a forbidden topic (3.1.1)", codec.V311, codec.Will{Topic: "secret/will", Payload: []byte("w")}},
		{"retained will to a forbidden topic (3.1)", codec.V31, codec.Will{Topic: "secret/will", Retain: true, QoS: 1, Payload: []byte("w")}},
		{"will with properties to a forbidden topic (5)", codec.V5, codec.Will{Topic: "secret/will", Payload: []byte("w"),
			Properties: props(func(p *codec.Properties) { p.Set(codec.PropWillDelay); p.WillDelay = 0 })}},
	} {
		run(w.name, "policy contract: the will is authorized as a publish at CONNECT", func(t *testing.T) {
			c := mqtttest.DialRaw(t, tg.addr, nil)
			c.V = w.v
			will := w.will
			c.SendPacket(&codec.Connect{Version: w.v, ClientID: "willer", CleanStart: true, KeepAlive: 30, Will: &will})
			a, ok := c.Expect(5 * time.Second).(*codec.Connack)
			want := byte(codec.ConnRefusedNotAuthorized311)
			if w.v == codec.V5 {
				want = byte(codec.NotAuthorized)
			}
			if !ok || a.ReasonCode != want {
				t.Fatalf("CONNACK %+v, want 0x%02X", a, want)
			}
			c.Conn.Close() // abruptly: a will, had it been accepted, would fire now
		})
	}

	run("topic alias re-pointed from an allowed to a forbidden topic", "MQTT-3.3.2-12; policy contract", func(t *testing.T) {
		c := mqtttest.DialRaw(t, tg.addr, nil)
		c.Connect(codec.V5, "aliaser", 30)
		alias := func(n uint16) codec.Properties {
			return props(func(p *codec.Properties) { p.Set(codec.PropTopicAlias); p.TopicAlias = n })
		}
		steps := []struct {
			topic string
			want  codec.ReasonCode
		}{
			{"ok/a", 0},                       // sets alias 1 -> ok/a
			{"secret/x", codec.NotAuthorized}, // re-points alias 1
			{"", codec.NotAuthorized},         // alias alone: secret/x, not ok/a
			{"ok/b", 0},                       // back to an allowed topic
			{"", 0},
		}
		for i, s := range steps {
			id := uint16(i + 1)
			c.SendPacket(&codec.Publish{Topic: []byte(s.topic), QoS: 1, PacketID: id, Properties: alias(1), Payload: []byte("v")})
			if got := ack(t, c, codec.PUBACK, id); (got >= 0x80) != (s.want != 0) {
				t.Fatalf("step %d (%q): PUBACK %s", i, s.topic, got)
			}
		}
	})

	run("deliveries to a client never carry a topic alias", "MQTT-3.3.2-10", func(t *testing.T) {
		c := mqtttest.DialRaw(t, tg.addr, nil)
		c.V = codec.V5
		c.SendPacket(&codec.Connect{Version: codec.V5, ClientID: "alias-rx", CleanStart: true, KeepAlive: 30,
			Properties: props(func(p *codec.Properties) { p.Set(codec.PropTopicAliasMaximum); p.TopicAliasMaximum = 10 })})
		c.Expect(5 * time.Second)
		c.SendPacket(&codec.Subscribe{PacketID: 1, Subscriptions: []codec.Subscription{{Filter: "ok/alias/#"}}})
		c.Expect(5 * time.Second)
		pub := mqtttest.DialRaw(t, tg.broker.Addr, nil)
		pub.Connect(codec.V5, "corpus-pub", 30)
		for range 3 {
			pub.SendPacket(&codec.Publish{Topic: []byte("ok/alias/x"), Payload: []byte("v")})
		}
		for range 3 {
			p, ok := c.Expect(5 * time.Second).(*codec.Publish)
			if !ok || string(p.Topic) != "ok/alias/x" || p.Properties.Has(codec.PropTopicAlias) {
				t.Fatalf("delivery %+v", p)
			}
		}
	})

	for _, v := range []codec.Version{codec.V311, codec.V5} {
		run("multi-filter SUBSCRIBE and UNSUBSCRIBE with forbidden filters ("+v.String()+")", "policy contract; MQTT-3.9.3", func(t *testing.T) {
			c := mqtttest.DialRaw(t, tg.addr, nil)
			c.Connect(v, "multi", 30)
			c.SendPacket(&codec.Subscribe{PacketID: 7, Subscriptions: []codec.Subscription{
				{Filter: "ok/1", QoS: 1}, {Filter: "secret/#", QoS: 1}, {Filter: "$share/g/secret/x", QoS: 1}, {Filter: "$SYS/#", QoS: 1}, {Filter: "ok/2", QoS: 1}}})
			deny := byte(codec.NotAuthorized)
			if v != codec.V5 {
				deny = codec.SubackFailure311
			}
			a, ok := c.Expect(5 * time.Second).(*codec.Suback)
			if !ok || a.PacketID != 7 || !bytes.Equal(a.ReasonCodes, []byte{1, deny, deny, deny, 1}) {
				t.Fatalf("SUBACK %+v", a)
			}
			c.SendPacket(&codec.Unsubscribe{PacketID: 8, Filters: []string{"ok/1", "secret/#"}})
			u, ok := c.Expect(5 * time.Second).(*codec.Unsuback)
			if !ok || u.PacketID != 8 || v == codec.V5 && (len(u.ReasonCodes) != 2 || u.ReasonCodes[1] != byte(codec.NotAuthorized)) {
				t.Fatalf("UNSUBACK %+v", u)
			}
		})
	}

	for _, bad := range []string{"$share/g", "$share//ok/x", "$share/g+/ok/x", "$share/g#/ok/x"} {
		run("malformed shared subscription "+bad, "MQTT-4.8.2-1, MQTT-4.8.2-2", func(t *testing.T) {
			c := mqtttest.DialRaw(t, tg.addr, nil)
			c.Connect(codec.V5, "sharer", 30)
			c.SendPacket(&codec.Subscribe{PacketID: 1, Subscriptions: []codec.Subscription{{Filter: bad}}})
			got := c.ExpectClosed(5 * time.Second)
			for _, p := range got {
				if p.Type() == codec.SUBACK {
					t.Fatalf("a malformed share name got %+v", p)
				}
			}
			checkCode(t, got, false, codec.TopicFilterInvalid)
		})
	}

	// Injected at the broker under hidden/ (the spy flags secret/ only):
	// the policy denies receiving it.
	run("wildcard subscription receiving forbidden topics, retained and live", "policy contract: receive", func(t *testing.T) {
		pub := mqtttest.DialRaw(t, tg.broker.Addr, nil)
		pub.Connect(codec.V5, "corpus-pub2", 30)
		pub.SendPacket(&codec.Publish{Topic: []byte("hidden/r"), Retain: true, QoS: 1, PacketID: 1, Payload: []byte("retained hidden")})
		pub.Expect(5 * time.Second)
		c := mqtttest.DialRaw(t, tg.addr, nil)
		c.Connect(codec.V311, "wild", 30)
		c.SendPacket(&codec.Subscribe{PacketID: 1, Subscriptions: []codec.Subscription{{Filter: "+/r", QoS: 1}}})
		if a, ok := c.Expect(5 * time.Second).(*codec.Suback); !ok || a.ReasonCodes[0] != 1 {
			t.Fatalf("SUBACK %+v", a)
		}
		pub.SendPacket(&codec.Publish{Topic: []byte("hidden/r"), QoS: 1, PacketID: 2, Payload: []byte("live hidden")})
		pub.SendPacket(&codec.Publish{Topic: []byte("ok/r"), QoS: 1, PacketID: 3, Payload: []byte("fine")})
		p, ok := c.Expect(5 * time.Second).(*codec.Publish)
		if !ok || string(p.Topic) != "ok/r" {
			t.Fatalf("first delivery %+v, want ok/r (hidden/r dropped, retained and live)", p)
		}
		// Clear the retained hidden for the next cases.
		pub.SendPacket(&codec.Publish{Topic: []byte("hidden/r"), Retain: true})
	})

	for _, id := range []string{"#", "+", "/", "\uFEFFsecret", "secret/#"} {
		run("client id "+id, "MQTT-3.1.3-5 (any UTF-8 id); identity from verified sources only", func(t *testing.T) {
			c := mqtttest.DialRaw(t, tg.addr, nil)
			c.Connect(codec.V5, id, 30)
			c.SendPacket(&codec.Publish{Topic: []byte("secret/id"), QoS: 1, PacketID: 1, Payload: []byte("v")})
			if got := ack(t, c, codec.PUBACK, 1); got != codec.NotAuthorized {
				t.Fatalf("PUBACK %s", got)
			}
		})
	}
	run("client id with U+0000", "MQTT-1.5.4-2", func(t *testing.T) {
		c := mqtttest.DialRaw(t, tg.addr, nil)
		c.V = codec.V5
		c.Send([]byte{0x10, 16, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 30, 0, 0, 3, 'a', 0, 'b'})
		for _, p := range c.ExpectClosed(5 * time.Second) {
			if a, ok := p.(*codec.Connack); ok && a.ReasonCode == 0 {
				t.Fatal("accepted")
			}
		}
	})

	for _, v := range []codec.Version{codec.V311, codec.V5} {
		run("QoS 2 around a denied message ("+v.String()+")", "DESIGN: denied QoS 2; MQTT-4.3.3", func(t *testing.T) {
			c := mqtttest.DialRaw(t, tg.addr, nil)
			c.Connect(v, "qos2", 30)
			// A PUBREL for an id never forwarded: the broker answers it; no harm.
			c.SendPacket(&codec.Ack{PacketType: codec.PUBREL, PacketID: 9})
			ack(t, c, codec.PUBCOMP, 9)
			// Denied, then the same id reused for an allowed message.
			c.SendPacket(&codec.Publish{Topic: []byte("secret/q2"), QoS: 2, PacketID: 5, Payload: []byte("v")})
			code := ack(t, c, codec.PUBREC, 5)
			if v == codec.V5 && code != codec.NotAuthorized {
				t.Fatalf("PUBREC %s", code)
			}
			if v != codec.V5 {
				c.SendPacket(&codec.Ack{PacketType: codec.PUBREL, PacketID: 5})
				ack(t, c, codec.PUBCOMP, 5)
			}
			c.SendPacket(&codec.Publish{Topic: []byte("ok/q2"), QoS: 2, PacketID: 5, Payload: []byte("v")})
			if code := ack(t, c, codec.PUBREC, 5); code >= 0x80 {
				t.Fatalf("allowed QoS 2: PUBREC %s", code)
			}
			c.SendPacket(&codec.Ack{PacketType: codec.PUBREL, PacketID: 5})
			ack(t, c, codec.PUBCOMP, 5)
		})
	}
}
