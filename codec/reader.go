package codec

import (
	"errors"
	"io"
	"strconv"
	"sync"
)

// Frame is one packet as read from the wire. Bytes is the whole packet
// (fixed header and body) and Body the part after the remaining length;
// both are views into the Reader's buffer, valid until the next ReadPacket.
type Frame struct {
	Type  PacketType
	Flags byte // low four bits of the first byte
	Bytes []byte
	Body  []byte
	// Skipped is the size of a PUBLISH over the limit that the Reader
	// discarded (SkipOversizePublish); Bytes and Body are then nil and
	// SkippedID is its packet identifier (0 at QoS 0).
	Skipped   int
	SkippedID uint16
}

// Reader frames MQTT packets from a byte stream.
//
// It checks the fixed header and the declared size against its limit
// before reading or allocating the body, and grows a buffer for a large
// packet only as its bytes actually arrive, so a peer that declares a large
// packet and sends nothing costs nothing.
//
// Its read buffer comes from a shared pool while data flows and goes back
// when everything read has been handed out: an idle connection blocks in
// Read on a small inline array and holds no buffer, and a short read into
// that array (a lone ack, CONNECT, DISCONNECT) is framed from it without
// taking one. Reads are batched: one
// Read may bring many packets, and frames are views into the buffer (no
// copy) when a packet fits in it.
type Reader struct {
	src   io.Reader
	max   int
	buf   []byte  // small after a short read, pooled while data flows; nil when idle
	bufp  *[]byte // what the pool handed out for buf; nil while buf is small
	r, w  int     // unread bytes are buf[r:w]
	big   []byte  // a packet larger than the pooled buffer
	bigp  *[]byte // the pool's pointer, if big came from it
	full  bool    // the last read filled all the space offered
	skip  bool    // discard an oversize PUBLISH instead of failing
	res   resume  // a large or skipped packet in progress
	small [smallRead]byte
}

// resume is the packet ReadPacket was in the middle of when the source
// returned an error that may pass (a read deadline): the next call goes on
// with it instead of reading its remaining bytes as a new packet. A packet
// that fits the buffer needs none of this, as its bytes stay buffered
// until it is whole.
type resume struct {
	mode  byte // 0 (none), resumeLarge or resumeSkip
	t     PacketType
	flags byte
	hdr   int // fixed header size
	total int
	// Skipping: bytes of the packet not yet read past, the field being
	// read, bytes of it still to discard, and the packet identifier.
	left int
	step byte
	skip int
	id   uint16
}

const (
	resumeLarge = 1 + iota
	resumeSkip
)

// Steps of skipping an oversize PUBLISH.
const (
	skipTopicLen = iota
	skipTopic
	skipID
	skipBody
)

const (
	// PoolBufSize is the size of the pooled read buffers.
	PoolBufSize = 16 << 10
	// smallRead is what an idle reader blocks on: a typical small packet
	// arrives whole in it, a burst continues into a pooled buffer.
	smallRead = 64
	// eagerBody: a large body up to this size is allocated at once; above
	// it the buffer grows with the data received.
	eagerBody = 64 << 10
)

var (
	bufPool = sync.Pool{New: func() any { b := make([]byte, PoolBufSize); return &b }}
	bigPool = sync.Pool{New: func() any { b := make([]byte, 0, eagerBody); return &b }}
)

// NewReader returns a Reader on src that refuses packets larger than
// maxPacketSize bytes in total (0 means the protocol maximum).
func NewReader(src io.Reader, maxPacketSize int) *Reader {
	r := &Reader{src: src}
	r.SetMaxPacketSize(maxPacketSize)
	return r
}

// SetMaxPacketSize changes the limit for following packets.
func (r *Reader) SetMaxPacketSize(n int) {
	if n <= 0 || n > MaxPacketSize {
		n = MaxPacketSize
	}
	r.max = n
}

// SkipOversizePublish makes ReadPacket discard a PUBLISH larger than the
// limit, reading past its bytes without keeping them, and return it as a
// Frame with Skipped set, instead of failing. Other packets over the limit
// are still errors. For a peer that cannot be told the limit (a broker
// delivering to an MQTT 3.x client) one oversize message should cost that
// message, not the session.
func (r *Reader) SkipOversizePublish(on bool) { r.skip = on }

// Buffered is how many bytes are already read from the connection but not
// yet returned as packets; writers use it to decide when to flush.
func (r *Reader) Buffered() int { return r.w - r.r }

// Release returns the read buffers to their pools. ReadPacket does this
// itself whenever everything read has been handed out; call it before
// waiting for more by other means. Frames read before are invalid
// afterwards and buffered bytes are dropped, but a large packet in
// progress keeps its buffer: it is not waiting by other means.
func (r *Reader) Release() {
	// The pools hold the *[]byte they handed out: putting back a fresh
	// pointer would allocate on every release.
	if r.bufp != nil {
		*r.bufp = r.buf[:cap(r.buf)]
		bufPool.Put(r.bufp)
	}
	r.buf, r.bufp, r.r, r.w = nil, nil, 0, 0
	if r.res.mode != resumeLarge {
		r.releaseBig()
	}
}

