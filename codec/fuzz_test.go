package codec

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
	"testing/iotest"
)

func addSeeds(f *testing.F) {
	for _, fx := range fixtures {
		f.Add(byte(fx.v), fx.raw)
	}
	for _, bc := range badCases {
		f.Add(byte(bc.v), bc.raw)
	}
}

// roundTrip checks that a packet that decoded cleanly encodes to bytes that
// decode to the same packet.
func roundTrip(t *testing.T, p Packet, v Version) {
	enc, err := p.Append(nil, v)
	if err != nil {
		t.Fatalf("decoded %T does not encode: %v", p, err)
	}
	f, err := NewReader(bytes.NewReader(enc), 0).ReadPacket()
	if err != nil {
		t.Fatalf("re-read of encoded %T: %v", p, err)
	}
	var q Packet
	if f.Type == CONNECT {
		q, err = DecodeConnect(f)
	} else {
		q, err = Decode(f, v)
	}
	if err != nil {
		t.Fatalf("re-decode of %T: %v\n% x", p, err, enc)
	}
	normalize(reflect.ValueOf(p))
	normalize(reflect.ValueOf(q))
	if !reflect.DeepEqual(p, q) {
		t.Fatalf("round trip changed the packet\n was %+v\n now %+v", p, q)
	}
}

// FuzzReader feeds a byte stream through the Reader and decodes every
// frame: nothing may panic, every error must carry a reason code, and what
// decodes must survive a round trip.
func FuzzReader(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, level byte, data []byte) {
		v := Version(level%3 + 3)
		r := NewReader(iotest.OneByteReader(bytes.NewReader(data)), 4096)
		r.SkipOversizePublish(level&4 != 0)
		for i := 0; i < 64; i++ {
			fr, err := r.ReadPacket()
			if err != nil {
				var ce *Error
				if errors.As(err, &ce) && ce.Code < 0x80 {
					t.Fatalf("error with a success code: %v", err)
				}
				return
			}
			if len(fr.Bytes) > 4096 {
				t.Fatalf("frame of %d bytes passed a 4096 byte limit", len(fr.Bytes))
			}
			if fr.Skipped > 0 {
				if fr.Type != PUBLISH || fr.Skipped <= 4096 || fr.Bytes != nil || level&4 == 0 || (fr.SkippedID == 0) != (fr.Flags&0x06 == 0) {
					t.Fatalf("skipped frame %+v", fr)
				}
				continue
			}
			var p Packet
			if fr.Type == CONNECT {
				c, err := DecodeConnect(fr)
				if err != nil {
					continue
				}
				p, v = c, c.Version
			} else if p, err = Decode(fr, v); err != nil {
				continue
			}
			roundTrip(t, p, v)
		}
	})
}

// FuzzConnect targets the CONNECT decoder with a well-formed frame header.
func FuzzConnect(f *testing.F) {
	for _, fx := range fixtures {
		if fx.raw[0]>>4 == byte(CONNECT) {
			f.Add(fx.raw[2:])
		}
	}
	for _, bc := range badCases {
		if bc.raw[0]>>4 == byte(CONNECT) && len(bc.raw) > 2 {
			f.Add(bc.raw[2:])
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := DecodeConnect(Frame{Type: CONNECT, Body: body})
		if err != nil {
			if c != nil && ReasonOf(err) != UnsupportedProtocolVersion && c.Version != V31 && c.Version != V311 && c.Version != V5 {
				t.Fatalf("unknown version %d returned with error %v", c.Version, err)
			}
			return
		}
		roundTrip(t, c, c.Version)
	})
}

// FuzzPublish targets the PUBLISH decoder, the forwarding hot path.
func FuzzPublish(f *testing.F) {
	for _, fx := range fixtures {
		if fx.raw[0]>>4 == byte(PUBLISH) {
			f.Add(byte(fx.v), fx.raw[0]&0x0f, fx.raw[2:])
		}
	}
	f.Fuzz(func(t *testing.T, level, flags byte, body []byte) {
		v := Version(level%3 + 3)
		var p Publish
		if err := DecodePublish(&p, Frame{Type: PUBLISH, Flags: flags & 0x0f, Body: body}, v); err != nil {
			return
		}
		if p.QoS > 0 && p.PacketID == 0 {
			t.Fatal("QoS > 0 with packet id 0 accepted")
		}
		if bytes.ContainsAny(p.Topic, "+#") {
			t.Fatalf("wildcard topic %q accepted", p.Topic)
		}
		if len(p.Topic) == 0 && (v != V5 || !p.Properties.Has(PropTopicAlias)) {
			t.Fatal("empty topic accepted without an alias")
		}
		if flags&0x08 != 0 && p.QoS == 0 {
			return // the reader rejects this header before DecodePublish sees it
		}
		roundTrip(t, &p, v)
	})
}

// FuzzDecode targets every other decoder by packet type.
func FuzzDecode(f *testing.F) {
	for _, fx := range fixtures {
		f.Add(byte(fx.v), fx.raw[0], fx.raw[2:])
	}
	for _, bc := range badCases {
		if len(bc.raw) >= 2 {
			f.Add(byte(bc.v), bc.raw[0], bc.raw[2:])
		}
	}
	f.Fuzz(func(t *testing.T, level, first byte, body []byte) {
		v := Version(level%3 + 3)
		fr := Frame{Type: PacketType(first >> 4), Flags: first & 0x0f, Body: body}
		p, err := Decode(fr, v)
		if err != nil {
			if p == nil && fr.Type != CONNECT && fr.Type != Reserved && ReasonOf(err) == UnspecifiedError {
				t.Fatalf("error without a reason code: %v", err)
			}
			return
		}
		roundTrip(t, p, v)
	})
}

