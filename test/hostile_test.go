package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// connectBytes is a valid CONNECT for version v.
func connectBytes(t *testing.T, v codec.Version, id string, keepAlive uint16) []byte {
	b, err := (&codec.Connect{Version: v, CleanStart: true, ClientID: id, KeepAlive: keepAlive}).Append(nil, v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHostileInput sends what an attacker or a broken client would and
// checks that moat closes that connection (with the MQTT 5 reason where
// the protocol allows), that nothing of it reached the broker, and that
// moat goes on serving everyone else.
func TestHostileInput(t *testing.T) {
	const limit = 32 << 10
	e := newEnv(t, func(c *config.Config) {
		c.Limits.MaxPacketSize = limit
		c.Limits.ConnectTimeout = 2 * time.Second
		c.Listeners[1].TLS.HandshakeTimeout = time.Second
	})
	// A subscriber on the broker's own port sees everything that reaches it.
	seen := newReceived()
	watcher := paho5(t, e.broker.Addr, nil, "watcher", seen)
	sub5(t, watcher, "#", 2)

	versions := []codec.Version{codec.V31, codec.V311, codec.V5}
	connected := func(t *testing.T, v codec.Version, id string) *mqtttest.Raw {
		c := mqtttest.DialRaw(t, e.plain, nil)
		c.Connect(v, id, 30)
		return c
	}
	// expectRefused checks the outcome for version v: MQTT 5 clients get a
	// DISCONNECT with code, 3.x clients a plain close.
	expectRefused := func(t *testing.T, c *mqtttest.Raw, code codec.ReasonCode) {
		t.Helper()
		c.ExpectDisconnect(code, 10*time.Second)
	}

	t.Run("packet before CONNECT", func(t *testing.T) {
		c := mqtttest.DialRaw(t, e.plain, nil)
		c.SendPacket(&codec.Publish{Topic: []byte("evil/before-connect"), Payload: []byte("x")})
		if got := c.ExpectClosed(5 * time.Second); len(got) != 0 {
			t.Fatalf("moat answered a packet before CONNECT with %v", got[0].Type())
		}
	})

	for _, v := range versions {
		t.Run("second CONNECT "+v.String(), func(t *testing.T) {
			c := connected(t, v, "twice")
			c.Send(connectBytes(t, v, "twice", 30))
			expectRefused(t, c, codec.ProtocolError)
		})
		t.Run("five byte remaining length "+v.String(), func(t *testing.T) {
			c := connected(t, v, "varint")
			c.Send([]byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x7f})
			expectRefused(t, c, codec.MalformedPacket)
		})
		t.Run("declared length over the limit "+v.String(), func(t *testing.T) {
			c := connected(t, v, "huge")
			// PUBLISH declaring 200 MB, then nothing: refused on the header.
			c.Send([]byte{0x30, 0x80, 0x80, 0xe8, 0x5f})
			expectRefused(t, c, codec.PacketTooLarge)
		})
		t.Run("invalid UTF-8 in topic "+v.String(), func(t *testing.T) {
			c := connected(t, v, "utf8")
			pub := []byte{0x30, 9, 0, 7, 'e', 'v', 'i', 'l', '/', 0xC3, 0x28}
			if v == codec.V5 {
				pub = []byte{0x30, 10, 0, 7, 'e', 'v', 'i', 'l', '/', 0xC3, 0x28, 0}
			}
			c.Send(pub)
			expectRefused(t, c, codec.MalformedPacket)
		})
		t.Run("U+0000 in topic "+v.String(), func(t *testing.T) {
			c := connected(t, v, "nul")
			pub := []byte{0x30, 8, 0, 6, 'e', 'v', 'i', 'l', '/', 0}
			if v == codec.V5 {
				pub = []byte{0x30, 9, 0, 6, 'e', 'v', 'i', 'l', '/', 0, 0}
			}
			c.Send(pub)
			expectRefused(t, c, codec.MalformedPacket)
		})
		t.Run("wildcard in PUBLISH topic "+v.String(), func(t *testing.T) {
			for _, topic := range []string{"evil/#", "evil/+/x"} {
				c := connected(t, v, "wild")
				c.SendPacket(&codec.Publish{QoS: 1, PacketID: 1, Topic: []byte(topic), Payload: []byte("close valve")})
				expectRefused(t, c, codec.TopicNameInvalid)
			}
		})
		t.Run("client sends CONNACK "+v.String(), func(t *testing.T) {
			c := connected(t, v, "connack")
			c.Send([]byte{0x20, 2, 0, 0})
			expectRefused(t, c, codec.ProtocolError)
		})
		t.Run("QoS 3 "+v.String(), func(t *testing.T) {
			c := connected(t, v, "qos3")
			c.Send([]byte{0x36, 8, 0, 4, 'e', 'v', 'i', 'l', 0, 1})
			expectRefused(t, c, codec.MalformedPacket)
		})
	}

	t.Run("enhanced authentication", func(t *testing.T) {
		c := mqtttest.DialRaw(t, e.plain, nil)
		c.V = codec.V5
		conn := &codec.Connect{Version: codec.V5, CleanStart: true, ClientID: "scram", KeepAlive: 30}
		conn.Properties.Set(codec.PropAuthMethod)
		conn.Properties.AuthMethod = []byte("SCRAM-SHA-256")
		c.SendPacket(conn)
		got := c.ExpectClosed(5 * time.Second)
		if len(got) != 1 {
			t.Fatalf("got %d packets, want one CONNACK", len(got))
		}
		if ack, ok := got[0].(*codec.Connack); !ok || ack.ReasonCode != byte(codec.BadAuthenticationMethod) {
			t.Fatalf("got %+v, want CONNACK 0x8C", got[0])
		}
	})

	t.Run("AUTH without enhanced authentication", func(t *testing.T) {
		c := connected(t, codec.V5, "auth")
		a := &codec.Auth{ReasonCode: codec.ReAuthenticate}
		a.Properties.Set(codec.PropAuthMethod)
		a.Properties.AuthMethod = []byte("SCRAM-SHA-256")
		c.SendPacket(a)
		expectRefused(t, c, codec.ProtocolError)
	})

	t.Run("declared length over the limit in CONNECT", func(t *testing.T) {
		c := mqtttest.DialRaw(t, e.plain, nil)
		c.Send([]byte{0x10, 0x80, 0x80, 0xe8, 0x5f})
		if got := c.ExpectClosed(5 * time.Second); len(got) != 0 {
			t.Fatalf("got %v", got[0].Type())
		}
	})

	t.Run("unsupported protocol name or level", func(t *testing.T) {
		cases := []struct {
			name string
			body []byte
			v    codec.Version // version the CONNACK is written in
			code byte
		}{
			{"MQTT level 3", []byte{0, 4, 'M', 'Q', 'T', 'T', 3, 2, 0, 30, 0, 1, 'c'}, codec.V311, codec.ConnRefusedVersion311},
			{"MQIsdp level 4", []byte{0, 6, 'M', 'Q', 'I', 's', 'd', 'p', 4, 2, 0, 30, 0, 1, 'c'}, codec.V311, codec.ConnRefusedVersion311},
			{"MQTT level 6", []byte{0, 4, 'M', 'Q', 'T', 'T', 6, 2, 0, 30, 0, 1, 'c'}, codec.V311, codec.ConnRefusedVersion311},
			{"MQIsdp level 5", []byte{0, 6, 'M', 'Q', 'I', 's', 'd', 'p', 5, 2, 0, 30, 0, 1, 'c'}, codec.V5, byte(codec.UnsupportedProtocolVersion)},
			{"HTTP level 4", []byte{0, 4, 'H', 'T', 'T', 'P', 4, 2, 0, 30, 0, 1, 'c'}, codec.V311, codec.ConnRefusedVersion311},
		}
		for _, tc := range cases {
			c := mqtttest.DialRaw(t, e.plain, nil)
			c.V = tc.v
			c.Send(append([]byte{0x10, byte(len(tc.body))}, tc.body...))
			got := c.ExpectClosed(5 * time.Second)
			if len(got) != 1 {
				t.Fatalf("%s: got %d packets, want one CONNACK", tc.name, len(got))
			}
			if ack, ok := got[0].(*codec.Connack); !ok || ack.ReasonCode != tc.code {
				t.Fatalf("%s: got %+v, want CONNACK 0x%02X", tc.name, got[0], tc.code)
			}
		}
	})

	t.Run("TLS handshake never started", func(t *testing.T) {
		c := mqtttest.DialRaw(t, e.tls, nil)
		start := time.Now()
		c.ExpectClosed(10 * time.Second)
		if d := time.Since(start); d < time.Second {
			t.Fatalf("closed after %v, before handshake_timeout", d)
		}
	})

	t.Run("truncated packet then silence", func(t *testing.T) {
		c := mqtttest.DialRaw(t, e.plain, nil)
		c.Connect(codec.V5, "stall", 1)
		c.Send([]byte{0x30, 20, 0, 10, 'e', 'v'}) // 6 of 22 bytes
		start := time.Now()
		c.ExpectDisconnect(codec.KeepAliveTimeout, 10*time.Second)
		if d := time.Since(start); d < time.Second {
			t.Fatalf("closed after %v, before 1.5 x keep alive", d)
		}
	})

	t.Run("CONNECT one byte per second", func(t *testing.T) {
		c := mqtttest.DialRaw(t, e.plain, nil)
		b := connectBytes(t, codec.V311, "slowloris", 30)
		start := time.Now()
		closed := make(chan []codec.Packet, 1)
		go func() {
			for _, x := range b {
				if c.TrySend([]byte{x}) != nil {
					return
				}
				time.Sleep(time.Second)
			}
		}()
		go func() { closed <- c.ExpectClosed(10 * time.Second) }()
		if got := <-closed; len(got) != 0 {
			t.Fatalf("slow CONNECT got %v", got[0].Type())
		}
		if d := time.Since(start); d < 2*time.Second {
			t.Fatalf("closed after %v, before connect_timeout", d)
		}
	})

	// Nothing any attacker sent reached the broker.
	time.Sleep(200 * time.Millisecond)
	seen.mu.Lock()
	for _, m := range seen.msgs {
		if strings.HasPrefix(m.Topic, "evil/") {
			t.Errorf("broker received %q from an attacker", m.Topic)
		}
	}
	seen.mu.Unlock()

	// And moat still serves everyone else.
	rec := newReceived()
	c := paho5(t, e.plain, nil, "survivor", rec)
	sub5(t, c, "alive", 1)
	pub5(t, c, "alive", "yes", 1, false)
	rec.wait(t, 1, 10*time.Second)
}

// TestBrokerGoesAway: when the broker dies mid-stream, MQTT 5 clients get
// DISCONNECT 0x80 and 3.x clients a close; moat itself keeps running.
func TestBrokerGoesAway(t *testing.T) {
	broker := mqtttest.Start(t, "")
	e := newEnvWithBroker(t, broker, nil)
	c5 := mqtttest.DialRaw(t, e.plain, nil)
	c5.Connect(codec.V5, "v5", 30)
	c3 := mqtttest.DialRaw(t, e.plain, nil)
	c3.Connect(codec.V311, "v3", 30)
	c5.SendPacket(&codec.Publish{QoS: 1, PacketID: 1, Topic: []byte("t"), Payload: []byte("x")})
	c5.Expect(5 * time.Second)

	broker.Stop()
	c5.ExpectDisconnect(codec.UnspecifiedError, 10*time.Second)
	c3.ExpectClosed(10 * time.Second)

	// With the broker down a new client is told "server unavailable".
	host, port := hostPort(t, e.plain)
	out, err := mosquittoTool(t, 10*time.Second, "mosquitto_pub", "-h", host, "-p", port, "-V", "mqttv311", "-t", "t", "-m", "x")
	if err == nil || !strings.Contains(strings.ToLower(out), "unavailable") {
		t.Fatalf("mosquitto_pub with the broker down: err=%v out=%q", err, out)
	}
}
