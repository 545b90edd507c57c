package codec

import (
	"bufio"
	"errors"
	"io"
	"strconv"
)

// Frame is one packet as read from the wire. Bytes is the whole packet
// (fixed header and body) and Body the part after the remaining length;
// both are views into the Reader's buffer, valid until the next ReadPacket.
type Frame struct {
	Type  PacketType
	Flags byte // low four bits of the first byte
	Bytes []byte
	Body  []byte
}

// Reader frames MQTT packets from a byte stream. It checks the fixed header
// and the declared size against its limit before reading or allocating the
// body, and grows its buffer only as body bytes actually arrive, so a peer
// that declares a large packet and sends nothing costs nothing.
type Reader struct {
	br  *bufio.Reader
	max int
	buf []byte
}

// Buffer sizes: the reader keeps a buffer up to keepBuf between packets and
// lets a larger one go; bodies above eagerBody grow chunk by chunk.
const (
	keepBuf   = 64 << 10
	eagerBody = 64 << 10
)

// NewReader returns a Reader on br that refuses packets larger than
// maxPacketSize bytes in total (0 means the protocol maximum).
func NewReader(br *bufio.Reader, maxPacketSize int) *Reader {
	if maxPacketSize <= 0 || maxPacketSize > MaxPacketSize {
		maxPacketSize = MaxPacketSize
	}
	return &Reader{br: br, max: maxPacketSize}
}

// SetMaxPacketSize changes the limit for following packets.
func (r *Reader) SetMaxPacketSize(n int) {
	if n <= 0 || n > MaxPacketSize {
		n = MaxPacketSize
	}
	r.max = n
}

// Buffered is how many bytes are already read from the connection but not
// yet returned as packets; writers use it to decide when to flush.
func (r *Reader) Buffered() int { return r.br.Buffered() }

// ReadPacket reads the next packet. Errors from the stream are returned as
// they are (io.EOF at a packet boundary, io.ErrUnexpectedEOF inside one);
// protocol violations are *Error values.
func (r *Reader) ReadPacket() (Frame, error) {
	if cap(r.buf) > keepBuf {
		r.buf = nil
	}
	b0, err := r.br.ReadByte()
	if err != nil {
		return Frame{}, err
	}
	t, flags := PacketType(b0>>4), b0&0x0f
	if err := checkFixedHeader(t, flags); err != nil {
		return Frame{}, err
	}
	var hdr [5]byte
	hdr[0] = b0
	var rl int
	n := 1
	for i := 0; ; i++ {
		if i == 4 {
			return Frame{}, malformed("MQTT-1.5.5", "remaining length longer than four bytes")
		}
		c, err := r.br.ReadByte()
		if err != nil {
			return Frame{}, unexpected(err)
		}
		hdr[n] = c
		n++
		rl |= int(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			if i > 0 && c == 0 {
				return Frame{}, malformed("MQTT-1.5.5-1", "remaining length is not minimally encoded")
			}
			break
		}
	}
	total := n + rl
	if total > r.max {
		return Frame{}, &Error{Code: PacketTooLarge, Clause: "MQTT-3.2.2.3.6",
			Msg: "declared packet size " + strconv.Itoa(total) + " bytes exceeds the limit of " + strconv.Itoa(r.max) + " bytes"}
	}
	if rl <= eagerBody {
		if cap(r.buf) < total {
			r.buf = make([]byte, total, max(total, 512))
		}
		buf := r.buf[:total]
		copy(buf, hdr[:n])
		if _, err := io.ReadFull(r.br, buf[n:]); err != nil {
			return Frame{}, unexpected(err)
		}
		return Frame{Type: t, Flags: flags, Bytes: buf, Body: buf[n:]}, nil
	}
	// Large body: grow with the data received, not with the declaration.
	buf := append(r.buf[:0], hdr[:n]...)
	for len(buf) < total {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		end := min(cap(buf), total)
		m, err := io.ReadFull(r.br, buf[len(buf):end])
		buf = buf[:len(buf)+m]
		if err != nil {
			return Frame{}, unexpected(err)
		}
	}
	r.buf = buf
	return Frame{Type: t, Flags: flags, Bytes: buf, Body: buf[n:]}, nil
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
