package proxy

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync/atomic"
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

// serveSteps runs serve with a step that reads and hands each read's
// bytes and error to check, which says whether to go on.
func serveSteps(wc *waitConn, stop *atomic.Bool, check func(b []byte, err error) bool) (bool, error) {
	p := make([]byte, 64)
	return wc.serve(func() bool {
		n, err := wc.Read(p)
		return check(p[:n], err)
	}, stop)
}

// TestWaitConnServe: inside serve a read that came back short is followed
// by a wait for the poller, not by a read, and bytes that arrive in
// between still wake it; a waiting serve holds no buffer, honours the read
// deadline and ends on EOF.
func TestWaitConnServe(t *testing.T) {
	var stop atomic.Bool
	t.Run("no read after a short read, and no wake-up lost", func(t *testing.T) {
		cl, sv := tcpPair(t)
		wc := newWaitConn(sv, false).(*waitConn)
		cl.Write([]byte("abc"))
		var got []string
		var blocked int
		more, err := serveSteps(wc, &stop, func(b []byte, err error) bool {
			switch {
			case err == errWouldBlock:
				blocked++
				if wc.buf != nil {
					t.Error("buffer held while waiting")
				}
				return true
			case err != nil:
				t.Errorf("read: %v", err)
				return false
			}
			got = append(got, string(b))
			if len(got) == 1 {
				// More arrives before the next read: the short read said the
				// socket was drained, so that read must wait for the poller
				// (errWouldBlock), and the poller's edge must then wake it.
				cl.Write([]byte("def"))
				time.Sleep(20 * time.Millisecond)
			}
			return len(got) < 2
		})
		if more || err != nil {
			t.Fatalf("serve = %v, %v; want false, nil when the step ends", more, err)
		}
		if len(got) != 2 || got[0] != "abc" || got[1] != "def" || blocked != 1 {
			t.Fatalf("reads %q with %d waits, want [abc def] with 1", got, blocked)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		_, sv := tcpPair(t)
		wc := newWaitConn(sv, false).(*waitConn)
		sv.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		more, err := serveSteps(wc, &stop, func(_ []byte, err error) bool { return err == errWouldBlock })
		if !more || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("serve = %v, %v; want true and a deadline error", more, err)
		}
		if wc.buf != nil {
			t.Fatal("buffer held after the wait")
		}
	})
	t.Run("EOF", func(t *testing.T) {
		cl, sv := tcpPair(t)
		wc := newWaitConn(sv, false).(*waitConn)
		go func() { time.Sleep(20 * time.Millisecond); cl.Close() }()
		var last error
		serveSteps(wc, &stop, func(_ []byte, err error) bool { last = err; return err == errWouldBlock })
		if last != io.EOF {
			t.Fatalf("after the peer closed: %v, want EOF", last)
		}
	})
	t.Run("stop", func(t *testing.T) {
		cl, sv := tcpPair(t)
		wc := newWaitConn(sv, false).(*waitConn)
		var stopNow atomic.Bool
		stopNow.Store(true)
		cl.Write([]byte("x"))
		more, err := serveSteps(wc, &stopNow, func([]byte, error) bool { t.Error("step ran after stop"); return false })
		if !more || err != nil {
			t.Fatalf("serve = %v, %v; want true, nil", more, err)
		}
	})
}

// TestWaitConnCloseWhileServing: closing a connection that a pump serves
// does not wait for the pump (net.Conn.Close would wait for the RawConn
// call in progress), whether the pump closes it itself or another
// goroutine does; the pump's reads then end and the peer sees the close.
func TestWaitConnCloseWhileServing(t *testing.T) {
	var stop atomic.Bool
	for _, self := range []bool{true, false} {
		cl, sv := tcpPair(t)
		wc := newWaitConn(sv, false).(*waitConn)
		done := make(chan error, 1)
		go func() {
			cl.Write([]byte("x"))
			_, err := serveSteps(wc, &stop, func(_ []byte, err error) bool {
				if err == errWouldBlock {
					return true
				}
				if self && err == nil {
					return wc.Close() == nil // from inside the step
				}
				return err == nil
			})
			done <- err
		}()
		if !self {
			time.Sleep(50 * time.Millisecond) // the pump waits for more
			closed := make(chan error, 1)
			go func() { closed <- wc.Close() }()
			select {
			case err := <-closed:
				if err != nil {
					t.Fatalf("Close: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Close waited for the serving pump")
			}
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("self %v: serve did not end after Close", self)
		}
		cl.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := cl.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("self %v: the peer read %v, want EOF", self, err)
		}
		if err := wc.Close(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("self %v: second Close = %v, want net.ErrClosed", self, err)
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
