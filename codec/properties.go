package codec

// PropID identifies an MQTT 5 property (section 2.2.2.2).
type PropID byte

const (
	PropPayloadFormat        PropID     = 0x01
	PropMessageExpiry        PropID     = 0x02
	PropContentType          PropID     = 0x03
	PropResponseTopic        PropID     = 0x08
	PropCorrelationData      PropID     = 0x09
	PropSubscriptionID       PropID     = 0x0B
	PropSessionExpiry        PropID     = 0x11
	PropAssignedClientID     PropID     = 0x12
	PropServerKeepAlive      PropID     = 0x13
	PropAuthMethod           PropID     = 0x15
	PropAuthData             PropID     = 0x16
	PropRequestProblemInfo   PropID     = 0x17
	PropWillDelay            PropID     = 0x18
	PropRequestResponseInfo  PropID     = 0x19
	PropResponseInfo         PropID     = 0x1A
	PropServerReference      PropID     = 0x1C
	PropReasonString         PropID     = 0x1F
	PropReceiveMaximum       PropID     = 0x21
	PropTopicAliasMaximum    PropID     = 0x22
	PropTopicAlias           PropID     = 0x23
	PropMaximumQoS           PropID     = 0x24
	PropRetainAvailable      PropID     = 0x25
	PropUser                 PropID     = 0x26
	PropMaximumPacketSize    PropID     = 0x27
	PropWildcardSubAvailable PropID     = 0x28
	PropSubIDAvailable       PropID     = 0x29
	PropSharedSubAvailable   PropID     = 0x2A
	maxPropID                           = 0x2A
	propWill                 PacketType = 16 // pseudo packet type for will properties in CONNECT
)

type propKind byte

const (
	kByte propKind = iota + 1
	kU16
	kU32
	kVarint
	kString
	kBinary
	kPair
)

type propInfo struct {
	name    string
	kind    propKind
	allowed uint32 // bit per PacketType, bit 16 = will properties
	multi   uint32 // packets on which the property may repeat
}

func on(ts ...PacketType) uint32 {
	var m uint32
	for _, t := range ts {
		m |= 1 << t
	}
	return m
}

// propTable says which property may appear on which packet (MQTT 5
// section 2.2.2.2, table 2-4) and which may appear more than once.
var propTable = [maxPropID + 1]propInfo{
	PropPayloadFormat:        {"Payload Format Indicator", kByte, on(PUBLISH, propWill), 0},
	PropMessageExpiry:        {"Message Expiry Interval", kU32, on(PUBLISH, propWill), 0},
	PropContentType:          {"Content Type", kString, on(PUBLISH, propWill), 0},
	PropResponseTopic:        {"Response Topic", kString, on(PUBLISH, propWill), 0},
	PropCorrelationData:      {"Correlation Data", kBinary, on(PUBLISH, propWill), 0},
	PropSubscriptionID:       {"Subscription Identifier", kVarint, on(PUBLISH, SUBSCRIBE), on(PUBLISH)},
	PropSessionExpiry:        {"Session Expiry Interval", kU32, on(CONNECT, CONNACK, DISCONNECT), 0},
	PropAssignedClientID:     {"Assigned Client Identifier", kString, on(CONNACK), 0},
	PropServerKeepAlive:      {"Server Keep Alive", kU16, on(CONNACK), 0},
	PropAuthMethod:           {"Authentication Method", kString, on(CONNECT, CONNACK, AUTH), 0},
	PropAuthData:             {"Authentication Data", kBinary, on(CONNECT, CONNACK, AUTH), 0},
	PropRequestProblemInfo:   {"Request Problem Information", kByte, on(CONNECT), 0},
	PropWillDelay:            {"Will Delay Interval", kU32, on(propWill), 0},
	PropRequestResponseInfo:  {"Request Response Information", kByte, on(CONNECT), 0},
	PropResponseInfo:         {"Response Information", kString, on(CONNACK), 0},
	PropServerReference:      {"Server Reference", kString, on(CONNACK, DISCONNECT), 0},
	PropReasonString:         {"Reason String", kString, on(CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT, AUTH), 0},
	PropReceiveMaximum:       {"Receive Maximum", kU16, on(CONNECT, CONNACK), 0},
	PropTopicAliasMaximum:    {"Topic Alias Maximum", kU16, on(CONNECT, CONNACK), 0},
	PropTopicAlias:           {"Topic Alias", kU16, on(PUBLISH), 0},
	PropMaximumQoS:           {"Maximum QoS", kByte, on(CONNACK), 0},
	PropRetainAvailable:      {"Retain Available", kByte, on(CONNACK), 0},
	PropUser:                 {"User Property", kPair, on(CONNECT, CONNACK, PUBLISH, propWill, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT, AUTH), ^uint32(0)},
	PropMaximumPacketSize:    {"Maximum Packet Size", kU32, on(CONNECT, CONNACK), 0},
	PropWildcardSubAvailable: {"Wildcard Subscription Available", kByte, on(CONNACK), 0},
	PropSubIDAvailable:       {"Subscription Identifier Available", kByte, on(CONNACK), 0},
	PropSharedSubAvailable:   {"Shared Subscription Available", kByte, on(CONNACK), 0},
}

