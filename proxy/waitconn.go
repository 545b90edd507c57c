package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// waitConn sits between a TCP socket and whatever reads it (codec.Reader
// directly, or crypto/tls). It lets an idle pump wait on a shallow stack
// while holding no buffer, and it does so without extra system calls: a
// pump serves its connection inside one RawConn.Read (serve), so the read
// that wakes it is the read that fetches the data, and a read that came
// back short is followed by a wait, not by a read that finds nothing.
//
// Reads go through syscall.RawConn into a pooled buffer taken only for the
// read and kept only while it holds data. Under TLS (records set) it hands
// crypto/tls at most one TLS record per Read, so crypto/tls never buffers
// bytes beyond the record it is decrypting; the pump can then tell that
// nothing is pending anywhere and park.
type waitConn struct {
	net.Conn
	raw     syscall.RawConn
	records bool
	inEpoll bool // registered with the parker's epoll (pump goroutine only)

	// RawConn callbacks, bound once so reads allocate nothing.
	readFn, tryFn func(fd uintptr) bool
	again         bool // tryFn saw EAGAIN
	// beforeRead, when set, runs before the socket is read with nothing
	// buffered (the read may wait): the pump flushes what it queued.
	beforeRead func()
	// onWake, when set, runs at the start of each wake-up inside serve,
	// before the first packet: one clock read serves all the packets the
	// wake-up handles.
	onWake func()

	// One reader at a time: the pump (or crypto/tls on its behalf).
	buf    []byte // pooled while holding data
	bufp   *[]byte
	r, w   int
	hdr    [5]byte // TLS record header being delivered
	hdrN   int     // header bytes delivered of the current record
	recOut int     // body bytes of the current record still to deliver

	// Results of the last raw read, set inside the RawConn callback.
	n   int
	err error

	// serve: the pump's packets are handled inside one RawConn.Read, so
	// that a read which came back short (the socket is drained) is
	// followed by a wait for the poller's next edge, not by a read that
	// finds nothing. Every wait through RawConn.Read begins by forgetting
	// the poller's last readiness, so outside of one the first read after
	// a wake-up must be made, and on a busy connection half of all reads
	// came back EAGAIN.
	serveFn func(fd uintptr) bool
	step    func() bool  // handles one packet; false ends the pump
	stop    *atomic.Bool // set: leave serve, the session is ending
	inServe bool         // inside serveFn: fill reads fd without waiting
	fd      int
	drained bool // the last read in this wake-up came back short
	blocked bool // a read would have waited: serveFn waits for the poller
	ended   bool // step returned false

	// A Close while a pump serves must not wait for it: the serving pump
	// itself closes the connection when it ends the session, and a close
	// from elsewhere would wait for the serve to return (net.Conn.Close
	// waits for every call in progress on the descriptor). Such a Close
	// shuts the socket down, which wakes the pump and makes its reads
	// return EOF, and leaves the close to serve's return.
	closeMu sync.Mutex
	serving bool
	closed  bool // set while serving: the close is serve's to make

	// Writes: one at a time (the peerWriter's lock, or crypto/tls's, is
	// usually held already; this one guards the callback's fields).
	wmu     sync.Mutex
	writeFn func(fd uintptr) bool
	wb      []byte // still to write
	wn      int
	werr    error
}

const waitBufSize = 16 << 10

var waitPool = sync.Pool{New: func() any { b := make([]byte, waitBufSize); return &b }}

// newWaitConn wraps c; records is true when crypto/tls will read from it.
// Connections that are not sockets are returned as they are.
func newWaitConn(c net.Conn, records bool) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	wc := &waitConn{Conn: c, raw: raw, records: records}
	wc.readFn, wc.tryFn, wc.writeFn = wc.readCallback, wc.tryCallback, wc.writeCallback
	wc.serveFn = wc.serveCallback
	return wc
}

// tryCallback is readCallback that reports EAGAIN instead of waiting.
func (c *waitConn) tryCallback(fd uintptr) bool {
	c.again = !c.readCallback(fd)
	return true
}

// Buffered reports bytes read from the socket and not yet handed out.
func (c *waitConn) Buffered() int { return c.w - c.r }

// readCallback is bound once per connection so parking allocates nothing.
func (c *waitConn) readCallback(fd uintptr) bool {
	n, err := c.readSocket(int(fd))
	if err == syscall.EAGAIN {
		return false
	}
	c.n, c.err = n, nil
	if err != 0 {
		c.err = err
	}
	return true
}