// FuzzFilter checks the topic filter and topic name validators agree with
// the spec's shape rules.
func FuzzFilter(f *testing.F) {
	for _, s := range []string{"a/#", "+/b", "$share/g/a", "#", "a+", "\x00", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidFilter(s) == nil {
			if _, inner, shared := SplitShared(s); shared && inner == "" {
				t.Fatalf("shared filter %q without inner filter accepted", s)
			}
		}
		if ValidTopicName(s) == nil && (s == "" || bytes.ContainsAny([]byte(s), "+#")) {
			t.Fatalf("topic name %q accepted", s)
		}
	})
}

// FuzzProperties drives the property decoder directly for every packet
// type and for will properties: whatever it accepts is allowed on that
// packet, appears at most once unless the spec allows repeats, and encodes
// back to the same bytes' meaning.
func FuzzProperties(f *testing.F) {
	f.Add(byte(PUBLISH), []byte{16, 0x0B, 1, 0x0B, 0x80, 0x01, 0x23, 0, 3, 0x26, 0, 1, 'k', 0, 1, 'v'})
	f.Add(byte(CONNECT), []byte{8, 0x11, 0, 0, 0x0e, 0x10, 0x21, 0, 10})
	f.Add(byte(propWill), []byte{5, 0x18, 0, 0, 0, 5})
	f.Add(byte(CONNACK), []byte{6, 0x13, 0, 20, 0x22, 0, 10})
	f.Add(byte(AUTH), []byte{9, 0x15, 0, 6, 'S', 'C', 'R', 'A', 'M', '1'})
	f.Add(byte(DISCONNECT), []byte{5, 0x11, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, kind byte, data []byte) {
		pt := PacketType(kind % 17)
		var p Properties
		d := decoder{b: data}
		if err := decodeProps(&d, &p, pt); err != nil {
			if ReasonOf(err) < 0x80 {
				t.Fatalf("error without a failure code: %v", err)
			}
			return
		}
		for id := PropID(1); id <= maxPropID; id++ {
			if p.Has(id) && propTable[id].allowed&(1<<pt) == 0 {
				t.Fatalf("%s accepted on packet kind %d", id, pt)
			}
		}
		if len(p.SubscriptionIDs) > 1 && pt != PUBLISH {
			t.Fatalf("%d subscription identifiers on kind %d", len(p.SubscriptionIDs), pt)
		}
		enc := appendProps(nil, &p)
		var q Properties
		d = decoder{b: enc}
		if err := decodeProps(&d, &q, pt); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		normalize(reflect.ValueOf(&p))
		normalize(reflect.ValueOf(&q))
		if !reflect.DeepEqual(p, q) {
			t.Fatalf("round trip changed properties\n was %+v\n now %+v", p, q)
		}
	})
}

// chunkReader hands out data in reads of the sizes it cycles through, so
// the Reader sees short reads, reads that fill its inline array exactly and
// large ones.
// With pause set, every pause-th read fails with errPause instead (a read
// deadline passing), which the Reader must survive.
type chunkReader struct {
	data  []byte
	sizes []int
	i     int
	pause int
	reads int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	c.reads++
	if c.pause > 0 && c.reads%c.pause == 0 {
		return 0, errPause
	}
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(c.data), c.sizes[c.i%len(c.sizes)])
	c.i++
	n = copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// FuzzReaderChunking: how the stream is cut into reads must not change
// what is framed. A reader fed one byte at a time and one fed in chunks
// chosen by the input (around the inline array's size, and far above it)
// return the same frames and fail at the same packet, also when reads of
// the chunked one time out now and then (and it releases its buffers while
// it waits, as a pump does).
func FuzzReaderChunking(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, level byte, data []byte) {
		sizes := []int{int(level)%70 + 1, smallRead, smallRead - 1, int(level) * 67 % 20000, 3}
		for i := range sizes {
			sizes[i] = max(sizes[i], 1)
		}
		a := NewReader(iotest.OneByteReader(bytes.NewReader(data)), 4096)
		b := NewReader(&chunkReader{data: data, sizes: sizes, pause: []int{0, 2, 3, 5}[level>>3%4]}, 4096)
		a.SkipOversizePublish(level&4 != 0)
		b.SkipOversizePublish(level&4 != 0)
		for i := 0; i < 64; i++ {
			fa, ea := a.ReadPacket()
			fb, eb := b.ReadPacket()
			for errors.Is(eb, errPause) {
				if b.Buffered() == 0 {
					b.Release()
				}
				fb, eb = b.ReadPacket()
			}
			if (ea == nil) != (eb == nil) {
				t.Fatalf("packet %d: one-byte reads: %v; chunked reads %v: %v", i, ea, sizes, eb)
			}
			if ea != nil {
				return
			}
			if fa.Type != fb.Type || fa.Flags != fb.Flags || !bytes.Equal(fa.Bytes, fb.Bytes) || !bytes.Equal(fa.Body, fb.Body) ||
				fa.Skipped != fb.Skipped || fa.SkippedID != fb.SkippedID {
				t.Fatalf("packet %d differs: one-byte reads %+v, chunked reads %v %+v", i, fa, sizes, fb)
			}
		}
	})
}
