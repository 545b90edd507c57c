package codec

import (
	"bytes"
	"strconv"
)

// Packet is any decoded MQTT control packet.
type Packet interface {
	Type() PacketType
	// Append appends the packet encoded for protocol version v to dst.
	Append(dst []byte, v Version) ([]byte, error)
}

var (
	_ Packet = (*Connect)(nil)
	_ Packet = (*Connack)(nil)
	_ Packet = (*Publish)(nil)
	_ Packet = (*Ack)(nil)
	_ Packet = (*Subscribe)(nil)
	_ Packet = (*Suback)(nil)
	_ Packet = (*Unsubscribe)(nil)
	_ Packet = (*Unsuback)(nil)
	_ Packet = (*Ping)(nil)
	_ Packet = (*Disconnect)(nil)
	_ Packet = (*Auth)(nil)
)

// Will is the will message carried by CONNECT.
type Will struct {
	Properties Properties // MQTT 5 will properties
	Topic      string
	Payload    []byte
	QoS        byte
	Retain     bool
}

// Connect is a CONNECT packet. DecodeConnect copies the body, so the byte
// slices of a decoded Connect stay valid after the next read.
type Connect struct {
	ProtocolName string // "MQTT", or "MQIsdp" for 3.1
	Version      Version
	CleanStart   bool
	KeepAlive    uint16
	Properties   Properties
	ClientID     string
	Will         *Will // nil when the will flag is clear
	HasUsername  bool
	Username     string
	HasPassword  bool
	Password     []byte
}

func (*Connect) Type() PacketType { return CONNECT }

// DecodeConnect decodes a CONNECT frame and learns the protocol version
// from it. On error the returned Connect is non-nil when the version could
// be read, so the caller can answer in the client's protocol (an error with
// code UnsupportedProtocolVersion means the name/level pair is unknown).
func DecodeConnect(f Frame) (*Connect, error) {
	if f.Type != CONNECT {
		return nil, protoErr("MQTT-3.1.0-1", "first packet must be CONNECT, got %s", f.Type)
	}
	d := decoder{b: bytes.Clone(f.Body)}
	name, err := d.str("protocol name")
	if err != nil {
		return nil, err
	}
	level, err := d.u8("protocol level")
	if err != nil {
		return nil, err
	}
	c := &Connect{ProtocolName: string(name), Version: Version(level)}
	switch {
	case c.ProtocolName == "MQTT" && (c.Version == V311 || c.Version == V5):
	case c.ProtocolName == "MQIsdp" && c.Version == V31:
	default:
		// [MQTT-3.1.2-1] [MQTT-3.1.2-2] unknown name/level: refuse the version.
		return c, codeErr(UnsupportedProtocolVersion, "MQTT-3.1.2-2",
			"unsupported protocol name/level %q/%d (want MQIsdp/3, MQTT/4 or MQTT/5)", name, level)
	}
	flags, err := d.u8("connect flags")
	if err != nil {
		return c, err
	}
	if flags&0x01 != 0 {
		// [MQTT-3.1.2-3] the reserved flag must be 0.
		return c, malformed("MQTT-3.1.2-3", "CONNECT reserved flag is set")
	}
	c.CleanStart = flags&0x02 != 0
	willFlag := flags&0x04 != 0
	willQoS := (flags >> 3) & 0x03
	willRetain := flags&0x20 != 0
	c.HasPassword = flags&0x40 != 0
	c.HasUsername = flags&0x80 != 0
	if !willFlag && (willQoS != 0 || willRetain) {
		// [MQTT-3.1.2-11] [MQTT-3.1.2-13]
		return c, malformed("MQTT-3.1.2-11", "will QoS or will retain set without the will flag")
	}
	if willQoS == 3 {
		// [MQTT-3.1.2-12]
		return c, malformed("MQTT-3.1.2-12", "will QoS 3")
	}
	if c.Version == V311 && c.HasPassword && !c.HasUsername {
		// [MQTT-3.1.2-22] (3.1.1) no password without a user name.
		return c, malformed("MQTT-3.1.2-22", "password flag set without the user name flag")
	}
	if c.KeepAlive, err = d.u16("keep alive"); err != nil {
		return c, err
	}
	if c.Version == V5 {
		if err := decodeProps(&d, &c.Properties, CONNECT); err != nil {
			return c, err
		}
		if c.Properties.Has(PropAuthData) && !c.Properties.Has(PropAuthMethod) {
			return c, protoErr("MQTT-3.1.2.11.10", "Authentication Data without an Authentication Method")
		}
	}
	id, err := d.str("client identifier")
	if err != nil {
		return c, err
	}
	c.ClientID = string(id)
	if c.ClientID == "" {
		switch {
		case c.Version == V31:
			return c, codeErr(ClientIdentifierNotValid, "MQTT-3.1.3-3", "MQTT 3.1 requires a client identifier")
		case c.Version == V311 && !c.CleanStart:
			// [MQTT-3.1.3-8] an empty client id needs a clean session.
			return c, codeErr(ClientIdentifierNotValid, "MQTT-3.1.3-8", "empty client identifier with clean session 0")
		}
	}
	if willFlag {
		w := &Will{QoS: willQoS, Retain: willRetain}
		if c.Version == V5 {
			if err := decodeProps(&d, &w.Properties, propWill); err != nil {
				return c, err
			}
		}
		topic, err := d.str("will topic")
		if err != nil {
			return c, err
		}
		if err := checkTopicName(topic, false); err != nil {
			return c, err
		}
		w.Topic = string(topic)
		if w.Payload, err = d.bin("will payload"); err != nil {
			return c, err
		}
		c.Will = w
	}
	if c.HasUsername {
		u, err := d.str("user name")
		if err != nil {
			return c, err
		}
		c.Username = string(u)
	}
	if c.HasPassword {
		if c.Password, err = d.bin("password"); err != nil {
			return c, err
		}
	}
	if d.remaining() != 0 {
		return c, malformed("MQTT-3.1.3", "%d unexpected bytes after the CONNECT payload", d.remaining())
	}
	return c, nil
}

