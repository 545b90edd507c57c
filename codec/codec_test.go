package codec

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

func readFrame(t testing.TB, raw []byte, max int) (Frame, error) {
	t.Helper()
	r := NewReader(bytes.NewReader(raw), max)
	return r.ReadPacket()
}

// decodeAny decodes raw as a packet of protocol version v.
func decodeAny(t testing.TB, raw []byte, v Version) (Packet, error) {
	t.Helper()
	f, err := readFrame(t, raw, 0)
	if err != nil {
		return nil, err
	}
	if f.Type == CONNECT {
		c, err := DecodeConnect(f)
		if c == nil {
			return nil, err
		}
		return c, err
	}
	return Decode(f, v)
}

// normalize turns empty slices into nil so decoded views compare equal to
// fixtures written with nil.
func normalize(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			normalize(v.Elem())
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Field(i).CanSet() {
				normalize(v.Field(i))
			}
		}
	case reflect.Slice:
		if v.Len() == 0 && v.CanSet() {
			v.Set(reflect.Zero(v.Type()))
			return
		}
		for i := 0; i < v.Len(); i++ {
			normalize(v.Index(i))
		}
	}
}

func TestFixturesDecode(t *testing.T) {
	for _, fx := range fixtures {
		t.Run(fx.name, func(t *testing.T) {
			got, err := decodeAny(t, fx.raw, fx.v)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			normalize(reflect.ValueOf(got))
			want := fx.pkt
			normalize(reflect.ValueOf(want))
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decode mismatch\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestFixturesEncode(t *testing.T) {
	for _, fx := range fixtures {
		t.Run(fx.name, func(t *testing.T) {
			got, err := fx.pkt.Append([]byte("prefix"), fx.v)
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			if !bytes.HasPrefix(got, []byte("prefix")) {
				t.Fatalf("encode clobbered the destination prefix: % x", got)
			}
			if got := got[len("prefix"):]; !bytes.Equal(got, fx.raw) {
				t.Fatalf("encode mismatch\n got % x\nwant % x", got, fx.raw)
			}
		})
	}
}

func TestFrameKeepsOriginalBytes(t *testing.T) {
	for _, fx := range fixtures {
		f, err := readFrame(t, fx.raw, 0)
		if err != nil {
			t.Fatalf("%s: %v", fx.name, err)
		}
		if !bytes.Equal(f.Bytes, fx.raw) {
			t.Fatalf("%s: frame bytes % x, want % x", fx.name, f.Bytes, fx.raw)
		}
	}
}

type badCase struct {
	name   string
	v      Version
	raw    []byte
	code   ReasonCode
	clause string // substring of the error, when worth pinning
}

var badCases = []badCase{
	// Fixed header and remaining length.
	{"reserved packet type 0", V311, []byte{0x00, 0}, MalformedPacket, "MQTT-2.1.2"},
	{"five byte remaining length", V311, []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}, MalformedPacket, "four bytes"},
	{"non-minimal remaining length", V311, []byte{0xC0, 0x80, 0x00}, MalformedPacket, "MQTT-1.5.5-1"},
	{"publish qos 3", V311, []byte{0x36, 3, 0, 1, 'a'}, MalformedPacket, "MQTT-3.3.1-4"},
	{"publish dup on qos 0", V311, []byte{0x38, 3, 0, 1, 'a'}, MalformedPacket, "MQTT-3.3.1-2"},
	{"pubrel flags 0000", V311, []byte{0x60, 2, 0, 1}, MalformedPacket, "MQTT-2.1.3-1"},
	{"subscribe flags 0000", V311, []byte{0x80, 6, 0, 1, 0, 1, 'a', 0}, MalformedPacket, "MQTT-2.1.3-1"},
	{"pingreq flags set", V311, []byte{0xC1, 0}, MalformedPacket, "MQTT-2.1.3-1"},
	{"pingreq with body", V311, []byte{0xC0, 1, 0}, MalformedPacket, ""},

	// CONNECT.
	{"connect unknown protocol", V311, []byte{0x10, 10, 0, 4, 'H', 'T', 'T', 'P', 4, 2, 0, 0, 0, 0}, UnsupportedProtocolVersion, ""},
	{"connect MQIsdp with level 4", V311, []byte{0x10, 14, 0, 6, 'M', 'Q', 'I', 's', 'd', 'p', 4, 2, 0, 0, 0, 1, 'c'}, UnsupportedProtocolVersion, ""},
	{"connect MQTT with level 3", V311, []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 3, 2, 0, 0, 0, 1, 'c'}, UnsupportedProtocolVersion, ""},
	{"connect level 6", V311, []byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 6, 2, 0, 0, 0, 0}, UnsupportedProtocolVersion, ""},
	{"connect reserved flag", V311, []byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 3, 0, 0, 0, 0}, MalformedPacket, "MQTT-3.1.2-3"},
	{"connect will qos without will", V311, []byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x0A, 0, 0, 0, 0}, MalformedPacket, "MQTT-3.1.2-11"},
	{"connect will retain without will", V311, []byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x22, 0, 0, 0, 0}, MalformedPacket, "MQTT-3.1.2-11"},
	{"connect will qos 3", V311, []byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x1E, 0, 0, 0, 0}, MalformedPacket, "MQTT-3.1.2-12"},
	{"connect 3.1.1 password without user", V311, []byte{0x10, 16, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x42, 0, 0, 0, 0, 0, 2, 'p', 'w'}, MalformedPacket, "MQTT-3.1.2-22"},
	{"connect 3.1.1 empty id without clean session", V311, []byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0, 0, 0, 0, 0}, ClientIdentifierNotValid, "MQTT-3.1.3-8"},
	{"connect 3.1 empty id", V31, []byte{0x10, 14, 0, 6, 'M', 'Q', 'I', 's', 'd', 'p', 3, 2, 0, 0, 0, 0}, ClientIdentifierNotValid, ""},
	{"connect will flag without will fields", V311, []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x06, 0, 0, 0, 1, 'c'}, MalformedPacket, ""},
	{"connect user flag without user", V311, []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x82, 0, 0, 0, 1, 'c'}, MalformedPacket, ""},
	{"connect wildcard will topic", V311, []byte{0x10, 18, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x06, 0, 0, 0, 1, 'c', 0, 1, '#', 0, 0}, TopicNameInvalid, "MQTT-3.3.2-2"},
	{"connect trailing bytes", V311, []byte{0x10, 14, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 0, 0, 1, 'c', 'x'}, MalformedPacket, "unexpected bytes"},
	{"connect client id U+0000", V311, []byte{0x10, 14, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 0, 0, 2, 'a', 0}, MalformedPacket, "MQTT-1.5.4-2"},
	{"connect 5 property length overrun", V5, []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 0, 9, 0, 0}, MalformedPacket, "property length"},
	{"connect 5 duplicate session expiry", V5, []byte{0x10, 23, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 0, 10,
		0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2, 0, 0}, ProtocolError, "more than once"},
	{"connect 5 topic alias property", V5, []byte{0x10, 16, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 0, 3, 0x23, 0, 1, 0, 0}, MalformedPacket, "not allowed on CONNECT"},
	{"connect 5 unknown property", V5, []byte{0x10, 14, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 0, 1, 0x7f, 0, 0}, MalformedPacket, "unknown property"},
	{"connect 5 receive maximum 0", V5, []byte{0x10, 16, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 0, 3, 0x21, 0, 0, 0, 0}, ProtocolError, ""},
	{"connect 5 request problem info 2", V5, []byte{0x10, 15, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 0, 2, 0x17, 2, 0, 0}, ProtocolError, ""},
	{"connect 5 auth data without method", V5, []byte{0x10, 16, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 0, 3, 0x16, 0, 0, 0, 0}, ProtocolError, ""},
	{"connect 5 session expiry in will properties", V5, []byte{0x10, 25, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x06, 0, 0, 0, 0, 1, 'c',
		5, 0x11, 0, 0, 0, 1, 0, 1, 't', 0, 0}, MalformedPacket, "not allowed on will properties"},

	// PUBLISH.
	{"publish empty topic 3.1.1", V311, []byte{0x30, 2, 0, 0}, TopicNameInvalid, "MQTT-4.7.3-1"},
	{"publish empty topic 5 without alias", V5, []byte{0x30, 3, 0, 0, 0}, TopicNameInvalid, "MQTT-4.7.3-1"},
	{"publish wildcard #", V311, []byte{0x30, 5, 0, 3, 'a', '/', '#'}, TopicNameInvalid, "MQTT-3.3.2-2"},
	{"publish wildcard +", V311, []byte{0x30, 5, 0, 3, 'a', '/', '+'}, TopicNameInvalid, "MQTT-3.3.2-2"},
	{"publish topic U+0000", V311, []byte{0x30, 4, 0, 2, 'a', 0}, MalformedPacket, "MQTT-1.5.4-2"},
	{"publish topic invalid UTF-8", V311, []byte{0x30, 4, 0, 2, 0xC3, 0x28}, MalformedPacket, "MQTT-1.5.4-1"},
	{"publish topic surrogate", V311, []byte{0x30, 5, 0, 3, 0xED, 0xA0, 0x80}, MalformedPacket, "MQTT-1.5.4-1"},
	{"publish topic overlong", V311, []byte{0x30, 4, 0, 2, 0xC0, 0xAF}, MalformedPacket, "MQTT-1.5.4-1"},
	{"publish topic length overrun", V311, []byte{0x30, 3, 0, 9, 'a'}, MalformedPacket, "declares 9 bytes"},
	{"publish qos 1 packet id 0", V311, []byte{0x32, 5, 0, 1, 'a', 0, 0}, MalformedPacket, "MQTT-2.2.1-3"},
	{"publish qos 1 truncated packet id", V311, []byte{0x32, 4, 0, 1, 'a', 0}, MalformedPacket, ""},
	{"publish 5 topic alias 0", V5, []byte{0x30, 7, 0, 1, 'a', 3, 0x23, 0, 0}, TopicAliasInvalid, "MQTT-3.3.2-8"},
	{"publish 5 duplicate topic alias", V5, []byte{0x30, 10, 0, 1, 'a', 6, 0x23, 0, 1, 0x23, 0, 2}, ProtocolError, "more than once"},
	{"publish 5 payload format 2", V5, []byte{0x30, 6, 0, 1, 'a', 2, 0x01, 2}, ProtocolError, ""},
	{"publish 5 session expiry property", V5, []byte{0x30, 9, 0, 1, 'a', 5, 0x11, 0, 0, 0, 1}, MalformedPacket, "not allowed on PUBLISH"},
	{"publish 5 five byte property length", V5, []byte{0x30, 8, 0, 1, 'a', 0x80, 0x80, 0x80, 0x80, 0x01}, MalformedPacket, "four bytes"},
	{"publish 5 response topic wildcard", V5, []byte{0x30, 8, 0, 1, 'a', 4, 0x08, 0, 1, '#'}, TopicNameInvalid, ""},
	{"publish 5 subscription id 0", V5, []byte{0x30, 6, 0, 1, 'a', 2, 0x0B, 0}, ProtocolError, ""},

	// Acks.
	{"puback packet id 0", V311, []byte{0x40, 2, 0, 0}, MalformedPacket, "MQTT-2.2.1-3"},
	{"puback 3.1.1 trailing byte", V311, []byte{0x40, 3, 0, 1, 0}, MalformedPacket, "trailing"},
	{"puback short", V311, []byte{0x40, 1, 0}, MalformedPacket, ""},
	{"puback 5 invalid reason", V5, []byte{0x40, 3, 0, 1, 0x92}, ProtocolError, ""},
	{"pubrel 5 invalid reason", V5, []byte{0x62, 3, 0, 1, 0x87}, ProtocolError, ""},

	// SUBSCRIBE / UNSUBSCRIBE.
	{"subscribe no filters", V311, []byte{0x82, 2, 0, 1}, ProtocolError, "MQTT-3.8.3-3"},
	{"subscribe 5 no filters", V5, []byte{0x82, 3, 0, 1, 0}, ProtocolError, "MQTT-3.8.3-3"},
	{"subscribe packet id 0", V311, []byte{0x82, 6, 0, 0, 0, 1, 'a', 0}, MalformedPacket, "MQTT-2.2.1-3"},
	{"subscribe qos 3", V311, []byte{0x82, 6, 0, 1, 0, 1, 'a', 3}, MalformedPacket, "QoS 3"},
	{"subscribe 3.1.1 reserved option bits", V311, []byte{0x82, 6, 0, 1, 0, 1, 'a', 0x04}, MalformedPacket, "reserved"},
	{"subscribe 5 reserved option bits", V5, []byte{0x82, 7, 0, 1, 0, 0, 1, 'a', 0x40}, MalformedPacket, "MQTT-3.8.3-5"},
	{"subscribe 5 retain handling 3", V5, []byte{0x82, 7, 0, 1, 0, 0, 1, 'a', 0x30}, ProtocolError, ""},
	{"subscribe missing options byte", V311, []byte{0x82, 5, 0, 1, 0, 1, 'a'}, MalformedPacket, ""},
	{"subscribe empty filter", V311, []byte{0x82, 5, 0, 1, 0, 0, 0}, TopicFilterInvalid, "MQTT-4.7.3-1"},
	{"subscribe # not last", V311, []byte{0x82, 8, 0, 1, 0, 3, '#', '/', 'a', 0}, TopicFilterInvalid, "MQTT-4.7.1-1"},
	{"subscribe # not whole level", V311, []byte{0x82, 7, 0, 1, 0, 2, 'a', '#', 0}, TopicFilterInvalid, "MQTT-4.7.1-1"},
	{"subscribe + not whole level", V311, []byte{0x82, 7, 0, 1, 0, 2, 'a', '+', 0}, TopicFilterInvalid, "MQTT-4.7.1-2"},
	{"subscribe share without filter", V311, []byte{0x82, 13, 0, 1, 0, 8, '$', 's', 'h', 'a', 'r', 'e', '/', 'g', 0}, TopicFilterInvalid, "MQTT-4.8.2-1"},
	{"subscribe share empty group", V311, []byte{0x82, 14, 0, 1, 0, 9, '$', 's', 'h', 'a', 'r', 'e', '/', '/', 'a', 0}, TopicFilterInvalid, "MQTT-4.8.2-2"},
	{"subscribe share wildcard group", V311, []byte{0x82, 15, 0, 1, 0, 10, '$', 's', 'h', 'a', 'r', 'e', '/', '+', '/', 'a', 0}, TopicFilterInvalid, "MQTT-4.8.2-2"},
	{"subscribe 5 no local on shared", V5, []byte{0x82, 16, 0, 1, 0, 0, 10, '$', 's', 'h', 'a', 'r', 'e', '/', 'g', '/', 'a', 0x04}, ProtocolError, "No Local"},
	{"subscribe 5 two subscription ids", V5, []byte{0x82, 11, 0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, 'a', 0}, ProtocolError, "more than once"},
	{"unsubscribe no filters", V311, []byte{0xA2, 2, 0, 1}, ProtocolError, "MQTT-3.10.3-2"},
	{"unsubscribe invalid filter", V311, []byte{0xA2, 6, 0, 1, 0, 2, '#', '#'}, TopicFilterInvalid, ""},

	// Server packets.
	{"connack reserved flags", V311, []byte{0x20, 2, 0x02, 0}, MalformedPacket, "MQTT-3.2.2-1"},
	{"connack return code 6", V311, []byte{0x20, 2, 0, 6}, MalformedPacket, ""},
	{"connack session present on refusal", V311, []byte{0x20, 2, 1, 5}, ProtocolError, "MQTT-3.2.2-6"},
	{"connack 5 invalid reason", V5, []byte{0x20, 3, 0, 0x01, 0}, ProtocolError, ""},
	{"suback no codes", V311, []byte{0x90, 2, 0, 1}, ProtocolError, ""},
	{"suback 3.1.1 code 0x87", V311, []byte{0x90, 3, 0, 1, 0x87}, ProtocolError, ""},
	{"unsuback 5 no codes", V5, []byte{0xB0, 3, 0, 1, 0}, ProtocolError, ""},

	// DISCONNECT / AUTH.
	{"disconnect 3.1.1 with body", V311, []byte{0xE0, 1, 0}, MalformedPacket, "trailing"},
	{"disconnect 5 invalid reason", V5, []byte{0xE0, 1, 0x01}, ProtocolError, ""},
	{"auth in 3.1.1", V311, []byte{0xF0, 0}, MalformedPacket, "MQTT 5"},
	{"auth without method", V5, []byte{0xF0, 0}, ProtocolError, "MQTT-3.15.2.2.2"},
	{"auth invalid reason", V5, []byte{0xF0, 2, 0x05, 0}, ProtocolError, ""},
	{"second connect", V311, []byte{0x10, 0}, ProtocolError, ""},
}