func (id PropID) String() string {
	if int(id) <= maxPropID && propTable[id].kind != 0 {
		return propTable[id].name
	}
	return "unknown property"
}

// AllowedOn reports whether property id may appear on packet type t.
// Will properties are asked for with willProps = true.
func AllowedOn(id PropID, t PacketType, willProps bool) bool {
	if int(id) > maxPropID || propTable[id].kind == 0 {
		return false
	}
	if willProps {
		t = propWill
	}
	return propTable[id].allowed&(1<<t) != 0
}

// UserProperty is one name/value pair. Both are views on decode.
type UserProperty struct {
	Key, Value []byte
}

// Properties holds the MQTT 5 properties of one packet. A property is
// present when Has reports so; zero values are meaningful for several of
// them. Byte-slice fields are views into the packet they were decoded from.
type Properties struct {
	present uint64

	PayloadFormat       byte
	MessageExpiry       uint32
	ContentType         []byte
	ResponseTopic       []byte
	CorrelationData     []byte
	SubscriptionIDs     []uint32
	SessionExpiry       uint32
	AssignedClientID    []byte
	ServerKeepAlive     uint16
	AuthMethod          []byte
	AuthData            []byte
	RequestProblemInfo  byte
	WillDelay           uint32
	RequestResponseInfo byte
	ResponseInfo        []byte
	ServerReference     []byte
	ReasonString        []byte
	ReceiveMaximum      uint16
	TopicAliasMaximum   uint16
	TopicAlias          uint16
	MaximumQoS          byte
	RetainAvailable     byte
	User                []UserProperty
	MaximumPacketSize   uint32
	WildcardSubAvail    byte
	SubIDAvail          byte
	SharedSubAvail      byte
}

// Has reports whether property id was present (or was Set for encoding).
func (p *Properties) Has(id PropID) bool { return p.present&(1<<id) != 0 }

// Set marks property id as present so the encoder writes it.
func (p *Properties) Set(id PropID) { p.present |= 1 << id }

// Clear marks property id as absent.
func (p *Properties) Clear(id PropID) { p.present &^= 1 << id }

// Empty reports whether no property is present.
func (p *Properties) Empty() bool { return p.present == 0 }

// reset empties p, keeping slice capacity for reuse.
func (p *Properties) reset() {
	subs, user := p.SubscriptionIDs[:0], p.User[:0]
	*p = Properties{SubscriptionIDs: subs, User: user}
}

// decodeProps reads a property length and the properties that follow, for
// packet type t (propWill for will properties).
func decodeProps(d *decoder, p *Properties, t PacketType) error {
	p.reset()
	n, err := d.varint("property length")
	if err != nil {
		return err
	}
	if int(n) > d.remaining() {
		return malformed("MQTT-2.2.2", "property length %d runs past the end of the packet (%d bytes left)", n, d.remaining())
	}
	end := d.off + int(n)
	pd := decoder{b: d.b[:end], off: d.off}
	for pd.off < end {
		idv, err := pd.varint("property identifier")
		if err != nil {
			return err
		}
		if idv > maxPropID || propTable[idv].kind == 0 {
			return malformed("MQTT-2.2.2.2", "unknown property identifier 0x%02X", idv)
		}
		id := PropID(idv)
		info := &propTable[id]
		where := t.String()
		if t == propWill {
			where = "will properties"
		}
		if info.allowed&(1<<t) == 0 {
			return malformed("MQTT-2.2.2.2", "%s is not allowed on %s", info.name, where)
		}
		if p.Has(id) && info.multi&(1<<t) == 0 {
			return protoErr("MQTT-2.2.2.2", "%s appears more than once on %s", info.name, where)
		}
		p.Set(id)
		if err := p.decodeOne(&pd, id, info); err != nil {
			return err
		}
	}
	d.off = end
	return nil
}

