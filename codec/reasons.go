package codec

import (
	"errors"
	"fmt"
)

// ReasonCode is an MQTT 5 reason code. MQTT 3.x return codes are separate
// (ConnackCode311) because they mean different things.
type ReasonCode byte

// MQTT 5 reason codes (section 2.4).
const (
	Success                     ReasonCode = 0x00 // also Normal disconnection, Granted QoS 0
	GrantedQoS1                 ReasonCode = 0x01
	GrantedQoS2                 ReasonCode = 0x02
	DisconnectWithWill          ReasonCode = 0x04
	NoMatchingSubscribers       ReasonCode = 0x10
	NoSubscriptionExisted       ReasonCode = 0x11
	ContinueAuthentication      ReasonCode = 0x18
	ReAuthenticate              ReasonCode = 0x19
	UnspecifiedError            ReasonCode = 0x80
	MalformedPacket             ReasonCode = 0x81
	ProtocolError               ReasonCode = 0x82
	ImplementationSpecificError ReasonCode = 0x83
	UnsupportedProtocolVersion  ReasonCode = 0x84
	ClientIdentifierNotValid    ReasonCode = 0x85
	BadUsernameOrPassword       ReasonCode = 0x86
	NotAuthorized               ReasonCode = 0x87
	ServerUnavailable           ReasonCode = 0x88
	ServerBusy                  ReasonCode = 0x89
	Banned                      ReasonCode = 0x8A
	ServerShuttingDown          ReasonCode = 0x8B
	BadAuthenticationMethod     ReasonCode = 0x8C
	KeepAliveTimeout            ReasonCode = 0x8D
	SessionTakenOver            ReasonCode = 0x8E
	TopicFilterInvalid          ReasonCode = 0x8F
	TopicNameInvalid            ReasonCode = 0x90
	PacketIdentifierInUse       ReasonCode = 0x91
	PacketIdentifierNotFound    ReasonCode = 0x92
	ReceiveMaximumExceeded      ReasonCode = 0x93
	TopicAliasInvalid           ReasonCode = 0x94
	PacketTooLarge              ReasonCode = 0x95
	MessageRateTooHigh          ReasonCode = 0x96
	QuotaExceeded               ReasonCode = 0x97
	AdministrativeAction        ReasonCode = 0x98
	PayloadFormatInvalid        ReasonCode = 0x99
	RetainNotSupported          ReasonCode = 0x9A
	QoSNotSupported             ReasonCode = 0x9B
	UseAnotherServer            ReasonCode = 0x9C
	ServerMoved                 ReasonCode = 0x9D
	SharedSubsNotSupported      ReasonCode = 0x9E
	ConnectionRateExceeded      ReasonCode = 0x9F
	MaximumConnectTime          ReasonCode = 0xA0
	SubIDsNotSupported          ReasonCode = 0xA1
	WildcardSubsNotSupported    ReasonCode = 0xA2
)

var reasonNames = map[ReasonCode]string{
	Success: "success", GrantedQoS1: "granted QoS 1", GrantedQoS2: "granted QoS 2",
	DisconnectWithWill: "disconnect with will message", NoMatchingSubscribers: "no matching subscribers",
	NoSubscriptionExisted: "no subscription existed", ContinueAuthentication: "continue authentication",
	ReAuthenticate: "re-authenticate", UnspecifiedError: "unspecified error", MalformedPacket: "malformed packet",
	ProtocolError: "protocol error", ImplementationSpecificError: "implementation specific error",
	UnsupportedProtocolVersion: "unsupported protocol version", ClientIdentifierNotValid: "client identifier not valid",
	BadUsernameOrPassword: "bad user name or password", NotAuthorized: "not authorized",
	ServerUnavailable: "server unavailable", ServerBusy: "server busy", Banned: "banned",
	ServerShuttingDown: "server shutting down", BadAuthenticationMethod: "bad authentication method",
	KeepAliveTimeout: "keep alive timeout", SessionTakenOver: "session taken over",
	TopicFilterInvalid: "topic filter invalid", TopicNameInvalid: "topic name invalid",
	PacketIdentifierInUse: "packet identifier in use", PacketIdentifierNotFound: "packet identifier not found",
	ReceiveMaximumExceeded: "receive maximum exceeded", TopicAliasInvalid: "topic alias invalid",
	PacketTooLarge: "packet too large", MessageRateTooHigh: "message rate too high", QuotaExceeded: "quota exceeded",
	AdministrativeAction: "administrative action", PayloadFormatInvalid: "payload format invalid",
	RetainNotSupported: "retain not supported", QoSNotSupported: "QoS not supported",
	UseAnotherServer: "use another server", ServerMoved: "server moved",
	SharedSubsNotSupported: "shared subscriptions not supported", ConnectionRateExceeded: "connection rate exceeded",
	MaximumConnectTime: "maximum connect time", SubIDsNotSupported: "subscription identifiers not supported",
	WildcardSubsNotSupported: "wildcard subscriptions not supported",
}

func (r ReasonCode) String() string {
	if s, ok := reasonNames[r]; ok {
		return fmt.Sprintf("0x%02X %s", byte(r), s)
	}
	return fmt.Sprintf("0x%02X", byte(r))
}

// IsError reports whether r signals failure (0x80 and above).
func (r ReasonCode) IsError() bool { return r >= 0x80 }

// MQTT 3.1 / 3.1.1 CONNACK return codes.
const (
	ConnAccepted311              byte = 0
	ConnRefusedVersion311        byte = 1
	ConnRefusedIdentifier311     byte = 2
	ConnRefusedServerUnavailable byte = 3
	ConnRefusedBadCredentials311 byte = 4
	ConnRefusedNotAuthorized311  byte = 5
)

// SubackFailure311 is the SUBACK return code for a refused filter in 3.1.1.
const SubackFailure311 byte = 0x80

// Error is a protocol violation found while reading or decoding. Code is
// the MQTT 5 reason code to report (DISCONNECT or CONNACK); Clause names the
// normative statement broken, when there is one.
type Error struct {
	Code   ReasonCode
	Clause string
	Msg    string
}

func (e *Error) Error() string {
	if e.Clause != "" {
		return fmt.Sprintf("%s: %s [%s]", e.Code, e.Msg, e.Clause)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Msg)
}

func malformed(clause, format string, a ...any) error {
	return &Error{Code: MalformedPacket, Clause: clause, Msg: fmt.Sprintf(format, a...)}
}

func protoErr(clause, format string, a ...any) error {
	return &Error{Code: ProtocolError, Clause: clause, Msg: fmt.Sprintf(format, a...)}
}

func codeErr(code ReasonCode, clause, format string, a ...any) error {
	return &Error{Code: code, Clause: clause, Msg: fmt.Sprintf(format, a...)}
}

// ReasonOf returns the reason code carried by err, or UnspecifiedError when
// err is not (and does not wrap) an *Error.
func ReasonOf(err error) ReasonCode {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return UnspecifiedError
}