func (c *Connect) Append(dst []byte, _ Version) ([]byte, error) {
	v := c.Version
	start := len(dst)
	dst = reserve(dst)
	name := c.ProtocolName
	if name == "" {
		name = "MQTT"
		if v == V31 {
			name = "MQIsdp"
		}
	}
	dst = appendStr(dst, name)
	dst = append(dst, byte(v))
	var flags byte
	if c.CleanStart {
		flags |= 0x02
	}
	if c.Will != nil {
		flags |= 0x04 | c.Will.QoS<<3
		if c.Will.Retain {
			flags |= 0x20
		}
	}
	if c.HasPassword {
		flags |= 0x40
	}
	if c.HasUsername {
		flags |= 0x80
	}
	dst = append(dst, flags)
	dst = appendU16(dst, c.KeepAlive)
	if v == V5 {
		if err := checkProps(&c.Properties, CONNECT); err != nil {
			return dst[:start], err
		}
		dst = appendProps(dst, &c.Properties)
	}
	dst = appendStr(dst, c.ClientID)
	if c.Will != nil {
		if v == V5 {
			if err := checkProps(&c.Will.Properties, propWill); err != nil {
				return dst[:start], err
			}
			dst = appendProps(dst, &c.Will.Properties)
		}
		dst = appendStr(dst, c.Will.Topic)
		dst = appendBin(dst, c.Will.Payload)
	}
	if c.HasUsername {
		dst = appendStr(dst, c.Username)
	}
	if c.HasPassword {
		dst = appendBin(dst, c.Password)
	}
	return finish(dst, start, byte(CONNECT)<<4)
}

// Connack is a CONNACK packet. ReasonCode is the 3.x return code or the
// MQTT 5 reason code, depending on the version.
type Connack struct {
	SessionPresent bool
	ReasonCode     byte
	Properties     Properties
}