// readSocket reads once into the buffer, taking one if none is held and
// moving unread bytes to the front of a full one. On EAGAIN with nothing
// buffered the buffer goes back, so a wait holds none.
func (c *waitConn) readSocket(fd int) (int, syscall.Errno) {
	if c.buf == nil {
		c.bufp = waitPool.Get().(*[]byte)
		c.buf = (*c.bufp)[:waitBufSize]
		c.r, c.w = 0, 0
	} else if c.w == len(c.buf) {
		c.w = copy(c.buf, c.buf[c.r:c.w])
		c.r = 0
	}
	n, err := rawRead(fd, c.buf[c.w:])
	for err == syscall.EINTR {
		n, err = rawRead(fd, c.buf[c.w:])
	}
	switch {
	case err == syscall.EAGAIN && c.w == c.r:
		c.releaseLocked()
	case err == 0:
		c.w += n
	}
	return n, err
}

// errWouldBlock is what a read inside serve returns when the socket has
// nothing: a net.Error that is Temporary, so crypto/tls keeps the
// connection usable, and the codec.Reader keeps a packet in progress.
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "read would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

// serve runs step, one packet at a time, inside one RawConn.Read, until it
// returns false (more is false), stop is set (more, nil error: go on
// outside) or a wait for data ends in an error: the read deadline, or the
// connection closed.
func (c *waitConn) serve(step func() bool, stop *atomic.Bool) (more bool, err error) {
	c.closeMu.Lock()
	if c.closed {
		c.closeMu.Unlock()
		return true, net.ErrClosed
	}
	c.serving = true
	c.closeMu.Unlock()
	c.step, c.stop, c.ended = step, stop, false
	err = c.raw.Read(c.serveFn)
	c.inServe, c.step, c.stop = false, nil, nil
	if c.w == c.r {
		c.releaseLocked()
	}
	c.closeMu.Lock()
	c.serving = false
	later := c.closed // serve checked it was not before it began
	c.closeMu.Unlock()
	if later {
		c.Conn.Close()
	}
	return !c.ended, err
}

// Close closes the connection, or, while a pump serves it, shuts the
// socket down and leaves the close to the end of serve.
func (c *waitConn) Close() error {
	c.closeMu.Lock()
	if c.closed {
		c.closeMu.Unlock()
		return net.ErrClosed
	}
	c.closed = true
	if c.serving {
		c.closeMu.Unlock()
		c.raw.Control(func(fd uintptr) { syscall.Shutdown(int(fd), syscall.SHUT_RDWR) })
		return nil
	}
	c.closeMu.Unlock()
	return c.Conn.Close()
}

// serveCallback is one wake-up: the socket may have data (the first call,
// or the poller said so), so the first fill reads it; a read that comes
// back short means it is drained, and the callback then returns false,
// waiting for the poller, when step next needs bytes.
func (c *waitConn) serveCallback(fd uintptr) bool {
	c.inServe, c.fd, c.drained, c.blocked = true, int(fd), false, false
	if c.onWake != nil {
		c.onWake()
	}
	for {
		if c.stop.Load() {
			c.inServe = false
			return true
		}
		if !c.step() {
			c.ended, c.inServe = true, false
			return true
		}
		if c.blocked {
			c.blocked, c.inServe = false, false
			if c.beforeRead != nil {
				c.beforeRead() // flush what the pump queued: it waits now
			}
			return false
		}
	}
}

// emptied reports, inside serve, that this wake-up drained the socket and
// nothing of it is left here: a read now would only find it empty.
func (c *waitConn) emptied() bool { return c.inServe && c.drained && c.w == c.r }

// waitNext ends the wake-up as a read that found the socket empty would:
// serve waits for the poller. A pump whose reader holds nothing calls it
// instead of making that read: under TLS, crypto/tls allocates for every
// read it makes (its atLeastReader), which was one allocation per
// wake-up spent learning that there was nothing.
func (c *waitConn) waitNext() { c.blocked = true }

// fillServing is fill inside serveCallback: it reads the socket only when
// the last read of this wake-up did not come back short, and never waits.
func (c *waitConn) fillServing() error {
	if c.drained {
		c.blocked = true
		return errWouldBlock
	}
	n, err := c.readSocket(c.fd)
	switch {
	case err == syscall.EAGAIN:
		c.drained, c.blocked = true, true
		return errWouldBlock
	case err != 0:
		return err
	case n == 0:
		return io.EOF
	}
	c.drained = c.w < len(c.buf) // a short read: the socket is drained
	return nil
}