func TestMalformed(t *testing.T) {
	for _, bc := range badCases {
		t.Run(bc.name, func(t *testing.T) {
			var err error
			if bc.name == "second connect" {
				_, err = Decode(Frame{Type: CONNECT, Bytes: bc.raw, Body: bc.raw[2:]}, bc.v)
			} else {
				_, err = decodeAny(t, bc.raw, bc.v)
			}
			if err == nil {
				t.Fatalf("decoded % x without error", bc.raw)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is not a *codec.Error", err)
			}
			if ce.Code != bc.code {
				t.Fatalf("code %s, want %s (%v)", ce.Code, bc.code, err)
			}
			if bc.clause != "" && !strings.Contains(err.Error(), bc.clause) {
				t.Fatalf("error %q does not mention %q", err, bc.clause)
			}
		})
	}
}

func TestReaderLimit(t *testing.T) {
	// PUBLISH declaring 200 MB: refused from the header alone.
	raw := []byte{0x30, 0x80, 0x80, 0xe8, 0x5f}
	r := NewReader(bytes.NewReader(raw), 1<<20)
	if _, err := r.ReadPacket(); ReasonOf(err) != PacketTooLarge {
		t.Fatalf("err %v, want packet too large", err)
	}
	if r.big != nil || cap(r.buf) > PoolBufSize {
		t.Fatalf("reader allocated for a refused packet: buf %d, big %d", cap(r.buf), cap(r.big))
	}
	// Exactly at the limit is fine; one over is not.
	pkt, _ := (&Publish{Topic: []byte("t"), Payload: make([]byte, 100)}).Append(nil, V311)
	if _, err := readFrame(t, pkt, len(pkt)); err != nil {
		t.Fatalf("packet at the limit: %v", err)
	}
	if _, err := readFrame(t, pkt, len(pkt)-1); ReasonOf(err) != PacketTooLarge {
		t.Fatalf("packet one over the limit: %v", err)
	}
}