func (p *Properties) decodeOne(d *decoder, id PropID, info *propInfo) error {
	var (
		b8  byte
		b16 uint16
		b32 uint32
		bs  []byte
		err error
	)
	switch info.kind {
	case kByte:
		b8, err = d.u8(info.name)
	case kU16:
		b16, err = d.u16(info.name)
	case kU32:
		b32, err = d.u32(info.name)
	case kVarint:
		b32, err = d.varint(info.name)
	case kString:
		bs, err = d.str(info.name)
	case kBinary:
		bs, err = d.bin(info.name)
	case kPair:
		var k, v []byte
		if k, err = d.str("user property name"); err != nil {
			return err
		}
		if v, err = d.str("user property value"); err != nil {
			return err
		}
		p.User = append(p.User, UserProperty{Key: k, Value: v})
		return nil
	}
	if err != nil {
		return err
	}
	if info.kind == kByte && b8 > 1 && id != PropPayloadFormat {
		return protoErr("MQTT-3.1.2", "%s must be 0 or 1, got %d", info.name, b8)
	}
	switch id {
	case PropPayloadFormat:
		if b8 > 1 {
			return protoErr("MQTT-3.3.2.3.2", "Payload Format Indicator must be 0 or 1, got %d", b8)
		}
		p.PayloadFormat = b8
	case PropMessageExpiry:
		p.MessageExpiry = b32
	case PropContentType:
		p.ContentType = bs
	case PropResponseTopic:
		// [MQTT-3.3.2-13] the Response Topic must be a topic name.
		if err := checkTopicName(bs, false); err != nil {
			return err
		}
		p.ResponseTopic = bs
	case PropCorrelationData:
		p.CorrelationData = bs
	case PropSubscriptionID:
		if b32 == 0 {
			return protoErr("MQTT-3.8.2.1.2", "Subscription Identifier 0 is not allowed")
		}
		p.SubscriptionIDs = append(p.SubscriptionIDs, b32)
	case PropSessionExpiry:
		p.SessionExpiry = b32
	case PropAssignedClientID:
		p.AssignedClientID = bs
	case PropServerKeepAlive:
		p.ServerKeepAlive = b16
	case PropAuthMethod:
		p.AuthMethod = bs
	case PropAuthData:
		p.AuthData = bs
	case PropRequestProblemInfo:
		p.RequestProblemInfo = b8
	case PropWillDelay:
		p.WillDelay = b32
	case PropRequestResponseInfo:
		p.RequestResponseInfo = b8
	case PropResponseInfo:
		p.ResponseInfo = bs
	case PropServerReference:
		p.ServerReference = bs
	case PropReasonString:
		p.ReasonString = bs
	case PropReceiveMaximum:
		if b16 == 0 {
			return protoErr("MQTT-3.1.2.11.3", "Receive Maximum 0 is not allowed")
		}
		p.ReceiveMaximum = b16
	case PropTopicAliasMaximum:
		p.TopicAliasMaximum = b16
	case PropTopicAlias:
		if b16 == 0 {
			// [MQTT-3.3.2-8] a Topic Alias of 0 is not permitted.
			return codeErr(TopicAliasInvalid, "MQTT-3.3.2-8", "Topic Alias 0 is not allowed")
		}
		p.TopicAlias = b16
	case PropMaximumQoS:
		p.MaximumQoS = b8
	case PropRetainAvailable:
		p.RetainAvailable = b8
	case PropMaximumPacketSize:
		if b32 == 0 {
			return protoErr("MQTT-3.1.2.11.4", "Maximum Packet Size 0 is not allowed")
		}
		p.MaximumPacketSize = b32
	case PropWildcardSubAvailable:
		p.WildcardSubAvail = b8
	case PropSubIDAvailable:
		p.SubIDAvail = b8
	case PropSharedSubAvailable:
		p.SharedSubAvail = b8
	}
	return nil
}

