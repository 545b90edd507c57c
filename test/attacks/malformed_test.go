package attacks

import (
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// malformed is one packet that breaks the spec. bytes builds it for a
// version (nil: the case does not apply to that version); code is the
// MQTT 5 reason moat must give (DISCONNECT, or CONNACK when atConnect),
// 0 for "closed, whatever the code".
type malformed struct {
	name      string
	ref       string
	atConnect bool
	code      codec.ReasonCode
	bytes     func(v codec.Version) []byte
}

func all(b []byte) func(codec.Version) []byte { return func(codec.Version) []byte { return b } }

// v5only is b for MQTT 5 and nil otherwise; per gives each version its own.
func v5only(b []byte) func(codec.Version) []byte {
	return func(v codec.Version) []byte {
		if v == codec.V5 {
			return b
		}
		return nil
	}
}

func per(v3, v5 []byte) func(codec.Version) []byte {
	return func(v codec.Version) []byte {
		if v == codec.V5 {
			return v5
		}
		return v3
	}
}

var malformedCases = []malformed{
	{name: "remaining length shorter than the topic", ref: "MQTT-1.5.4, MQTT-2.1.4", code: codec.MalformedPacket,
		bytes: all([]byte{0x30, 5, 0x00, 0x10, 's', 'e', 'c', 'r', 'e'})},
	{name: "property length beyond the packet", ref: "MQTT-2.2.2", code: codec.MalformedPacket,
		bytes: v5only([]byte{0x30, 13, 0, 8, 's', 'e', 'c', 'r', 'e', 't', '/', 'a', 10, 0x01, 0x01})},
	{name: "non-minimal remaining length", ref: "MQTT-1.5.5", code: codec.MalformedPacket,
		bytes: all([]byte{0x30, 0x80, 0x00})},
	{name: "five-byte remaining length", ref: "MQTT-1.5.5", code: codec.MalformedPacket,
		bytes: all([]byte{0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01})},
	{name: "SUBSCRIBE with reserved flags 0000", ref: "MQTT-3.8.1-1", code: codec.MalformedPacket,
		bytes: per([]byte{0x80, 13, 0, 1, 0, 8, 's', 'e', 'c', 'r', 'e', 't', '/', '#', 0}, []byte{0x80, 14, 0, 1, 0, 0, 8, 's', 'e', 'c', 'r', 'e', 't', '/', '#', 0})},
	{name: "reserved packet type 0", ref: "MQTT-2.1.2", code: codec.MalformedPacket,
		bytes: all([]byte{0x00, 0x00})},
	{name: "AUTH", ref: "MQTT-2.1.2 (3.x), MQTT-4.12.0-7 (5: no AUTH without an authentication method)", code: codec.ProtocolError,
		bytes: all([]byte{0xF0, 0x00})},
	{name: "PUBLISH at QoS 3", ref: "MQTT-3.3.1-4", code: codec.MalformedPacket,
		bytes: per([]byte{0x36, 12, 0, 8, 's', 'e', 'c', 'r', 'e', 't', '/', 'a', 0, 1}, []byte{0x36, 13, 0, 8, 's', 'e', 'c', 'r', 'e', 't', '/', 'a', 0, 1, 0})},
	{name: "QoS 1 PUBLISH with packet id 0", ref: "MQTT-2.2.1-3", code: codec.MalformedPacket,
		bytes: per([]byte{0x32, 12, 0, 8, 's', 'e', 'c', 'r', 'e', 't', '/', 'a', 0, 0}, []byte{0x32, 13, 0, 8, 's', 'e', 'c', 'r', 'e', 't', '/', 'a', 0, 0, 0})},
	{name: "PUBLISH to an empty topic", ref: "MQTT-4.7.3-1", code: codec.TopicNameInvalid,
		bytes: per([]byte{0x30, 3, 0, 0, 'x'}, []byte{0x30, 4, 0, 0, 0, 'x'})},
	{name: "PUBLISH to a wildcard topic", ref: "MQTT-3.3.2-2", code: codec.TopicNameInvalid,
		bytes: per([]byte{0x30, 11, 0, 8, 's', 'e', 'c', 'r', 'e', 't', '/', '#', 'x'}, []byte{0x30, 12, 0, 8, 's', 'e', 'c', 'r', 'e', 't', '/', '#', 0, 'x'})},
	{name: "SUBSCRIBE without filters", ref: "MQTT-3.8.3-2", code: codec.ProtocolError,
		bytes: per([]byte{0x82, 2, 0, 1}, []byte{0x82, 3, 0, 1, 0})},
	{name: "UNSUBSCRIBE without filters", ref: "MQTT-3.10.3-2", code: codec.ProtocolError,
		bytes: per([]byte{0xA2, 2, 0, 1}, []byte{0xA2, 3, 0, 1, 0})},
	{name: "CONNACK from a client", ref: "MQTT-2.1.2", code: codec.ProtocolError, bytes: all([]byte{0x20, 2, 0, 0})},
	{name: "SUBACK from a client", ref: "MQTT-2.1.2", code: codec.ProtocolError, bytes: all([]byte{0x90, 3, 0, 1, 0})},
	{name: "UNSUBACK from a client", ref: "MQTT-2.1.2", code: codec.ProtocolError, bytes: per([]byte{0xB0, 2, 0, 1}, []byte{0xB0, 4, 0, 1, 0, 0})},
	{name: "PINGRESP from a client", ref: "MQTT-2.1.2", code: codec.ProtocolError, bytes: all([]byte{0xD0, 0})},
	{name: "a second CONNECT", ref: "MQTT-3.1.0-2", code: codec.ProtocolError,
		bytes: func(v codec.Version) []byte { return mustConnect(v, "again") }},
	{name: "a property twice", ref: "MQTT-2.2.2-2 (5.0 section 2.2.2.2)", code: codec.ProtocolError,
		bytes: v5only([]byte{0x30, 16, 0, 8, 's', 'e', 'c', 'r', 'e', 't', '/', 'a', 4, 0x01, 0x01, 0x01, 0x01, 'x'})},
	{name: "a property not allowed on PUBLISH (Session Expiry Interval)", ref: "MQTT 5.0 section 2.2.2.2", code: codec.MalformedPacket,
		bytes: v5only([]byte{0x30, 17, 0, 8, 's', 'e', 'c', 'r', 'e', 't', '/', 'a', 5, 0x11, 0, 0, 0, 1, 'x'})},
	{name: "an unknown property", ref: "MQTT 5.0 section 2.2.2.2", code: codec.MalformedPacket,
		bytes: v5only([]byte{0x30, 14, 0, 8, 's', 'e', 'c', 'r', 'e', 't', '/', 'a', 2, 0x7F, 0, 'x'})},
	{name: "a topic that is not UTF-8", ref: "MQTT-1.5.4-1", code: codec.MalformedPacket,
		bytes: per([]byte{0x30, 11, 0, 8, 's', 'e', 'c', 'r', 'e', 't', '/', 0xC0, 'x'}, []byte{0x30, 12, 0, 8, 's', 'e', 'c', 'r', 'e', 't', '/', 0xC0, 0, 'x'})},
	{name: "a topic with U+0000", ref: "MQTT-1.5.4-2", code: codec.MalformedPacket,
		bytes: per([]byte{0x30, 11, 0, 8, 's', 'e', 'c', 'r', 'e', 't', '/', 0x00, 'x'}, []byte{0x30, 12, 0, 8, 's', 'e', 'c', 'r', 'e', 't', '/', 0x00, 0, 'x'})},

	// At CONNECT.
	{name: "PUBLISH before CONNECT", ref: "MQTT-3.1.0-1", atConnect: true,
		bytes: all([]byte{0x30, 10, 0, 8, 's', 'e', 'c', 'r', 'e', 't', '/', 'a'})},
	{name: "protocol name MQIsdp with level 4", ref: "MQTT-3.1.2-1, MQTT-3.1.2-2", atConnect: true, code: codec.UnsupportedProtocolVersion,
		bytes: all([]byte{0x10, 14, 0, 6, 'M', 'Q', 'I', 's', 'd', 'p', 4, 2, 0, 30, 0, 0})},
	{name: "protocol name MQTT with level 3", ref: "MQTT-3.1.2-2", atConnect: true, code: codec.UnsupportedProtocolVersion,
		bytes: all([]byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 3, 2, 0, 30, 0, 0})},
	{name: "will flag without a will", ref: "MQTT-3.1.2-9", atConnect: true, code: codec.MalformedPacket,
		bytes: per([]byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x06, 0, 30, 0, 0}, []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x06, 0, 30, 0, 0, 0})},
	{name: "username flag without a username", ref: "MQTT-3.1.2-17", atConnect: true, code: codec.MalformedPacket,
		bytes: per([]byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x82, 0, 30, 0, 0}, []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x82, 0, 30, 0, 0, 0})},
	{name: "reserved CONNECT flag set", ref: "MQTT-3.1.2-3", atConnect: true, code: codec.MalformedPacket,
		bytes: per([]byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x03, 0, 30, 0, 0}, []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x03, 0, 30, 0, 0, 0})},
	{name: "will QoS 3", ref: "MQTT-3.1.2-12", atConnect: true, code: codec.MalformedPacket,
		bytes: per([]byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x1E, 0, 30, 0, 0}, []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x1E, 0, 30, 0, 0, 0})},
}