func TestReaderGrowsWithData(t *testing.T) {
	// Declares 10 MB, sends 100 KB, then the stream ends: the buffer must
	// track what arrived, not what was declared.
	hdr := appendVarint([]byte{0x30}, 10<<20)
	raw := append(hdr, make([]byte, 100<<10)...)
	r := NewReader(bytes.NewReader(raw), 16<<20)
	_, err := r.ReadPacket()
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err %v, want unexpected EOF", err)
	}
	if cap(r.big) > 1<<20 {
		t.Fatalf("buffer capacity %d after 100 KB of a 10 MB declaration", cap(r.big))
	}
}

func TestReaderLargePacket(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789"), 30000)
	pkt, err := (&Publish{QoS: 1, PacketID: 5, Topic: []byte("big"), Payload: payload}).Append(nil, V5)
	if err != nil {
		t.Fatal(err)
	}
	// Two packets back to back: the large one, then a small one.
	small := []byte{0xC0, 0}
	r := NewReader(bytes.NewReader(append(pkt, small...)), 1<<20)
	f, err := r.ReadPacket()
	if err != nil {
		t.Fatal(err)
	}
	var p Publish
	if err := DecodePublish(&p, f, V5); err != nil || !bytes.Equal(p.Payload, payload) || !bytes.Equal(f.Bytes, pkt) {
		t.Fatalf("large packet not read intact: %v", err)
	}
	f, err = r.ReadPacket()
	if err != nil || f.Type != PINGREQ {
		t.Fatalf("after large packet: %v %v", f.Type, err)
	}
}