func (*Connack) Type() PacketType { return CONNACK }

var connackCodes = codeSet(0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C,
	0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F)

func (p *Connack) decode(f Frame, v Version) error {
	d := decoder{b: f.Body}
	flags, err := d.u8("acknowledge flags")
	if err != nil {
		return err
	}
	if v != V31 && flags&0xfe != 0 {
		// [MQTT-3.2.2-1] reserved acknowledge flags are 0.
		return malformed("MQTT-3.2.2-1", "CONNACK reserved flags set: %08b", flags)
	}
	p.SessionPresent = v != V31 && flags&0x01 != 0
	if p.ReasonCode, err = d.u8("connect reason code"); err != nil {
		return err
	}
	if v == V5 {
		if !connackCodes.has(p.ReasonCode) {
			return protoErr("MQTT-3.2.2.2", "invalid CONNACK reason code 0x%02X", p.ReasonCode)
		}
		if err := decodeProps(&d, &p.Properties, CONNACK); err != nil {
			return err
		}
	} else if p.ReasonCode > ConnRefusedNotAuthorized311 {
		return malformed("MQTT-3.2.2.3", "invalid CONNACK return code %d", p.ReasonCode)
	}
	if p.SessionPresent && p.ReasonCode != 0 {
		// [MQTT-3.2.2-6]
		return protoErr("MQTT-3.2.2-6", "CONNACK refuses the connection but reports a present session")
	}
	return d.end(CONNACK)
}

func (p *Connack) Append(dst []byte, v Version) ([]byte, error) {
	start := len(dst)
	dst = reserve(dst)
	var flags byte
	if p.SessionPresent && v != V31 {
		flags = 1
	}
	dst = append(dst, flags, p.ReasonCode)
	if v == V5 {
		if err := checkProps(&p.Properties, CONNACK); err != nil {
			return dst[:start], err
		}
		dst = appendProps(dst, &p.Properties)
	}
	return finish(dst, start, byte(CONNACK)<<4)
}

// Publish is a PUBLISH packet. Topic, Payload and the properties are views
// into the frame they were decoded from.
type Publish struct {
	Dup        bool
	QoS        byte
	Retain     bool
	Topic      []byte
	PacketID   uint16
	Properties Properties
	Payload    []byte
}

func (*Publish) Type() PacketType { return PUBLISH }

// DecodePublish decodes a PUBLISH frame into p without allocating (beyond
// growing p's property slices the first time they are needed).
func DecodePublish(p *Publish, f Frame, v Version) error {
	p.Dup = f.Flags&0x08 != 0
	p.QoS = (f.Flags >> 1) & 0x03
	p.Retain = f.Flags&0x01 != 0
	if p.QoS == 3 {
		return malformed("MQTT-3.3.1-4", "PUBLISH with QoS 3")
	}
	d := decoder{b: f.Body}
	topic, err := d.bin("topic name")
	if err != nil {
		return err
	}
	p.Topic = topic
	p.PacketID = 0
	if p.QoS > 0 {
		if p.PacketID, err = d.u16("packet identifier"); err != nil {
			return err
		}
		if p.PacketID == 0 {
			// [MQTT-2.2.1-3] QoS 1 and 2 need a non-zero packet identifier.
			return malformed("MQTT-2.2.1-3", "PUBLISH QoS %d with packet identifier 0", p.QoS)
		}
	}
	if v == V5 {
		if err := decodeProps(&d, &p.Properties, PUBLISH); err != nil {
			return err
		}
	} else {
		p.Properties.reset()
	}
	// [MQTT-3.3.2-1] topic name must be present unless a topic alias stands
	// for it (MQTT 5 only).
	if err := checkTopicName(topic, v == V5 && p.Properties.Has(PropTopicAlias)); err != nil {
		return err
	}
	p.Payload = d.b[d.off:]
	return nil
}