// Drop returns every buffer, a packet in progress's too, for a connection
// that ends.
func (r *Reader) Drop() {
	r.res = resume{}
	r.Release()
}

func (r *Reader) releaseBig() {
	if r.bigp != nil && cap(r.big) == eagerBody {
		*r.bigp = r.big[:0]
		bigPool.Put(r.bigp)
	}
	r.big, r.bigp = nil, nil
}

// fill reads once from src into the buffer.
func (r *Reader) fill() error {
	if r.buf == nil {
		// Idle: block on the inline array. A short read (CONNECT, CONNACK,
		// acks, DISCONNECT, a small PUBLISH) is served from it as it is; a
		// read that filled it is a burst and continues in a pooled buffer.
		n, err := r.src.Read(r.small[:])
		r.full = n == len(r.small)
		if n > 0 {
			r.buf, r.r, r.w = r.small[:], 0, n
			if r.full {
				r.pooled()
			}
			return nil
		}
		if err == nil {
			err = io.ErrNoProgress
		}
		return err
	}
	if r.bufp == nil {
		r.pooled() // more bytes after a short read: move to a pooled buffer
	}
	if r.w == len(r.buf) {
		// Make room: move the unread bytes to the front.
		r.w = copy(r.buf, r.buf[r.r:r.w])
		r.r = 0
	}
	n, err := r.src.Read(r.buf[r.w:])
	r.full = n == len(r.buf)-r.w
	r.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// pooled moves the unread bytes from the inline array to a pooled buffer.
func (r *Reader) pooled() {
	r.bufp = bufPool.Get().(*[]byte)
	buf := (*r.bufp)[:PoolBufSize]
	r.r, r.w = 0, copy(buf, r.buf[r.r:r.w])
	r.buf = buf
}

// ensure makes at least n bytes (n <= PoolBufSize) available unread.
func (r *Reader) ensure(n int) error {
	for r.w-r.r < n {
		if r.buf != nil && len(r.buf)-r.r < n {
			r.w = copy(r.buf, r.buf[r.r:r.w])
			r.r = 0
		}
		if err := r.fill(); err != nil {
			return err
		}
	}
	return nil
}

// ReadPacket reads the next packet. Errors from the stream are returned as
// they are (io.EOF at a packet boundary, io.ErrUnexpectedEOF inside one);
// protocol violations are *Error values.
func (r *Reader) ReadPacket() (Frame, error) {
	switch r.res.mode {
	case resumeLarge:
		return r.largeRest()
	case resumeSkip:
		return r.skipRest()
	}
	if r.r == r.w {
		// Everything handed out: idle until more arrives.
		r.Release()
	}
	if err := r.ensure(1); err != nil {
		return Frame{}, err
	}
	b0 := r.buf[r.r]
	t, flags := PacketType(b0>>4), b0&0x0f
	if err := checkFixedHeader(t, flags); err != nil {
		return Frame{}, err
	}
	// Remaining length: at most four bytes, minimally encoded.
	var rl, n int
	for i := 0; ; i++ {
		if i == 4 {
			return Frame{}, malformed("MQTT-1.5.5", "remaining length longer than four bytes")
		}
		if err := r.ensure(2 + i); err != nil {
			return Frame{}, unexpected(err)
		}
		c := r.buf[r.r+1+i]
		rl |= int(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			if i > 0 && c == 0 {
				return Frame{}, malformed("MQTT-1.5.5-1", "remaining length is not minimally encoded")
			}
			n = 2 + i
			break
		}
	}
	total := n + rl
	if total > r.max && r.skip && t == PUBLISH {
		return r.skipPublish(flags, n, total)
	}
	if total > r.max {
		return Frame{}, &Error{Code: PacketTooLarge, Clause: "MQTT-3.2.2.3.6",
			Msg: "declared packet size " + strconv.Itoa(total) + " bytes exceeds the limit of " + strconv.Itoa(r.max) + " bytes"}
	}
	if total <= PoolBufSize {
		if err := r.ensure(total); err != nil {
			return Frame{}, unexpected(err)
		}
		b := r.buf[r.r : r.r+total : r.r+total]
		r.r += total
		return Frame{Type: t, Flags: flags, Bytes: b, Body: b[n:]}, nil
	}
	return r.readLarge(t, flags, n, total)
}

// readLarge assembles a packet bigger than the pooled buffer in its own
// buffer, growing it with the bytes received rather than the declaration.
// An error from the source leaves the packet in progress: the next
// ReadPacket goes on with it.
func (r *Reader) readLarge(t PacketType, flags byte, hdr, total int) (Frame, error) {
	if r.big == nil {
		r.bigp = bigPool.Get().(*[]byte)
		r.big = (*r.bigp)[:0]
	}
	r.big = append(r.big[:0], r.buf[r.r:r.w]...)
	r.r = r.w
	r.res = resume{mode: resumeLarge, t: t, flags: flags, hdr: hdr, total: total}
	return r.largeRest()
}

func (r *Reader) largeRest() (Frame, error) {
	big, total := r.big, r.res.total
	for len(big) < total {
		if len(big) == cap(big) {
			big = append(big, 0)[:len(big)]
		}
		end := min(cap(big), total)
		m, err := io.ReadFull(r.src, big[len(big):end])
		big = big[:len(big)+m]
		if err != nil {
			r.big = big
			return Frame{}, unexpected(err)
		}
	}
	r.big = big
	t, flags, hdr := r.res.t, r.res.flags, r.res.hdr
	r.res = resume{}
	return Frame{Type: t, Flags: flags, Bytes: big, Body: big[hdr:]}, nil
}

// skipPublish reads past an oversize PUBLISH, keeping only its packet
// identifier: the topic length, the topic (discarded) and, at QoS 1 or 2,
// the identifier. hdr is the fixed header's size, total the packet's. Like
// readLarge it can be resumed after an error from the source.
func (r *Reader) skipPublish(flags byte, hdr, total int) (Frame, error) {
	r.r += hdr // buffered: the remaining length was just parsed
	r.res = resume{mode: resumeSkip, t: PUBLISH, flags: flags, total: total, left: total - hdr}
	return r.skipRest()
}

func (r *Reader) skipRest() (Frame, error) {
	s := &r.res
	for {
		switch s.step {
		case skipTopicLen, skipID:
			if s.left < 2 {
				r.res = resume{}
				return Frame{}, malformed("MQTT-3.3.2-1", "PUBLISH too short for its variable header")
			}
			if err := r.ensure(2); err != nil {
				return Frame{}, unexpected(err)
			}
			v := uint16(r.buf[r.r])<<8 | uint16(r.buf[r.r+1])
			r.r += 2
			s.left -= 2
			if s.step == skipID {
				if v == 0 {
					r.res = resume{}
					return Frame{}, malformed("MQTT-2.2.1-3", "PUBLISH at QoS > 0 with packet identifier 0")
				}
				s.id, s.skip, s.step = v, s.left, skipBody
				continue
			}
			if int(v) > s.left {
				r.res = resume{}
				return Frame{}, malformed("MQTT-1.5.4", "topic length %d exceeds the packet", v)
			}
			s.skip, s.left, s.step = int(v), s.left-int(v), skipTopic
		case skipTopic:
			if err := r.discard(&s.skip); err != nil {
				return Frame{}, err
			}
			s.step = skipBody
			if s.flags&0x06 != 0 {
				s.step = skipID
			} else {
				s.skip = s.left
			}
		case skipBody:
			if err := r.discard(&s.skip); err != nil {
				return Frame{}, err
			}
			f := Frame{Type: PUBLISH, Flags: s.flags, Skipped: s.total, SkippedID: s.id}
			r.res = resume{}
			return f, nil
		}
	}
}

// discard reads past *n bytes, a buffer at a time, counting *n down so an
// error leaves what is still to be read.
func (r *Reader) discard(n *int) error {
	for *n > 0 {
		if r.r == r.w {
			r.r, r.w = 0, 0
			if err := r.fill(); err != nil {
				return unexpected(err)
			}
		}
		k := min(*n, r.w-r.r)
		r.r += k
		*n -= k
	}
	return nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// checkFixedHeader applies the rules that depend only on the first byte.
func checkFixedHeader(t PacketType, flags byte) error {
	switch t {
	case Reserved:
		return malformed("MQTT-2.1.2", "packet type 0 is reserved")
	case PUBLISH:
		if flags&0x06 == 0x06 {
			// [MQTT-3.3.1-4] a PUBLISH must not have both QoS bits set.
			return malformed("MQTT-3.3.1-4", "PUBLISH with QoS 3")
		}
		if flags&0x08 != 0 && flags&0x06 == 0 {
			// [MQTT-3.3.1-2] DUP must be 0 for QoS 0 messages.
			return malformed("MQTT-3.3.1-2", "PUBLISH with DUP set on QoS 0")
		}
	case PUBREL, SUBSCRIBE, UNSUBSCRIBE:
		if flags != 0x02 {
			// [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1]
			return malformed("MQTT-2.1.3-1", "%s fixed header flags must be 0010, got %04b", t, flags)
		}
	default:
		if flags != 0 {
			return malformed("MQTT-2.1.3-1", "%s fixed header flags must be 0000, got %04b", t, flags)
		}
	}
	return nil
}

// LastReadFull reports whether the last read from the source filled all
// the space it was offered, so the source may hold more. A layer that
// buffers (crypto/tls) has nothing left for the Reader when this is false.
func (r *Reader) LastReadFull() bool { return r.full }