func TestReaderTruncated(t *testing.T) {
	for _, raw := range [][]byte{{0x30}, {0x30, 0x80}, {0x30, 5, 0, 1}} {
		_, err := readFrame(t, raw, 0)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("% x: err %v, want unexpected EOF", raw, err)
		}
	}
	if _, err := readFrame(t, nil, 0); err != io.EOF {
		t.Fatalf("empty stream: %v, want EOF", err)
	}
}

func TestUTF8(t *testing.T) {
	cases := []struct {
		s  string
		ok bool
	}{
		{"plant1/zone3/temp", true},
		{"\uFEFFbom", true},   // U+FEFF is kept [MQTT-1.5.4-3]
		{"température", true}, // two byte sequences
		{"\U0001F600", true},
		{"a\x00b", false},
		{"\xed\xa0\x80", false}, // surrogate U+D800
		{"\xc0\xaf", false},     // overlong '/'
		{"\xe0\x80\xaf", false}, // overlong '/'
		{"\xff", false},
		{"\xc3", false}, // truncated
	}
	for _, c := range cases {
		if got := ValidUTF8([]byte(c.s)); got != c.ok {
			t.Errorf("ValidUTF8(%q) = %v, want %v", c.s, got, c.ok)
		}
	}
}

func TestFilters(t *testing.T) {
	good := []string{"#", "+", "a/#", "a/+/b", "+/+", "/", "a//b", "$SYS/#", "$share/g/a/#", "$share/g/+", "+/#"}
	bad := []string{"", "a#", "#/a", "a/#/b", "a+", "+a/b", "a/b+", "$share/g", "$share//a", "$share/g+/a", "$share/#/a"}
	for _, f := range good {
		if err := ValidFilter(f); err != nil {
			t.Errorf("ValidFilter(%q) = %v, want ok", f, err)
		}
	}
	for _, f := range bad {
		if err := ValidFilter(f); err == nil {
			t.Errorf("ValidFilter(%q) accepted", f)
		}
	}
	g, f, ok := SplitShared("$share/grp/a/b/#")
	if !ok || g != "grp" || f != "a/b/#" {
		t.Fatalf("SplitShared = %q %q %v", g, f, ok)
	}
}