func (p *Publish) Append(dst []byte, v Version) ([]byte, error) {
	start := len(dst)
	dst = reserve(dst)
	if len(p.Topic) > 65535 {
		return dst[:start], malformed("MQTT-1.5.4", "topic name longer than 65,535 bytes")
	}
	dst = appendBin(dst, p.Topic)
	if p.QoS > 0 {
		dst = appendU16(dst, p.PacketID)
	}
	if v == V5 {
		if err := checkProps(&p.Properties, PUBLISH); err != nil {
			return dst[:start], err
		}
		dst = appendProps(dst, &p.Properties)
	}
	dst = append(dst, p.Payload...)
	first := byte(PUBLISH)<<4 | p.QoS<<1
	if p.Dup {
		first |= 0x08
	}
	if p.Retain {
		first |= 0x01
	}
	return finish(dst, start, first)
}

// Ack is PUBACK, PUBREC, PUBREL or PUBCOMP: a packet identifier and, in
// MQTT 5, a reason code and properties.
type Ack struct {
	PacketType PacketType
	PacketID   uint16
	ReasonCode ReasonCode
	Properties Properties
}

func (a *Ack) Type() PacketType { return a.PacketType }

var (
	pubackCodes = codeSet(0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99)
	pubrelCodes = codeSet(0x00, 0x92)
)

// DecodeAck decodes a PUBACK, PUBREC, PUBREL or PUBCOMP frame into a.
func DecodeAck(a *Ack, f Frame, v Version) error {
	a.PacketType = f.Type
	a.ReasonCode = Success
	a.Properties.reset()
	d := decoder{b: f.Body}
	var err error
	if a.PacketID, err = d.u16("packet identifier"); err != nil {
		return err
	}
	if a.PacketID == 0 {
		return malformed("MQTT-2.2.1-3", "%s with packet identifier 0", f.Type)
	}
	if v != V5 {
		return d.end(f.Type)
	}
	if d.remaining() == 0 {
		return nil // [MQTT-3.4.2.1] reason code omitted means success
	}
	rc, err := d.u8("reason code")
	if err != nil {
		return err
	}
	a.ReasonCode = ReasonCode(rc)
	valid := pubackCodes
	if f.Type == PUBREL || f.Type == PUBCOMP {
		valid = pubrelCodes
	}
	if !valid.has(rc) {
		return protoErr("MQTT-3.4.2.1", "invalid %s reason code 0x%02X", f.Type, rc)
	}
	if d.remaining() == 0 {
		return nil
	}
	if err := decodeProps(&d, &a.Properties, f.Type); err != nil {
		return err
	}
	return d.end(f.Type)
}

func (a *Ack) Append(dst []byte, v Version) ([]byte, error) {
	if v == V5 {
		valid := pubackCodes
		if a.PacketType == PUBREL || a.PacketType == PUBCOMP {
			valid = pubrelCodes
		}
		if !valid.has(byte(a.ReasonCode)) {
			// [MQTT-3.4.2.1] encode only what a receiver may accept.
			return dst, protoErr("MQTT-3.4.2.1", "invalid %s reason code 0x%02X", a.PacketType, byte(a.ReasonCode))
		}
	}
	start := len(dst)
	dst = reserve(dst)
	dst = appendU16(dst, a.PacketID)
	if v == V5 && (a.ReasonCode != Success || !a.Properties.Empty()) {
		dst = append(dst, byte(a.ReasonCode))
		if !a.Properties.Empty() {
			if err := checkProps(&a.Properties, a.PacketType); err != nil {
				return dst[:start], err
			}
			dst = appendProps(dst, &a.Properties)
		}
	}
	first := byte(a.PacketType) << 4
	if a.PacketType == PUBREL {
		first |= 0x02
	}
	return finish(dst, start, first)
}

// Subscription is one topic filter of a SUBSCRIBE with its options.
type Subscription struct {
	Filter            string
	QoS               byte
	NoLocal           bool
	RetainAsPublished bool
	RetainHandling    byte
}