// fill blocks until the socket has data (read into the buffer), EOF, an
// error or the read deadline.
func (c *waitConn) fill() error {
	if c.inServe {
		return c.fillServing()
	}
	if c.beforeRead != nil && c.w == c.r {
		c.beforeRead()
	}
	c.n, c.err = 0, nil
	err := c.raw.Read(c.readFn)
	if c.w == c.r {
		c.releaseLocked() // EOF, error or deadline: nothing to hold
	}
	if err != nil {
		return err
	}
	if c.err != nil {
		return c.err
	}
	if c.n == 0 {
		return io.EOF
	}
	return nil
}

// TryFill reads what the socket has without waiting: true when bytes were
// read (or are buffered), false with a nil error when there are none.
func (c *waitConn) TryFill() (bool, error) {
	if c.w > c.r {
		return true, nil
	}
	c.n, c.err, c.again = 0, nil, false
	err := c.raw.Read(c.tryFn)
	if c.w == c.r {
		c.releaseLocked()
	}
	switch {
	case err != nil:
		return false, err
	case c.again:
		return false, nil
	case c.err != nil:
		return false, c.err
	case c.n == 0:
		return false, io.EOF
	}
	return true, nil
}

// Read hands out buffered bytes, reading the socket when none are left.
func (c *waitConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for c.w == c.r {
		if err := c.fill(); err != nil {
			return 0, err
		}
	}
	avail := c.buf[c.r:c.w]
	if c.records {
		avail = c.recordLimit(avail)
	}
	n := copy(p, avail)
	c.r += n
	if c.records {
		c.advanceRecord(c.buf[c.r-n : c.r])
	}
	if c.r == c.w {
		c.releaseLocked()
	}
	return n, nil
}

// recordLimit cuts avail at the end of the current TLS record.
func (c *waitConn) recordLimit(avail []byte) []byte {
	if c.hdrN < len(c.hdr) {
		// Still delivering the header: hand out at most the header's rest
		// plus, once the length is known, the body.
		need := len(c.hdr) - c.hdrN
		if len(avail) < need {
			return avail
		}
		var h [5]byte
		copy(h[:], c.hdr[:c.hdrN])
		copy(h[c.hdrN:], avail[:need])
		body := int(h[3])<<8 | int(h[4])
		return avail[:min(len(avail), need+body)]
	}
	return avail[:min(len(avail), c.recOut)]
}

// advanceRecord accounts for bytes just handed out.
func (c *waitConn) advanceRecord(out []byte) {
	for len(out) > 0 {
		if c.hdrN < len(c.hdr) {
			k := copy(c.hdr[c.hdrN:], out)
			c.hdrN += k
			out = out[k:]
			if c.hdrN == len(c.hdr) {
				c.recOut = int(c.hdr[3])<<8 | int(c.hdr[4])
			}
			continue
		}
		k := min(len(out), c.recOut)
		c.recOut -= k
		out = out[k:]
		if c.recOut == 0 {
			c.hdrN = 0
		}
	}
	if c.hdrN == len(c.hdr) && c.recOut == 0 {
		c.hdrN = 0 // empty record
	}
}

func (c *waitConn) releaseLocked() {
	if c.buf != nil {
		*c.bufp = c.buf[:cap(c.buf)] // the pooled pointer: a new one would allocate
		waitPool.Put(c.bufp)
		c.buf, c.bufp, c.r, c.w = nil, nil, 0, 0
	}
}

// Release returns the buffer, for a connection that ends.
func (c *waitConn) Release() { c.releaseLocked() }

// Write writes all of b through the RawConn, waiting in the netpoller while
// the socket's send buffer is full; the write deadline applies as it does
// to net.Conn.Write.
func (c *waitConn) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wb, c.wn, c.werr = b, 0, nil
	err := c.raw.Write(c.writeFn)
	n := c.wn
	if err == nil {
		err = c.werr
	}
	c.wb = nil // keep no reference to the caller's buffer
	if err != nil {
		if errno := syscall.Errno(0); errors.As(err, &errno) {
			err = os.NewSyscallError("write", errno)
		}
		return n, &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	return n, nil
}

// writeCallback writes what is left of wb; false waits for writability.
func (c *waitConn) writeCallback(fd uintptr) bool {
	for c.wn < len(c.wb) {
		n, err := rawWrite(int(fd), c.wb[c.wn:])
		switch err {
		case 0:
			c.wn += n
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.werr = err
			return true
		}
	}
	return true
}

func (c *waitConn) setBeforeRead(f func()) { c.beforeRead = f }

// setOnWake sets the hook run at the start of each wake-up in serve.
func (c *waitConn) setOnWake(f func()) { c.onWake = f }

// CloseWrite half-closes the socket underneath.
func (c *waitConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return nil
}