func TestVarint(t *testing.T) {
	for _, v := range []int{0, 1, 127, 128, 16383, 16384, 2097151, 2097152, MaxRemainingLength} {
		b := appendVarint(nil, v)
		if len(b) != varintLen(v) {
			t.Fatalf("varintLen(%d) = %d, encoded %d bytes", v, varintLen(v), len(b))
		}
		got, n, err := parseVarint(b)
		if err != nil || int(got) != v || n != len(b) {
			t.Fatalf("round trip %d: got %d n=%d err=%v", v, got, n, err)
		}
	}
}

func TestDecodePublishNoAlloc(t *testing.T) {
	var raw []byte
	for _, fx := range fixtures {
		if strings.HasPrefix(fx.name, "publish 5 qos 2") {
			raw = fx.raw
		}
	}
	var p Publish
	r := NewReader(bytes.NewReader(raw), 0)
	f, _ := r.ReadPacket()
	if err := DecodePublish(&p, f, V5); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if err := DecodePublish(&p, f, V5); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("DecodePublish allocates %v times per packet", allocs)
	}
}

func TestPropertyTable(t *testing.T) {
	if !AllowedOn(PropWillDelay, CONNECT, true) || AllowedOn(PropWillDelay, CONNECT, false) {
		t.Fatal("Will Delay Interval is a will property only")
	}
	if !AllowedOn(PropTopicAlias, PUBLISH, false) || AllowedOn(PropTopicAlias, CONNECT, false) {
		t.Fatal("Topic Alias belongs to PUBLISH")
	}
	if !AllowedOn(PropUser, AUTH, false) || AllowedOn(0x7f, PUBLISH, false) {
		t.Fatal("user properties are everywhere, unknown ids nowhere")
	}
	// Encoding a property where it is not allowed is refused.
	p := &Publish{Topic: []byte("t")}
	p.Properties.Set(PropSessionExpiry)
	if _, err := p.Append(nil, V5); err == nil {
		t.Fatal("encoded Session Expiry on PUBLISH")
	}
}

