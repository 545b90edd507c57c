package proxy

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"syscall"
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

// TestWaitConnWrite: writes through the raw socket deliver every byte in
// order, wait while the peer's window is full, and end with the errors
// net.Conn.Write gives: a deadline, a closed connection, a reset peer.
func TestWaitConnWrite(t *testing.T) {
	t.Run("large and concurrent", func(t *testing.T) {
		client, server := tcpPair(t)
		wc := newWaitConn(server, false).(*waitConn)
		// 4 writers x 64 x 16 KiB is far more than the socket buffers
		// hold, so writes hit EAGAIN and wait for the reader.
		const writers, n, size = 4, 64, 16 << 10
		errs := make(chan error, writers)
		for w := 0; w < writers; w++ {
			go func(w int) {
				chunk := bytes.Repeat([]byte{byte('a' + w)}, size)
				for i := 0; i < n; i++ {
					if k, err := wc.Write(chunk); err != nil || k != size {
						errs <- err
						return
					}
				}
				errs <- nil
			}(w)
		}
		time.Sleep(50 * time.Millisecond) // let the buffers fill
		got := make([]byte, writers*n*size)
		if _, err := io.ReadFull(client, got); err != nil {
			t.Fatal(err)
		}
		for w := 0; w < writers; w++ {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		// Each Write is whole: the stream is runs of 16 KiB of one writer.
		counts := map[byte]int{}
		for off := 0; off < len(got); off += size {
			c := got[off]
			if !bytes.Equal(got[off:off+size], bytes.Repeat([]byte{c}, size)) {
				t.Fatalf("write at offset %d interleaved with another", off)
			}
			counts[c]++
		}
		for w := 0; w < writers; w++ {
			if counts[byte('a'+w)] != n {
				t.Fatalf("writer %d: %d chunks arrived, want %d", w, counts[byte('a'+w)], n)
			}
		}
	})
	t.Run("deadline", func(t *testing.T) {
		_, server := tcpPair(t) // the peer never reads
		wc := newWaitConn(server, false)
		wc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		chunk := make([]byte, 1<<20)
		var err error
		for i := 0; i < 64 && err == nil; i++ {
			_, err = wc.Write(chunk)
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("write to a peer that does not read: %v, want a deadline error", err)
		}
		var op *net.OpError
		if !errors.As(err, &op) || op.Op != "write" {
			t.Fatalf("error %v is not a *net.OpError for write", err)
		}
	})
	t.Run("closed", func(t *testing.T) {
		_, server := tcpPair(t)
		wc := newWaitConn(server, false)
		wc.Close()
		if _, err := wc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("write after Close: %v, want net.ErrClosed", err)
		}
	})
	t.Run("reset", func(t *testing.T) {
		client, server := tcpPair(t)
		client.(*net.TCPConn).SetLinger(0)
		client.Close() // RST
		wc := newWaitConn(server, false)
		var err error
		for i := 0; i < 100 && err == nil; i++ {
			_, err = wc.Write([]byte("after the peer reset"))
			time.Sleep(time.Millisecond)
		}
		if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("write to a reset peer: %v, want ECONNRESET or EPIPE", err)
		}
	})
}
