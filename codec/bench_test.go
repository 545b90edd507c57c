package codec

import (
	"bufio"
	"bytes"
	"io"
	"strconv"
	"testing"
)

// loopReader serves the same bytes forever, so a benchmark reads packets
// without the cost of refilling a bytes.Reader.
type loopReader struct {
	b   []byte
	off int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], l.b[l.off:])
		n += c
		l.off = (l.off + c) % len(l.b)
	}
	return n, nil
}

func publishBytes(b *testing.B, v Version, size int) []byte {
	p := &Publish{QoS: 1, PacketID: 42, Topic: []byte("plant1/zone3/line2/temperature"), Payload: bytes.Repeat([]byte{'x'}, size)}
	if v == V5 {
		p.Properties.Set(PropUser)
		p.Properties.User = []UserProperty{{Key: []byte("site"), Value: []byte("plant1")}}
	}
	raw, err := p.Append(nil, v)
	if err != nil {
		b.Fatal(err)
	}
	return raw
}

// BenchmarkReadDecodePublish is the forwarding hot path without the
// network: frame a PUBLISH from a buffered stream, decode and validate it,
// and copy its original bytes to a buffered writer.
func BenchmarkReadDecodePublish(b *testing.B) {
	for _, v := range []Version{V311, V5} {
		for _, size := range []int{64, 1024, 16384} {
			b.Run("v"+v.String()+"/"+strconv.Itoa(size)+"B", func(b *testing.B) {
				raw := publishBytes(b, v, size)
				r := NewReader(&loopReader{b: raw}, 1<<20)
				w := bufio.NewWriterSize(io.Discard, 32<<10)
				var p Publish
				b.SetBytes(int64(len(raw)))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					f, err := r.ReadPacket()
					if err != nil {
						b.Fatal(err)
					}
					if err := DecodePublish(&p, f, v); err != nil {
						b.Fatal(err)
					}
					w.Write(f.Bytes)
				}
			})
		}
	}
}

func BenchmarkDecodeAck(b *testing.B) {
	raw := []byte{0x40, 2, 0, 1}
	f := Frame{Type: PUBACK, Bytes: raw, Body: raw[2:]}
	var a Ack
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := DecodeAck(&a, f, V311); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeConnect(b *testing.B) {
	c := &Connect{Version: V5, CleanStart: true, KeepAlive: 30, ClientID: "sensor-0042", HasUsername: true, Username: "plant1",
		HasPassword: true, Password: []byte("secret"), Will: &Will{Topic: "plant1/sensor-0042/status", Payload: []byte("offline"), QoS: 1}}
	raw, _ := c.Append(nil, V5)
	f := Frame{Type: CONNECT, Bytes: raw, Body: raw[2:]}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := DecodeConnect(f); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodePublish(b *testing.B) {
	p := &Publish{QoS: 1, PacketID: 42, Topic: []byte("plant1/zone3/line2/temperature"), Payload: make([]byte, 64)}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		var err error
		if buf, err = p.Append(buf[:0], V311); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkValidFilter(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := ValidFilter("$share/g/plant1/+/line2/#"); err != nil {
			b.Fatal(err)
		}
	}
}