func TestPacketTypeDirections(t *testing.T) {
	for _, tt := range []PacketType{CONNACK, SUBACK, UNSUBACK, PINGRESP} {
		if tt.FromClient() {
			t.Errorf("%s accepted from a client", tt)
		}
	}
	for _, tt := range []PacketType{CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ} {
		if tt.FromServer() {
			t.Errorf("%s accepted from a server", tt)
		}
	}
}

// TestReaderChunking reads every fixture back to back through a source
// that returns one byte per Read, then through one that returns them all
// at once: the frames must be the same.
func TestReaderChunking(t *testing.T) {
	var stream []byte
	for _, fx := range fixtures {
		stream = append(stream, fx.raw...)
	}
	// A 20 KiB packet (bigger than the pooled buffer) in the middle.
	big, _ := (&Publish{Topic: []byte("big"), Payload: bytes.Repeat([]byte{7}, 20<<10)}).Append(nil, V311)
	stream = append(append(append([]byte{}, stream...), big...), fixtures[0].raw...)
	want := append(append([][]byte{}, rawList()...), big, fixtures[0].raw)
	for name, src := range map[string]io.Reader{
		"one byte": iotest.OneByteReader(bytes.NewReader(stream)),
		"half":     iotest.HalfReader(bytes.NewReader(stream)),
		"all":      bytes.NewReader(stream),
		"data+EOF": iotest.DataErrReader(bytes.NewReader(stream)),
	} {
		r := NewReader(src, 0)
		for i, w := range want {
			f, err := r.ReadPacket()
			if err != nil {
				t.Fatalf("%s: packet %d: %v", name, i, err)
			}
			if !bytes.Equal(f.Bytes, w) {
				t.Fatalf("%s: packet %d is % x, want % x", name, i, f.Bytes, w)
			}
		}
		if _, err := r.ReadPacket(); err != io.EOF {
			t.Fatalf("%s: after the last packet: %v, want EOF", name, err)
		}
		if r.buf != nil || r.big != nil {
			t.Fatalf("%s: idle reader still holds buffers (%d, %d bytes)", name, cap(r.buf), cap(r.big))
		}
	}
}