// Subscribe is a SUBSCRIBE packet.
type Subscribe struct {
	PacketID      uint16
	Properties    Properties
	Subscriptions []Subscription
}

func (*Subscribe) Type() PacketType { return SUBSCRIBE }

func (p *Subscribe) decode(f Frame, v Version) error {
	d := decoder{b: bytes.Clone(f.Body)}
	var err error
	if p.PacketID, err = d.u16("packet identifier"); err != nil {
		return err
	}
	if p.PacketID == 0 {
		return malformed("MQTT-2.2.1-3", "SUBSCRIBE with packet identifier 0")
	}
	if v == V5 {
		if err := decodeProps(&d, &p.Properties, SUBSCRIBE); err != nil {
			return err
		}
	}
	for d.remaining() > 0 {
		filter, err := d.str("topic filter")
		if err != nil {
			return err
		}
		opts, err := d.u8("subscription options")
		if err != nil {
			return err
		}
		s := Subscription{Filter: string(filter), QoS: opts & 0x03}
		if s.QoS == 3 {
			// [MQTT-3.8.3-4] QoS 3 is malformed.
			return malformed("MQTT-3.8.3-4", "subscription to %q with QoS 3", s.Filter)
		}
		if v == V5 {
			if opts&0xc0 != 0 {
				// [MQTT-3.8.3-5] reserved bits are 0.
				return malformed("MQTT-3.8.3-5", "subscription options reserved bits set: %08b", opts)
			}
			s.NoLocal = opts&0x04 != 0
			s.RetainAsPublished = opts&0x08 != 0
			s.RetainHandling = (opts >> 4) & 0x03
			if s.RetainHandling == 3 {
				return protoErr("MQTT-3.8.3.1", "retain handling 3 for %q", s.Filter)
			}
		} else if opts&0xfc != 0 {
			// [MQTT-3-8.3-4] (3.1.1) upper six bits are 0.
			return malformed("MQTT-3.8.3-4", "subscription options reserved bits set: %08b", opts)
		}
		if err := ValidFilter(s.Filter); err != nil {
			return err
		}
		if _, _, shared := SplitShared(s.Filter); shared && s.NoLocal {
			// [MQTT-3.8.3-4] (5.0) No Local on a shared subscription.
			return protoErr("MQTT-3.8.3-4", "No Local set on shared subscription %q", s.Filter)
		}
		p.Subscriptions = append(p.Subscriptions, s)
	}
	if len(p.Subscriptions) == 0 {
		// [MQTT-3.8.3-3] at least one filter.
		return protoErr("MQTT-3.8.3-3", "SUBSCRIBE without topic filters")
	}
	return nil
}

func (p *Subscribe) Append(dst []byte, v Version) ([]byte, error) {
	start := len(dst)
	dst = reserve(dst)
	dst = appendU16(dst, p.PacketID)
	if v == V5 {
		if err := checkProps(&p.Properties, SUBSCRIBE); err != nil {
			return dst[:start], err
		}
		dst = appendProps(dst, &p.Properties)
	}
	for _, s := range p.Subscriptions {
		dst = appendStr(dst, s.Filter)
		opts := s.QoS
		if v == V5 {
			if s.NoLocal {
				opts |= 0x04
			}
			if s.RetainAsPublished {
				opts |= 0x08
			}
			opts |= s.RetainHandling << 4
		}
		dst = append(dst, opts)
	}
	return finish(dst, start, byte(SUBSCRIBE)<<4|0x02)
}

// Suback is a SUBACK packet; ReasonCodes are 3.x return codes or MQTT 5
// reason codes, one per filter of the SUBSCRIBE.
type Suback struct {
	PacketID    uint16
	Properties  Properties
	ReasonCodes []byte
}

func (*Suback) Type() PacketType { return SUBACK }

var (
	subackCodes5   = codeSet(0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2)
	subackCodes311 = codeSet(0x00, 0x01, 0x02, 0x80)
	unsubackCodes  = codeSet(0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91)
)