// connectLevel is the protocol level a raw CONNECT asks for: V5 for 5,
// otherwise V311 (whose CONNACK 3.1 shares).
func connectLevel(b []byte) codec.Version {
	if len(b) > 4 && b[0] == 0x10 {
		if i := 4 + int(b[3]); i < len(b) && b[i] == 5 {
			return codec.V5
		}
	}
	return codec.V311
}

func mustConnect(v codec.Version, id string) []byte {
	b, err := (&codec.Connect{Version: v, ClientID: id, CleanStart: true, KeepAlive: 30}).Append(nil, v)
	if err != nil {
		panic(err)
	}
	return b
}

func TestMalformed(t *testing.T) {
	tg := newTarget(t, nil)
	for _, mc := range malformedCases {
		for _, v := range versions {
			b := mc.bytes(v)
			if b == nil {
				continue
			}
			dv := v // the version moat answers in
			if mc.atConnect {
				if string(b) == string(mc.bytes(codec.V5)) && string(b) == string(mc.bytes(codec.V311)) && v != codec.V311 {
					continue // the same bytes for every version: once is enough
				}
				dv = connectLevel(b)
			}
			name := mc.name + " (" + v.String() + ")"
			t.Run(name, func(t *testing.T) {
				count("malformed")
				c := mqtttest.DialRaw(t, tg.addr, nil)
				if !mc.atConnect {
					c.Connect(v, "attacker", 30)
				}
				c.V = dv
				c.Send(b)
				got := c.ExpectClosed(5 * time.Second)
				if dv == codec.V5 && mc.code != 0 {
					checkCode(t, got, mc.atConnect, mc.code)
				}
				if dv != codec.V5 {
					for _, p := range got {
						if p.Type() == codec.DISCONNECT {
							t.Fatalf("a %s client got DISCONNECT", v)
						}
					}
				}
				tg.clean(t, name)
			})
		}
	}
}

// checkCode finds the refusal (CONNACK at connect, else DISCONNECT) and
// compares its reason code.
func checkCode(t *testing.T, got []codec.Packet, atConnect bool, want codec.ReasonCode) {
	t.Helper()
	for _, p := range got {
		switch p := p.(type) {
		case *codec.Connack:
			if atConnect {
				if codec.ReasonCode(p.ReasonCode) != want {
					t.Fatalf("CONNACK 0x%02X, want %s", p.ReasonCode, want)
				}
				return
			}
		case *codec.Disconnect:
			if !atConnect {
				if p.ReasonCode != want {
					t.Fatalf("DISCONNECT %s (%s), want %s", p.ReasonCode, p.Properties.ReasonString, want)
				}
				return
			}
		}
	}
	t.Fatalf("closed without saying %s (saw %d packets)", want, len(got))
}