// TestReaderShortReadsUnpooled: packets that arrive whole in one short
// read (acks, CONNACK, DISCONNECT) are framed from the inline array
// without a pooled buffer; a read that fills the array moves to one.
func TestReaderShortReadsUnpooled(t *testing.T) {
	puback := []byte{0x40, 0x02, 0x00, 0x07}
	pr, pw := io.Pipe()
	r := NewReader(pr, 0)
	go func() {
		pw.Write(append(append([]byte{}, puback...), puback...)) // two in one read
		pw.Write(bytes.Repeat(puback, 40))                       // a burst: 160 bytes
		pw.Close()
	}()
	for i := 0; i < 2; i++ {
		f, err := r.ReadPacket()
		if err != nil || !bytes.Equal(f.Bytes, puback) {
			t.Fatalf("packet %d: % x, %v", i, f.Bytes, err)
		}
		if r.bufp != nil {
			t.Fatalf("packet %d of a short read took a pooled buffer", i)
		}
	}
	for i := 0; i < 40; i++ {
		f, err := r.ReadPacket()
		if err != nil || !bytes.Equal(f.Bytes, puback) {
			t.Fatalf("burst packet %d: % x, %v", i, f.Bytes, err)
		}
		if i == 0 && r.bufp == nil {
			t.Fatal("a read that filled the inline array did not move to a pooled buffer")
		}
	}
	if _, err := r.ReadPacket(); err != io.EOF {
		t.Fatalf("after the burst: %v, want EOF", err)
	}
}

func rawList() [][]byte {
	var out [][]byte
	for _, fx := range fixtures {
		out = append(out, fx.raw)
	}
	return out
}

// The encoder refuses a reason code DISCONNECT may not carry.
func TestDisconnectEncodeRefusesInvalidCode(t *testing.T) {
	if _, err := (&Disconnect{ReasonCode: Banned}).Append(nil, V5); err == nil {
		t.Fatal("DISCONNECT 0x8A encoded")
	}
	if _, err := (&Disconnect{ReasonCode: AdministrativeAction}).Append(nil, V5); err != nil {
		t.Fatal(err)
	}
	// 0x96 exists for DISCONNECT, not for PUBACK.
	if _, err := (&Ack{PacketType: PUBACK, PacketID: 1, ReasonCode: MessageRateTooHigh}).Append(nil, V5); err == nil {
		t.Fatal("PUBACK 0x96 encoded")
	}
	if _, err := (&Ack{PacketType: PUBACK, PacketID: 1, ReasonCode: QuotaExceeded}).Append(nil, V5); err != nil {
		t.Fatal(err)
	}
}