func (p *Suback) decode(f Frame, v Version) error {
	d := decoder{b: f.Body}
	var err error
	if p.PacketID, err = d.u16("packet identifier"); err != nil {
		return err
	}
	if p.PacketID == 0 {
		return malformed("MQTT-2.2.1-3", "SUBACK with packet identifier 0")
	}
	valid := subackCodes311
	if v == V5 {
		valid = subackCodes5
		if err := decodeProps(&d, &p.Properties, SUBACK); err != nil {
			return err
		}
	}
	p.ReasonCodes = bytes.Clone(d.b[d.off:])
	if len(p.ReasonCodes) == 0 {
		return protoErr("MQTT-3.9.3", "SUBACK without reason codes")
	}
	for _, c := range p.ReasonCodes {
		if !valid.has(c) {
			return protoErr("MQTT-3.9.3", "invalid SUBACK reason code 0x%02X", c)
		}
	}
	return nil
}

func (p *Suback) Append(dst []byte, v Version) ([]byte, error) {
	start := len(dst)
	dst = reserve(dst)
	dst = appendU16(dst, p.PacketID)
	if v == V5 {
		if err := checkProps(&p.Properties, SUBACK); err != nil {
			return dst[:start], err
		}
		dst = appendProps(dst, &p.Properties)
	}
	dst = append(dst, p.ReasonCodes...)
	return finish(dst, start, byte(SUBACK)<<4)
}

// Unsubscribe is an UNSUBSCRIBE packet.
type Unsubscribe struct {
	PacketID   uint16
	Properties Properties
	Filters    []string
}

func (*Unsubscribe) Type() PacketType { return UNSUBSCRIBE }

func (p *Unsubscribe) decode(f Frame, v Version) error {
	d := decoder{b: bytes.Clone(f.Body)}
	var err error
	if p.PacketID, err = d.u16("packet identifier"); err != nil {
		return err
	}
	if p.PacketID == 0 {
		return malformed("MQTT-2.2.1-3", "UNSUBSCRIBE with packet identifier 0")
	}
	if v == V5 {
		if err := decodeProps(&d, &p.Properties, UNSUBSCRIBE); err != nil {
			return err
		}
	}
	for d.remaining() > 0 {
		filter, err := d.str("topic filter")
		if err != nil {
			return err
		}
		if err := ValidFilter(string(filter)); err != nil {
			return err
		}
		p.Filters = append(p.Filters, string(filter))
	}
	if len(p.Filters) == 0 {
		// [MQTT-3.10.3-2] at least one filter.
		return protoErr("MQTT-3.10.3-2", "UNSUBSCRIBE without topic filters")
	}
	return nil
}

func (p *Unsubscribe) Append(dst []byte, v Version) ([]byte, error) {
	start := len(dst)
	dst = reserve(dst)
	dst = appendU16(dst, p.PacketID)
	if v == V5 {
		if err := checkProps(&p.Properties, UNSUBSCRIBE); err != nil {
			return dst[:start], err
		}
		dst = appendProps(dst, &p.Properties)
	}
	for _, s := range p.Filters {
		dst = appendStr(dst, s)
	}
	return finish(dst, start, byte(UNSUBSCRIBE)<<4|0x02)
}

// Unsuback is an UNSUBACK packet. MQTT 3.x UNSUBACKs carry no reason codes.
type Unsuback struct {
	PacketID    uint16
	Properties  Properties
	ReasonCodes []byte
}

func (*Unsuback) Type() PacketType { return UNSUBACK }

func (p *Unsuback) decode(f Frame, v Version) error {
	d := decoder{b: f.Body}
	var err error
	if p.PacketID, err = d.u16("packet identifier"); err != nil {
		return err
	}
	if p.PacketID == 0 {
		return malformed("MQTT-2.2.1-3", "UNSUBACK with packet identifier 0")
	}
	if v != V5 {
		return d.end(UNSUBACK)
	}
	if err := decodeProps(&d, &p.Properties, UNSUBACK); err != nil {
		return err
	}
	p.ReasonCodes = bytes.Clone(d.b[d.off:])
	if len(p.ReasonCodes) == 0 {
		return protoErr("MQTT-3.11.3", "UNSUBACK without reason codes")
	}
	for _, c := range p.ReasonCodes {
		if !unsubackCodes.has(c) {
			return protoErr("MQTT-3.11.3", "invalid UNSUBACK reason code 0x%02X", c)
		}
	}
	return nil
}

