package proxy

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		acc <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-acc
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// records builds TLS-shaped records (type, version, length, body) of the
// given body sizes and returns the stream and each record's end offset.
func records(sizes []int) ([]byte, []int) {
	var out []byte
	var ends []int
	for i, n := range sizes {
		out = append(out, 23, 3, 3, byte(n>>8), byte(n))
		for j := 0; j < n; j++ {
			out = append(out, byte(i+j))
		}
		ends = append(ends, len(out))
	}
	return out, ends
}

// TestWaitConnRecordBoundaries: under TLS mode a Read never returns bytes
// of two records, whatever the chunking on the wire and the read sizes,
// and every byte arrives in order.
func TestWaitConnRecordBoundaries(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 20; round++ {
		sizes := make([]int, 30)
		for i := range sizes {
			sizes[i] = rng.IntN(3000)
			if i%7 == 0 {
				sizes[i] = 0 // empty records happen too
			}
		}
		stream, ends := records(sizes)
		cl, sv := tcpPair(t)
		wc := newWaitConn(sv, true).(*waitConn)
		wrng := rand.New(rand.NewPCG(uint64(round), 9))
		go func() {
			rng := wrng
			for off := 0; off < len(stream); {
				n := min(len(stream)-off, 1+rng.IntN(4000))
				cl.Write(stream[off : off+n])
				off += n
				if rng.IntN(4) == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			cl.(*net.TCPConn).CloseWrite()
		}()
		var got []byte
		for {
			p := make([]byte, 1+rng.IntN(6000))
			n, err := wc.Read(p)
			if n > 0 {
				start, end := len(got), len(got)+n
				for _, e := range ends {
					if start < e && e < end {
						t.Fatalf("round %d: read [%d,%d) crosses the record end at %d", round, start, end, e)
					}
				}
				got = append(got, p[:n]...)
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(got, stream) {
			t.Fatalf("round %d: stream changed in transit (%d of %d bytes)", round, len(got), len(stream))
		}
		if wc.buf != nil {
			t.Fatal("buffer held after everything was read")
		}
	}
}

// TestWaitConnPark: Park holds no buffer while waiting, wakes with the
// data, and honours the read deadline.
func TestWaitConnPark(t *testing.T) {
	cl, sv := tcpPair(t)
	wc := newWaitConn(sv, false).(*waitConn)
	sv.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if err := wc.Park(); err == nil {
		t.Fatal("Park returned without data before the deadline")
	}
	if wc.buf != nil {
		t.Fatal("buffer held while parked with nothing to read")
	}
	sv.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() { done <- wc.Park() }()
	time.Sleep(20 * time.Millisecond)
	cl.Write([]byte("hello"))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if wc.Buffered() != 5 {
		t.Fatalf("Buffered = %d after Park, want 5", wc.Buffered())
	}
	p := make([]byte, 16)
	n, err := wc.Read(p)
	if err != nil || string(p[:n]) != "hello" {
		t.Fatalf("Read = %q, %v", p[:n], err)
	}
	if wc.buf != nil {
		t.Fatal("buffer held after it was drained")
	}
	cl.Close()
	if err := wc.Park(); err == nil {
		if _, err := wc.Read(p); err != io.EOF {
			t.Fatalf("after the peer closed: %v, want EOF", err)
		}
	}
}

// FuzzRecordSplit drives the record accounting with arbitrary bytes (the
// headers come from the client, so they are hostile) arriving in arbitrary
// chunks and read with arbitrary sizes: no read may cross a record end
// computed independently, and every byte is handed out once, in order.
func FuzzRecordSplit(f *testing.F) {
	s, _ := records([]int{0, 5, 300, 1})
	f.Add(s, []byte{3, 1, 7, 200, 2})
	f.Add([]byte{23, 3, 3, 0xff, 0xff, 1, 2}, []byte{1, 1, 1, 1, 1, 1, 1})
	f.Fuzz(func(t *testing.T, stream, sizes []byte) {
		if len(sizes) == 0 {
			return
		}
		// Independent record ends.
		var ends []int
		for off := 0; off+5 <= len(stream); {
			off += 5 + (int(stream[off+3])<<8 | int(stream[off+4]))
			ends = append(ends, off)
		}
		c := &waitConn{records: true, buf: stream}
		var got []byte
		for i := 0; c.r < len(stream); i++ {
			c.w = min(len(stream), c.r+1+int(sizes[i%len(sizes)])) // bytes "arrived"
			avail := c.recordLimit(c.buf[c.r:c.w])
			n := min(len(avail), 1+int(sizes[(i+1)%len(sizes)])*3)
			if n == 0 {
				t.Fatalf("no progress at %d", c.r)
			}
			start := c.r
			c.r += n
			c.advanceRecord(c.buf[start:c.r])
			for _, e := range ends {
				if start < e && e < c.r {
					t.Fatalf("read [%d,%d) crosses the record end at %d", start, c.r, e)
				}
			}
			got = append(got, c.buf[start:c.r]...)
		}
		if !bytes.Equal(got, stream) {
			t.Fatal("bytes changed")
		}
	})
}
