package codec

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

func oversizePublish(t *testing.T, qos byte, id uint16, topic string, payload int, v Version) []byte {
	t.Helper()
	p := &Publish{Topic: []byte(topic), QoS: qos, PacketID: id, Payload: bytes.Repeat([]byte("x"), payload)}
	b, err := p.Append(nil, v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSkipOversizePublish: with skipping on, a PUBLISH over the limit is
// read past (its identifier kept) and the stream goes on at the next
// packet, however the bytes arrive.
func TestSkipOversizePublish(t *testing.T) {
	ping := []byte{0xd0, 0}
	cases := []struct {
		name    string
		pkt     []byte
		wantID  uint16
		wantErr bool
	}{
		{"QoS 1, 10 KB", oversizePublish(t, 1, 7, "a/b", 10<<10, V311), 7, false},
		{"QoS 2, 40 KB (over the pooled buffer)", oversizePublish(t, 2, 65535, "plant/line", 40<<10, V311), 65535, false},
		{"QoS 0", oversizePublish(t, 0, 0, "a", 5000, V311), 0, false},
		{"v5 with properties", oversizePublish(t, 1, 9, "a/b", 3000, V5), 9, false},
		{"topic longer than the buffer", oversizePublish(t, 1, 3, string(bytes.Repeat([]byte("t"), 20<<10)), 10, V311), 3, false},
	}
	for _, c := range cases {
		for _, one := range []bool{false, true} {
			var src io.Reader = bytes.NewReader(append(append([]byte{}, c.pkt...), ping...))
			if one {
				src = iotest.OneByteReader(src)
			}
			r := NewReader(src, 1024)
			r.SkipOversizePublish(true)
			f, err := r.ReadPacket()
			if err != nil {
				t.Fatalf("%s (one byte %v): %v", c.name, one, err)
			}
			if f.Type != PUBLISH || f.Skipped != len(c.pkt) || f.SkippedID != c.wantID || f.Bytes != nil {
				t.Fatalf("%s: frame %+v, want skipped %d id %d", c.name, f, len(c.pkt), c.wantID)
			}
			if f, err = r.ReadPacket(); err != nil || f.Type != PINGRESP {
				t.Fatalf("%s: after the skip %v %v, want PINGRESP", c.name, f.Type, err)
			}
		}
	}
}

func TestSkipOversizeMalformed(t *testing.T) {
	big := oversizePublish(t, 1, 7, "a/b", 2000, V311)
	noID := oversizePublish(t, 1, 7, "a/b", 2000, V311)
	noID[len(noID)-2000-2], noID[len(noID)-2000-1] = 0, 0 // packet id 0
	longTopic := append([]byte{}, big...)
	longTopic[3], longTopic[4] = 0xff, 0xff // topic length beyond the packet
	cases := []struct {
		name string
		in   []byte
		want func(error) bool
	}{
		{"packet id 0", noID, isMalformed},
		{"topic length over the packet", longTopic, isMalformed},
		{"truncated", big[:1500], func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }},
		{"too short for a topic length", []byte{0x30, 0x80, 0x08, 0x01}, func(err error) bool {
			return errors.Is(err, io.ErrUnexpectedEOF) || isMalformed(err)
		}},
	}
	for _, c := range cases {
		r := NewReader(bytes.NewReader(c.in), 1024)
		r.SkipOversizePublish(true)
		if _, err := r.ReadPacket(); !c.want(err) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	// Other packet types over the limit are still refused, and so is a
	// PUBLISH when skipping is off.
	suback := append([]byte{0x90, 0x84, 0x10, 0, 1}, bytes.Repeat([]byte{0}, 2047)...)
	r := NewReader(bytes.NewReader(suback), 1024)
	r.SkipOversizePublish(true)
	if _, err := r.ReadPacket(); !isTooLarge(err) {
		t.Errorf("oversize SUBACK: %v", err)
	}
	r = NewReader(bytes.NewReader(big), 1024)
	if _, err := r.ReadPacket(); !isTooLarge(err) {
		t.Errorf("skipping off: %v", err)
	}
}

func isMalformed(err error) bool {
	var ce *Error
	return errors.As(err, &ce) && ce.Code == MalformedPacket
}

func isTooLarge(err error) bool {
	var ce *Error
	return errors.As(err, &ce) && ce.Code == PacketTooLarge
}

// pausing hands out its bytes k at a time with a timeout error between
// every two reads, as a socket whose read deadline passes mid-packet does.
type pausing struct {
	b      []byte
	k      int
	paused bool
}

var errPause = errors.New("i/o timeout")

func (p *pausing) Read(b []byte) (int, error) {
	if !p.paused {
		p.paused = true
		return 0, errPause
	}
	p.paused = false
	if len(p.b) == 0 {
		return 0, io.EOF
	}
	n := copy(b[:min(len(b), p.k)], p.b)
	p.b = p.b[n:]
	return n, nil
}

// TestReaderResumesAfterErrors: a read error in the middle of a packet (the
// idle deadline passing while a slow client sends a large packet) leaves
// the packet in progress, and the next ReadPacket finishes it, for a
// packet that fits the buffer, one larger than it and one being skipped.
// Release between the calls, as a pump that waits does, keeps it too.
func TestReaderResumesAfterErrors(t *testing.T) {
	ping := []byte{0xd0, 0}
	cases := []struct {
		name string
		pkt  []byte
		skip bool
	}{
		{"small", oversizePublish(t, 1, 5, "a/b", 300, V311), false},
		{"larger than the buffer", oversizePublish(t, 1, 6, "a/b", 40<<10, V311), false},
		{"skipped", oversizePublish(t, 1, 7, "a/b", 3000, V311), true},
		{"skipped, larger than the buffer", oversizePublish(t, 2, 8, "plant", 40<<10, V5), true},
	}
	for _, c := range cases {
		for _, k := range []int{1, 7, 1000, 5000} {
			src := &pausing{b: append(append([]byte{}, c.pkt...), ping...), k: k}
			r := NewReader(src, 1<<20)
			if c.skip {
				r.SetMaxPacketSize(1024)
				r.SkipOversizePublish(true)
			}
			var got []Frame
			for tries := 0; len(got) < 2 && tries < 1e6; tries++ {
				f, err := r.ReadPacket()
				if errors.Is(err, errPause) {
					if r.Buffered() == 0 {
						r.Release()
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s, %d at a time: %v after %d packets", c.name, k, err, len(got))
				}
				if f.Type == PUBLISH && !c.skip && !bytes.Equal(f.Bytes, c.pkt) {
					t.Fatalf("%s, %d at a time: PUBLISH of %d bytes differs from the %d sent", c.name, k, len(f.Bytes), len(c.pkt))
				}
				got = append(got, f)
			}
			if len(got) != 2 || got[0].Type != PUBLISH || got[1].Type != PINGRESP {
				t.Fatalf("%s, %d at a time: got %d frames %v", c.name, k, len(got), got)
			}
			if c.skip && (got[0].Skipped != len(c.pkt) || got[0].SkippedID == 0) {
				t.Fatalf("%s, %d at a time: skipped %d id %d, want %d", c.name, k, got[0].Skipped, got[0].SkippedID, len(c.pkt))
			}
		}
	}
}
