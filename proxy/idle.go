package proxy

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/moat-mqtt/moat/codec"
)

// idleWait parks a pump whose connection has nothing to read, holding no
// buffer and on a shallow stack, until the socket is readable. Without it
// each idle connection would keep two goroutines blocked deep inside Read
// (deeper still inside crypto/tls), with stacks grown to match.
type idleWait struct {
	conn net.Conn        // what the codec.Reader reads from
	raw  syscall.RawConn // the socket under conn; nil: no shallow wait
	tls  bool            // conn is TLS: records may sit decrypted in crypto/tls
}

func newIdleWait(c net.Conn) idleWait {
	w := idleWait{conn: c}
	under := c
	if tc, ok := c.(*tls.Conn); ok {
		under, w.tls = tc.NetConn(), true
	}
	if sc, ok := under.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			w.raw = raw
		}
	}
	return w
}

// past is an expired deadline: a read under it returns only what is
// already buffered.
var past = time.Unix(1, 0)

// tlsBuffered reports whether crypto/tls already holds bytes for r, reading
// them into r if so. deadline is the read deadline to restore.
func (w *idleWait) tlsBuffered(r *codec.Reader, deadline time.Time) (bool, error) {
	w.conn.SetReadDeadline(past)
	err := r.ReadMore()
	w.conn.SetReadDeadline(deadline)
	if r.Buffered() > 0 {
		return true, nil
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return false, nil
	}
	return false, err
}

// park returns when the socket has bytes (or EOF, or an error) to read, or
// with the read deadline's error. For TLS, call tlsBuffered first.
func (w *idleWait) park() error {
	if w.raw == nil {
		return nil
	}
	return w.raw.Read(peekReadable)
}

var peekByte [1]byte

// peekReadable is the RawConn callback: done when the socket has a byte
// to read or a condition (EOF, error) to report; not done on EAGAIN.
func peekReadable(fd uintptr) bool {
	_, _, err := syscall.Recvfrom(int(fd), peekByte[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN
}