func (p *Unsuback) Append(dst []byte, v Version) ([]byte, error) {
	start := len(dst)
	dst = reserve(dst)
	dst = appendU16(dst, p.PacketID)
	if v == V5 {
		if err := checkProps(&p.Properties, UNSUBACK); err != nil {
			return dst[:start], err
		}
		dst = appendProps(dst, &p.Properties)
		dst = append(dst, p.ReasonCodes...)
	}
	return finish(dst, start, byte(UNSUBACK)<<4)
}

// Ping is PINGREQ or PINGRESP.
type Ping struct{ PacketType PacketType }

func (p *Ping) Type() PacketType { return p.PacketType }

func (p *Ping) Append(dst []byte, _ Version) ([]byte, error) {
	return append(dst, byte(p.PacketType)<<4, 0), nil
}

// Disconnect is a DISCONNECT packet. 3.x DISCONNECTs are empty.
type Disconnect struct {
	ReasonCode ReasonCode
	Properties Properties
}

func (*Disconnect) Type() PacketType { return DISCONNECT }

var disconnectCodes = codeSet(0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90,
	0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2)

func (p *Disconnect) decode(f Frame, v Version) error {
	d := decoder{b: f.Body}
	if v != V5 || d.remaining() == 0 {
		return d.end(DISCONNECT)
	}
	rc, err := d.u8("reason code")
	if err != nil {
		return err
	}
	if !disconnectCodes.has(rc) {
		return protoErr("MQTT-3.14.2.1", "invalid DISCONNECT reason code 0x%02X", rc)
	}
	p.ReasonCode = ReasonCode(rc)
	if d.remaining() == 0 {
		return nil
	}
	if err := decodeProps(&d, &p.Properties, DISCONNECT); err != nil {
		return err
	}
	return d.end(DISCONNECT)
}

func (p *Disconnect) Append(dst []byte, v Version) ([]byte, error) {
	if v != V5 {
		return append(dst, byte(DISCONNECT)<<4, 0), nil
	}
	if !disconnectCodes.has(byte(p.ReasonCode)) {
		// [MQTT-3.14.2.1] encode only what a receiver may accept.
		return dst, protoErr("MQTT-3.14.2.1", "invalid DISCONNECT reason code 0x%02X", byte(p.ReasonCode))
	}
	start := len(dst)
	dst = reserve(dst)
	if p.ReasonCode != Success || !p.Properties.Empty() {
		dst = append(dst, byte(p.ReasonCode))
		if !p.Properties.Empty() {
			if err := checkProps(&p.Properties, DISCONNECT); err != nil {
				return dst[:start], err
			}
			dst = appendProps(dst, &p.Properties)
		}
	}
	return finish(dst, start, byte(DISCONNECT)<<4)
}

// Auth is an MQTT 5 AUTH packet.
type Auth struct {
	ReasonCode ReasonCode
	Properties Properties
}

func (*Auth) Type() PacketType { return AUTH }

var authCodes = codeSet(0x00, 0x18, 0x19)

func (p *Auth) decode(f Frame, v Version) error {
	if v != V5 {
		return malformed("MQTT-2.1.2", "AUTH is an MQTT 5 packet; not valid in %s", v)
	}
	d := decoder{b: f.Body}
	if d.remaining() > 0 {
		rc, err := d.u8("reason code")
		if err != nil {
			return err
		}
		if !authCodes.has(rc) {
			return protoErr("MQTT-3.15.2.1", "invalid AUTH reason code 0x%02X", rc)
		}
		p.ReasonCode = ReasonCode(rc)
		if d.remaining() > 0 {
			if err := decodeProps(&d, &p.Properties, AUTH); err != nil {
				return err
			}
		}
	}
	if !p.Properties.Has(PropAuthMethod) {
		// [MQTT-3.15.2.2.2] AUTH always names its method; a bare AUTH has none.
		return protoErr("MQTT-3.15.2.2.2", "AUTH without an Authentication Method")
	}
	return d.end(AUTH)
}

