// Package codec is moat's MQTT 3.1, 3.1.1 and 5.0 wire format: packet types,
// properties, reason codes, a streaming reader that enforces a size limit
// before it allocates, strict decoders and encoders.
//
// Input is untrusted. Decoding is split in two: the Reader frames packets
// (fixed header, remaining length, size limit) and the Decode functions check
// syntax and the spec's semantic rules for one packet. Every error carries the
// MQTT 5 reason code the peer should be told (see Error).
//
// Decoded PUBLISH packets and properties hold views into the Reader's buffer
// ([]byte fields) so the forwarding path does not allocate; they are valid
// only until the next ReadPacket. Copy what must outlive the packet.
package codec

import "fmt"

// Version is the protocol level from CONNECT.
type Version byte

const (
	V31  Version = 3 // MQTT 3.1, protocol name "MQIsdp"
	V311 Version = 4 // MQTT 3.1.1, protocol name "MQTT"
	V5   Version = 5 // MQTT 5.0, protocol name "MQTT"
)

func (v Version) String() string {
	switch v {
	case V31:
		return "3.1"
	case V311:
		return "3.1.1"
	case V5:
		return "5.0"
	}
	return fmt.Sprintf("unknown(%d)", byte(v))
}

// PacketType is the four high bits of the fixed header.
type PacketType byte

const (
	Reserved    PacketType = 0
	CONNECT     PacketType = 1
	CONNACK     PacketType = 2
	PUBLISH     PacketType = 3
	PUBACK      PacketType = 4
	PUBREC      PacketType = 5
	PUBREL      PacketType = 6
	PUBCOMP     PacketType = 7
	SUBSCRIBE   PacketType = 8
	SUBACK      PacketType = 9
	UNSUBSCRIBE PacketType = 10
	UNSUBACK    PacketType = 11
	PINGREQ     PacketType = 12
	PINGRESP    PacketType = 13
	DISCONNECT  PacketType = 14
	AUTH        PacketType = 15
)

var typeNames = [16]string{"RESERVED", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL",
	"PUBCOMP", "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT", "AUTH"}

func (t PacketType) String() string {
	if t < 16 {
		return typeNames[t]
	}
	return fmt.Sprintf("PacketType(%d)", byte(t))
}

// FromClient reports whether a client may send packets of type t.
func (t PacketType) FromClient() bool {
	switch t {
	case CONNECT, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT, AUTH:
		return true
	}
	return false
}

// FromServer reports whether a server may send packets of type t.
func (t PacketType) FromServer() bool {
	switch t {
	case CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, PINGRESP, DISCONNECT, AUTH:
		return true
	}
	return false
}

// Limits of the wire format.
const (
	// MaxRemainingLength is the largest value a four-byte variable byte integer holds.
	MaxRemainingLength = 268_435_455
	// MaxPacketSize is the largest packet the protocol can frame: 1 type byte,
	// 4 length bytes and the body.
	MaxPacketSize = 1 + 4 + MaxRemainingLength
	// MaxTopicAlias bounds the alias values the codec accepts; the session
	// enforces the negotiated Topic Alias Maximum.
	MaxTopicAlias = 65535
)