// appendProps writes the property length and the present properties in
// identifier order (user properties and subscription identifiers in the
// order held).
func appendProps(dst []byte, p *Properties) []byte {
	if p == nil || p.present == 0 {
		return append(dst, 0)
	}
	n := propsLen(p)
	dst = appendVarint(dst, n)
	for id := PropID(1); id <= maxPropID; id++ {
		if !p.Has(id) {
			continue
		}
		info := &propTable[id]
		switch id {
		case PropUser:
			for _, u := range p.User {
				dst = append(dst, byte(id))
				dst = appendBin(dst, u.Key)
				dst = appendBin(dst, u.Value)
			}
			continue
		case PropSubscriptionID:
			for _, s := range p.SubscriptionIDs {
				dst = append(dst, byte(id))
				dst = appendVarint(dst, int(s))
			}
			continue
		}
		dst = append(dst, byte(id))
		switch info.kind {
		case kByte:
			dst = append(dst, p.byteProp(id))
		case kU16:
			dst = appendU16(dst, p.u16Prop(id))
		case kU32:
			dst = appendU32(dst, p.u32Prop(id))
		case kString, kBinary:
			dst = appendBin(dst, p.bytesProp(id))
		}
	}
	return dst
}

// propsLen is the encoded size of the properties, without their length prefix.
func propsLen(p *Properties) int {
	n := 0
	for id := PropID(1); id <= maxPropID; id++ {
		if !p.Has(id) {
			continue
		}
		switch propTable[id].kind {
		case kByte:
			n += 2
		case kU16:
			n += 3
		case kU32:
			n += 5
		case kString, kBinary:
			n += 3 + len(p.bytesProp(id))
		case kVarint:
			for _, s := range p.SubscriptionIDs {
				n += 1 + varintLen(int(s))
			}
		case kPair:
			for _, u := range p.User {
				n += 5 + len(u.Key) + len(u.Value)
			}
		}
	}
	return n
}

// checkProps validates properties set by a caller before encoding.
func checkProps(p *Properties, t PacketType) error {
	if p == nil {
		return nil
	}
	for id := PropID(1); id <= maxPropID; id++ {
		if !p.Has(id) {
			continue
		}
		if propTable[id].kind == 0 || propTable[id].allowed&(1<<t) == 0 {
			return malformed("MQTT-2.2.2.2", "cannot encode %s on %s", id, t)
		}
		switch propTable[id].kind {
		case kString, kBinary:
			if len(p.bytesProp(id)) > 65535 {
				return malformed("MQTT-1.5.6", "%s longer than 65,535 bytes", id)
			}
		}
	}
	for _, u := range p.User {
		if len(u.Key) > 65535 || len(u.Value) > 65535 {
			return malformed("MQTT-1.5.7", "user property longer than 65,535 bytes")
		}
	}
	return nil
}

func (p *Properties) byteProp(id PropID) byte {
	switch id {
	case PropPayloadFormat:
		return p.PayloadFormat
	case PropRequestProblemInfo:
		return p.RequestProblemInfo
	case PropRequestResponseInfo:
		return p.RequestResponseInfo
	case PropMaximumQoS:
		return p.MaximumQoS
	case PropRetainAvailable:
		return p.RetainAvailable
	case PropWildcardSubAvailable:
		return p.WildcardSubAvail
	case PropSubIDAvailable:
		return p.SubIDAvail
	case PropSharedSubAvailable:
		return p.SharedSubAvail
	}
	return 0
}

func (p *Properties) u16Prop(id PropID) uint16 {
	switch id {
	case PropServerKeepAlive:
		return p.ServerKeepAlive
	case PropReceiveMaximum:
		return p.ReceiveMaximum
	case PropTopicAliasMaximum:
		return p.TopicAliasMaximum
	case PropTopicAlias:
		return p.TopicAlias
	}
	return 0
}

func (p *Properties) u32Prop(id PropID) uint32 {
	switch id {
	case PropMessageExpiry:
		return p.MessageExpiry
	case PropSessionExpiry:
		return p.SessionExpiry
	case PropWillDelay:
		return p.WillDelay
	case PropMaximumPacketSize:
		return p.MaximumPacketSize
	}
	return 0
}

func (p *Properties) bytesProp(id PropID) []byte {
	switch id {
	case PropContentType:
		return p.ContentType
	case PropResponseTopic:
		return p.ResponseTopic
	case PropCorrelationData:
		return p.CorrelationData
	case PropAssignedClientID:
		return p.AssignedClientID
	case PropAuthMethod:
		return p.AuthMethod
	case PropAuthData:
		return p.AuthData
	case PropResponseInfo:
		return p.ResponseInfo
	case PropServerReference:
		return p.ServerReference
	case PropReasonString:
		return p.ReasonString
	}
	return nil
}
