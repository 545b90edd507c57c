package proxy

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/pires/go-proxyproto"
)

func v2Header(t testing.TB) []byte {
	h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9), Port: 1234}, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1883})
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The header is read byte-exact: what follows it stays in the stream.
func TestReadProxyHeaderExact(t *testing.T) {
	for name, hdr := range map[string][]byte{
		"v1":         []byte("PROXY TCP4 127.0.0.9 127.0.0.1 1234 1883\r\n"),
		"v1 unknown": []byte("PROXY UNKNOWN\r\n"),
		"v2":         v2Header(t),
	} {
		r := bytes.NewReader(append(append([]byte(nil), hdr...), 0x10, 0x00))
		h, err := readProxyHeader(r)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if rest, _ := io.ReadAll(r); !bytes.Equal(rest, []byte{0x10, 0x00}) {
			t.Fatalf("%s: %d bytes left after the header, want the 2 that follow it", name, len(rest))
		}
		if src, _, ok := h.TCPAddrs(); name != "v1 unknown" && (!ok || src.String() != "127.0.0.9:1234") {
			t.Fatalf("%s: source %v", name, h.SourceAddr)
		}
	}
}

func TestReadProxyHeaderMalformed(t *testing.T) {
	v2 := v2Header(t)
	long := append([]byte(nil), v2[:16]...)
	long[14], long[15] = 0xFF, 0xFF
	for name, in := range map[string][]byte{
		"empty":           nil,
		"mqtt, no header": {0x10, 0x0C, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 30, 0, 0},
		"v1 no crlf":      []byte("PROXY TCP4 127.0.0.9 127.0.0.1 1234 1883 " + strings.Repeat("x", 100)),
		"v1 bad address":  []byte("PROXY TCP4 999.0.0.9 127.0.0.1 1234 1883\r\n"),
		"v1 truncated":    []byte("PROXY TCP4 127.0"),
		"v2 huge length":  long,
		"v2 truncated":    v2[:len(v2)-3],
		"v2 short sig":    v2[:10],
	} {
		if _, err := readProxyHeader(bytes.NewReader(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzReadProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 127.0.0.9 127.0.0.1 1234 1883\r\n\x10\x00"))
	f.Add([]byte("PROXY TCP6 ::1 ::1 1 2\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(v2Header(f))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		h, err := readProxyHeader(r)
		if err != nil {
			return
		}
		// Never more than the largest header is consumed.
		if used := len(in) - r.Len(); used > 232 {
			t.Fatalf("consumed %d bytes", used)
		}
		h.TCPAddrs()
	})
}