func (p *Auth) Append(dst []byte, _ Version) ([]byte, error) {
	start := len(dst)
	dst = reserve(dst)
	dst = append(dst, byte(p.ReasonCode))
	if err := checkProps(&p.Properties, AUTH); err != nil {
		return dst[:start], err
	}
	dst = appendProps(dst, &p.Properties)
	return finish(dst, start, byte(AUTH)<<4)
}

// Decode decodes any frame other than CONNECT for protocol version v into a
// newly allocated packet. The forwarding path uses DecodePublish and
// DecodeAck instead, which reuse the caller's structs.
func Decode(f Frame, v Version) (Packet, error) {
	if err := checkFixedHeader(f.Type, f.Flags); err != nil {
		return nil, err
	}
	switch f.Type {
	case CONNECT:
		// [MQTT-3.1.0-2] a second CONNECT is a protocol error.
		return nil, protoErr("MQTT-3.1.0-2", "CONNECT after the connection was established")
	case CONNACK:
		p := &Connack{}
		return p, p.decode(f, v)
	case PUBLISH:
		p := &Publish{}
		return p, DecodePublish(p, f, v)
	case PUBACK, PUBREC, PUBREL, PUBCOMP:
		p := &Ack{}
		return p, DecodeAck(p, f, v)
	case SUBSCRIBE:
		p := &Subscribe{}
		return p, p.decode(f, v)
	case SUBACK:
		p := &Suback{}
		return p, p.decode(f, v)
	case UNSUBSCRIBE:
		p := &Unsubscribe{}
		return p, p.decode(f, v)
	case UNSUBACK:
		p := &Unsuback{}
		return p, p.decode(f, v)
	case PINGREQ, PINGRESP:
		if len(f.Body) != 0 {
			return nil, malformed("MQTT-3.12.1", "%s with a body of %d bytes", f.Type, len(f.Body))
		}
		return &Ping{PacketType: f.Type}, nil
	case DISCONNECT:
		p := &Disconnect{}
		return p, p.decode(f, v)
	case AUTH:
		p := &Auth{}
		return p, p.decode(f, v)
	}
	return nil, malformed("MQTT-2.1.2", "reserved packet type %d", f.Type)
}

// end reports trailing bytes after the last field.
func (d *decoder) end(t PacketType) error {
	if d.remaining() != 0 {
		return malformed("MQTT-2.1", "%s has %d unexpected trailing bytes", t, d.remaining())
	}
	return nil
}

// reserve leaves room for the largest fixed header; finish moves the
// header next to the body.
func reserve(dst []byte) []byte { return append(dst, 0, 0, 0, 0, 0) }

func finish(dst []byte, start int, first byte) ([]byte, error) {
	rl := len(dst) - start - 5
	if rl > MaxRemainingLength {
		return dst[:start], &Error{Code: PacketTooLarge, Msg: "encoded packet needs a remaining length of " + strconv.Itoa(rl)}
	}
	hl := 1 + varintLen(rl)
	h := dst[start+5-hl : start+5]
	h[0] = first
	appendVarint(h[1:1], rl)
	copy(dst[start:], dst[start+5-hl:])
	return dst[:len(dst)-(5-hl)], nil
}

// set256 is a set of byte values.
type set256 [4]uint64

func codeSet(codes ...byte) set256 {
	var s set256
	for _, c := range codes {
		s[c>>6] |= 1 << (c & 63)
	}
	return s
}

func (s *set256) has(c byte) bool { return s[c>>6]&(1<<(c&63)) != 0 }
