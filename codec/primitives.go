package codec

import (
	"encoding/binary"
	"unicode/utf8"
)

// decoder is a bounds-checked cursor over one packet body. Every read that
// runs past the end is a malformed packet, never a panic.
type decoder struct {
	b   []byte
	off int
}

func (d *decoder) remaining() int { return len(d.b) - d.off }

func (d *decoder) u8(what string) (byte, error) {
	if d.off >= len(d.b) {
		return 0, malformed("MQTT-1.5", "%s: packet ends before its fields do", what)
	}
	v := d.b[d.off]
	d.off++
	return v, nil
}

func (d *decoder) u16(what string) (uint16, error) {
	if d.remaining() < 2 {
		return 0, malformed("MQTT-1.5.2", "%s: packet ends inside a two byte integer", what)
	}
	v := binary.BigEndian.Uint16(d.b[d.off:])
	d.off += 2
	return v, nil
}

func (d *decoder) u32(what string) (uint32, error) {
	if d.remaining() < 4 {
		return 0, malformed("MQTT-1.5.3", "%s: packet ends inside a four byte integer", what)
	}
	v := binary.BigEndian.Uint32(d.b[d.off:])
	d.off += 4
	return v, nil
}

func (d *decoder) varint(what string) (uint32, error) {
	v, n, err := parseVarint(d.b[d.off:])
	if err != nil {
		return 0, err
	}
	d.off += n
	return v, nil
}

// bin reads a two-byte length and that many bytes, returning a view.
func (d *decoder) bin(what string) ([]byte, error) {
	n, err := d.u16(what)
	if err != nil {
		return nil, err
	}
	if int(n) > d.remaining() {
		return nil, malformed("MQTT-1.5.6", "%s: declares %d bytes but only %d remain in the packet", what, n, d.remaining())
	}
	v := d.b[d.off : d.off+int(n) : d.off+int(n)]
	d.off += int(n)
	return v, nil
}

// str reads a UTF-8 encoded string and checks it (see ValidUTF8).
func (d *decoder) str(what string) ([]byte, error) {
	v, err := d.bin(what)
	if err != nil {
		return nil, err
	}
	if err := checkUTF8(v, what); err != nil {
		return nil, err
	}
	return v, nil
}

// parseVarint decodes a Variable Byte Integer: at most four bytes, minimal
// encoding.
func parseVarint(b []byte) (uint32, int, error) {
	var v uint32
	for i := 0; i < 4; i++ {
		if i >= len(b) {
			return 0, 0, malformed("MQTT-1.5.5", "variable byte integer runs past the end of the packet")
		}
		c := b[i]
		v |= uint32(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			if i > 0 && c == 0 {
				// [MQTT-1.5.5-1] the minimum number of bytes must be used.
				return 0, 0, malformed("MQTT-1.5.5-1", "variable byte integer is not minimally encoded")
			}
			return v, i + 1, nil
		}
	}
	return 0, 0, malformed("MQTT-1.5.5", "variable byte integer longer than four bytes")
}

// varintLen is the encoded size of v.
func varintLen(v int) int {
	switch {
	case v < 128:
		return 1
	case v < 16384:
		return 2
	case v < 2097152:
		return 3
	}
	return 4
}

func appendVarint(dst []byte, v int) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v > 0 {
			c |= 0x80
		}
		dst = append(dst, c)
		if v == 0 {
			return dst
		}
	}
}

func appendU16(dst []byte, v uint16) []byte { return binary.BigEndian.AppendUint16(dst, v) }
func appendU32(dst []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(dst, v) }

func appendBin(dst []byte, v []byte) []byte {
	dst = appendU16(dst, uint16(len(v)))
	return append(dst, v...)
}

func appendStr(dst []byte, v string) []byte {
	dst = appendU16(dst, uint16(len(v)))
	return append(dst, v...)
}

// ValidUTF8 reports whether b is a well-formed MQTT UTF-8 string: valid
// UTF-8 without surrogates or overlong forms, and no U+0000. U+FEFF is a
// legal character and is kept as is [MQTT-1.5.4-3].
func ValidUTF8(b []byte) bool { return checkUTF8(b, "string") == nil }

func checkUTF8(b []byte, what string) error {
	if len(b) > 65535 {
		return malformed("MQTT-1.5.4", "%s longer than 65,535 bytes", what)
	}
	ascii := true
	for _, c := range b {
		if c == 0 {
			// [MQTT-1.5.4-2] must not include U+0000.
			return malformed("MQTT-1.5.4-2", "%s contains U+0000", what)
		}
		if c >= 0x80 {
			ascii = false
		}
	}
	// utf8.Valid refuses surrogate halves and overlong encodings.
	if !ascii && !utf8.Valid(b) {
		return malformed("MQTT-1.5.4-1", "%s is not well-formed UTF-8", what)
	}
	return nil
}
