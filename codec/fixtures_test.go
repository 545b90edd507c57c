package codec

// Raw-byte fixtures shared by the decoder and encoder tests: each packet is
// decoded from raw and must equal pkt, and pkt encoded must equal raw.

type fixture struct {
	name string
	v    Version
	raw  []byte
	pkt  Packet
}

func props(f func(p *Properties)) Properties {
	var p Properties
	f(&p)
	return p
}

var fixtures = []fixture{
	{name: "connect 3.1.1 minimal", v: V311, raw: []byte{
		0x10, 16, // CONNECT, remaining length 16
		0, 4, 'M', 'Q', 'T', 'T', // protocol name
		4,     // level 4
		0x02,  // clean session
		0, 60, // keep alive 60
		0, 4, 'd', 'e', 'v', '1', // client id
	}, pkt: &Connect{ProtocolName: "MQTT", Version: V311, CleanStart: true, KeepAlive: 60, ClientID: "dev1"}},

	{name: "connect 3.1 with will, user, password", v: V31, raw: []byte{
		0x10, 35,
		0, 6, 'M', 'Q', 'I', 's', 'd', 'p', // protocol name 3.1
		3,     // level 3
		0xEE,  // user, password, will retain, will QoS 1, will, clean
		0, 10, // keep alive
		0, 1, 'c', // client id "c"
		0, 3, 'a', '/', 'b', // will topic
		0, 3, 'b', 'y', 'e', // will payload
		0, 4, 'u', 's', 'e', 'r', // user name
		0, 2, 'p', 'w', // password
	}, pkt: &Connect{ProtocolName: "MQIsdp", Version: V31, CleanStart: true, KeepAlive: 10, ClientID: "c",
		Will:        &Will{Topic: "a/b", Payload: []byte("bye"), QoS: 1, Retain: true},
		HasUsername: true, Username: "user", HasPassword: true, Password: []byte("pw")}},

	{name: "connect 5 with properties and will properties", v: V5, raw: []byte{
		0x10, 38,
		0, 4, 'M', 'Q', 'T', 'T',
		5,     // level 5
		0x0C,  // will QoS 1, will flag, no clean start
		0, 30, // keep alive
		8,                      // property length
		0x11, 0, 0, 0x0e, 0x10, // session expiry 3600
		0x21, 0, 10, // receive maximum 10
		0, 2, 'i', 'd', // client id
		5,                // will property length
		0x18, 0, 0, 0, 5, // will delay 5
		0, 3, 'w', '/', 't', // will topic
		0, 2, 'o', 'k', // will payload
	}, pkt: &Connect{ProtocolName: "MQTT", Version: V5, KeepAlive: 30, ClientID: "id",
		Properties: props(func(p *Properties) {
			p.Set(PropSessionExpiry)
			p.SessionExpiry = 3600
			p.Set(PropReceiveMaximum)
			p.ReceiveMaximum = 10
		}),
		Will: &Will{Topic: "w/t", Payload: []byte("ok"), QoS: 1,
			Properties: props(func(p *Properties) { p.Set(PropWillDelay); p.WillDelay = 5 })}}},

	{name: "connack 3.1.1 session present", v: V311, raw: []byte{0x20, 2, 0x01, 0x00},
		pkt: &Connack{SessionPresent: true}},
	{name: "connack 3.1.1 bad credentials", v: V311, raw: []byte{0x20, 2, 0x00, 0x04},
		pkt: &Connack{ReasonCode: 4}},
	{name: "connack 5 with properties", v: V5, raw: []byte{
		0x20, 9,
		0x00, 0x00, // flags, success
		6,           // property length
		0x13, 0, 20, // server keep alive 20
		0x22, 0, 10, // topic alias maximum 10
	}, pkt: &Connack{Properties: props(func(p *Properties) {
		p.Set(PropTopicAliasMaximum)
		p.TopicAliasMaximum = 10
		p.Set(PropServerKeepAlive)
		p.ServerKeepAlive = 20
	})}},

	{name: "publish 3.1.1 qos 0", v: V311, raw: []byte{
		0x30, 7,
		0, 3, 'a', '/', 'b', // topic
		'h', 'i', // payload
	}, pkt: &Publish{Topic: []byte("a/b"), Payload: []byte("hi")}},
	{name: "publish 3.1.1 qos 1 retain dup", v: V311, raw: []byte{
		0x3B, 7, // PUBLISH DUP, QoS 1, retain
		0, 1, 't', // topic
		0x12, 0x34, // packet id
		'x', 'y',
	}, pkt: &Publish{Dup: true, QoS: 1, Retain: true, Topic: []byte("t"), PacketID: 0x1234, Payload: []byte("xy")}},
	{name: "publish 5 qos 2 with alias, user property, two subscription ids", v: V5, raw: []byte{
		0x34, 22, // PUBLISH QoS 2
		0, 1, 't',
		0, 7, // packet id
		15,      // property length
		0x0B, 1, // subscription id 1
		0x0B, 0x80, 0x01, // subscription id 128
		0x23, 0, 3, // topic alias 3
		0x26, 0, 1, 'k', 0, 1, 'v', // user property k=v
		'p',
	}, pkt: &Publish{QoS: 2, Topic: []byte("t"), PacketID: 7, Payload: []byte("p"),
		Properties: props(func(p *Properties) {
			p.Set(PropSubscriptionID)
			p.SubscriptionIDs = []uint32{1, 128}
			p.Set(PropTopicAlias)
			p.TopicAlias = 3
			p.Set(PropUser)
			p.User = []UserProperty{{[]byte("k"), []byte("v")}}
		})}},
	{name: "publish 5 empty topic with alias", v: V5, raw: []byte{
		0x30, 6,
		0, 0, // empty topic
		3, 0x23, 0, 1, // topic alias 1
	}, pkt: &Publish{Properties: props(func(p *Properties) { p.Set(PropTopicAlias); p.TopicAlias = 1 })}},

	{name: "puback 3.1.1", v: V311, raw: []byte{0x40, 2, 0, 1}, pkt: &Ack{PacketType: PUBACK, PacketID: 1}},
	{name: "pubrec 3.1.1", v: V311, raw: []byte{0x50, 2, 0, 2}, pkt: &Ack{PacketType: PUBREC, PacketID: 2}},
	{name: "pubrel 3.1.1", v: V311, raw: []byte{0x62, 2, 0, 3}, pkt: &Ack{PacketType: PUBREL, PacketID: 3}},
	{name: "pubcomp 3.1.1", v: V311, raw: []byte{0x70, 2, 0, 4}, pkt: &Ack{PacketType: PUBCOMP, PacketID: 4}},
	{name: "puback 5 success short form", v: V5, raw: []byte{0x40, 2, 0, 9}, pkt: &Ack{PacketType: PUBACK, PacketID: 9}},
	{name: "puback 5 not authorized with reason string", v: V5, raw: []byte{
		0x40, 10,
		0, 9, // packet id
		0x87,                         // not authorized
		6, 0x1F, 0, 3, 'n', 'o', 'p', // reason string "nop"
	}, pkt: &Ack{PacketType: PUBACK, PacketID: 9, ReasonCode: NotAuthorized,
		Properties: props(func(p *Properties) { p.Set(PropReasonString); p.ReasonString = []byte("nop") })}},
	{name: "pubrec 5 no matching subscribers", v: V5, raw: []byte{0x50, 3, 0, 9, 0x10},
		pkt: &Ack{PacketType: PUBREC, PacketID: 9, ReasonCode: NoMatchingSubscribers}},
	{name: "pubrel 5 packet id not found", v: V5, raw: []byte{0x62, 3, 0, 9, 0x92},
		pkt: &Ack{PacketType: PUBREL, PacketID: 9, ReasonCode: PacketIdentifierNotFound}},

	{name: "subscribe 3.1.1 two filters", v: V311, raw: []byte{
		0x82, 14,
		0, 10, // packet id
		0, 3, 'a', '/', '#', 1, // a/# QoS 1
		0, 3, '+', '/', 'b', 2, // +/b QoS 2
	}, pkt: &Subscribe{PacketID: 10, Subscriptions: []Subscription{{Filter: "a/#", QoS: 1}, {Filter: "+/b", QoS: 2}}}},
	{name: "subscribe 5 options and subscription id", v: V5, raw: []byte{
		0x82, 25,
		0, 11, // packet id
		2, 0x0B, 5, // property length 2: subscription id 5
		0, 13, '$', 's', 'h', 'a', 'r', 'e', '/', 'g', '/', 'a', '/', '+', '/',
		0x29,            // retain handling 2 (0x20), retain as published (0x08), QoS 1
		0, 1, 'x', 0x04, // "x", no local, QoS 0
	}, pkt: &Subscribe{PacketID: 11,
		Properties: props(func(p *Properties) { p.Set(PropSubscriptionID); p.SubscriptionIDs = []uint32{5} }),
		Subscriptions: []Subscription{
			{Filter: "$share/g/a/+/", QoS: 1, RetainAsPublished: true, RetainHandling: 2},
			{Filter: "x", QoS: 0, NoLocal: true},
		}}},
	{name: "suback 3.1.1", v: V311, raw: []byte{0x90, 4, 0, 10, 0x01, 0x80},
		pkt: &Suback{PacketID: 10, ReasonCodes: []byte{0x01, 0x80}}},
	{name: "suback 5", v: V5, raw: []byte{0x90, 5, 0, 10, 0, 0x02, 0x87},
		pkt: &Suback{PacketID: 10, ReasonCodes: []byte{0x02, 0x87}}},
	{name: "unsubscribe 3.1.1", v: V311, raw: []byte{0xA2, 7, 0, 12, 0, 3, 'a', '/', 'b'},
		pkt: &Unsubscribe{PacketID: 12, Filters: []string{"a/b"}}},
	{name: "unsubscribe 5", v: V5, raw: []byte{0xA2, 8, 0, 12, 0, 0, 3, 'a', '/', '#'},
		pkt: &Unsubscribe{PacketID: 12, Filters: []string{"a/#"}}},
	{name: "unsuback 3.1.1", v: V311, raw: []byte{0xB0, 2, 0, 12}, pkt: &Unsuback{PacketID: 12}},
	{name: "unsuback 5", v: V5, raw: []byte{0xB0, 5, 0, 12, 0, 0x00, 0x11},
		pkt: &Unsuback{PacketID: 12, ReasonCodes: []byte{0x00, 0x11}}},
	{name: "pingreq", v: V311, raw: []byte{0xC0, 0}, pkt: &Ping{PacketType: PINGREQ}},
	{name: "pingresp", v: V5, raw: []byte{0xD0, 0}, pkt: &Ping{PacketType: PINGRESP}},
	{name: "disconnect 3.1.1", v: V311, raw: []byte{0xE0, 0}, pkt: &Disconnect{}},
	{name: "disconnect 5 normal short form", v: V5, raw: []byte{0xE0, 0}, pkt: &Disconnect{}},
	{name: "disconnect 5 with will and session expiry", v: V5, raw: []byte{
		0xE0, 7,
		0x04,                // disconnect with will message
		5, 0x11, 0, 0, 0, 0, // session expiry 0
	}, pkt: &Disconnect{ReasonCode: DisconnectWithWill,
		Properties: props(func(p *Properties) { p.Set(PropSessionExpiry) })}},
	{name: "auth 5 continue", v: V5, raw: []byte{
		0xF0, 11,
		0x18,                                        // continue authentication
		9, 0x15, 0, 6, 'S', 'C', 'R', 'A', 'M', '1', // method
	}, pkt: &Auth{ReasonCode: ContinueAuthentication,
		Properties: props(func(p *Properties) { p.Set(PropAuthMethod); p.AuthMethod = []byte("SCRAM1") })}},
}
