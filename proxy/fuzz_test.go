package proxy

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
)

// FuzzSession drives whole proxy sessions, in memory, with arbitrary
// client bytes (after an optional valid CONNECT) and checks, for each
// input, the invariants that matter: no panic, nothing reaches the broker
// before an allowed CONNECT, no PUBLISH to a forbidden topic and no
// forbidden filter reaches it, and the session ends and lets go of what
// it held. The broker is an in-memory fake that answers CONNECT and acks
// what it is sent.
//
// A long run: go test -run '^$' -fuzz FuzzSession -fuzztime 1h ./proxy
func FuzzSession(f *testing.F) {
	pub := func(v codec.Version, topic string, qos byte) []byte {
		p := &codec.Publish{Topic: []byte(topic), QoS: qos, Payload: []byte("x")}
		if qos > 0 {
			p.PacketID = 1
		}
		b, _ := p.Append(nil, v)
		return b
	}
	sub := func(v codec.Version, filters ...string) []byte {
		s := &codec.Subscribe{PacketID: 2}
		for _, fl := range filters {
			s.Subscriptions = append(s.Subscriptions, codec.Subscription{Filter: fl, QoS: 1})
		}
		b, _ := s.Append(nil, v)
		return b
	}
	for _, v := range []codec.Version{codec.V31, codec.V311, codec.V5} {
		f.Add(byte(v), pub(v, "ok/a", 1))
		f.Add(byte(v), pub(v, "secret/a", 2))
		f.Add(byte(v), append(pub(v, "ok/a", 0), sub(v, "ok/#", "secret/#", "$share/g/secret/x")...))
		f.Add(byte(v), []byte{0x30, 0xFF, 0xFF, 0xFF, 0x7F})
	}
	f.Add(byte(0), []byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 30, 0, 0})
	// v5 alias games.
	alias := func(topic string, n uint16) []byte {
		p := &codec.Publish{Topic: []byte(topic), Payload: []byte("x")}
		p.Properties.Set(codec.PropTopicAlias)
		p.Properties.TopicAlias = n
		b, _ := p.Append(nil, codec.V5)
		return b
	}
	f.Add(byte(5), append(append(alias("ok/a", 1), alias("secret/b", 1)...), alias("", 1)...))

	h := newFuzzHarness(f)
	f.Fuzz(func(t *testing.T, mode byte, in []byte) {
		h.run(t, mode, in)
	})
}

type fuzzHarness struct {
	srv     *Server
	mu      sync.Mutex
	bad     string         // an invariant broken on the broker side, for the current input
	brokers sync.WaitGroup // fake broker connections still running
}

func newFuzzHarness(f *testing.F) *fuzzHarness {
	dir := f.TempDir()
	rules := `package moat.authz
allow if input.action == "connect"
allow if { input.action in {"publish", "subscribe", "unsubscribe", "receive"}; startswith(input.topic, "ok/") }
`
	if err := os.WriteFile(filepath.Join(dir, "p.rego"), []byte(rules), 0o600); err != nil {
		f.Fatal(err)
	}
	cfg := &config.Config{
		Listeners: []config.Listener{{Name: "mqtt", Address: "127.0.0.1:0"}},
		Upstream:  config.Upstream{Address: "127.0.0.1:1", DialTimeout: time.Second},
		Auth:      config.Auth{Anonymous: true},
		Policy:    &config.Policy{Mode: config.ModeEnforce, Paths: []string{dir}, WatchInterval: config.OptDuration{Set: true}, DecisionLog: config.DecisionLog{File: "off"}},
		Limits: config.Limits{ConnectTimeout: time.Second, MaxPacketSize: 64 << 10,
			Rate:        config.ClientRate{PublishPerSecond: -1, BytesPerSecond: -1, SubscribePerSecond: -1},
			Connections: config.ConnectionLimits{PerAddressPerSecond: -1, PerAddress: -1, PerSecond: -1, Max: -1}},
		Bans:     config.Bans{Denials: -1},
		Admin:    config.Admin{Address: "off"},
		Shutdown: config.Shutdown{DrainTimeout: time.Second},
	}
	if err := cfg.Validate(); err != nil {
		f.Fatal(err)
	}
	srv, err := New(cfg, nil)
	if err != nil {
		f.Fatal(err)
	}
	h := &fuzzHarness{srv: srv}
	srv.dial = func(context.Context, string, string) (net.Conn, error) {
		a, b := net.Pipe()
		h.brokers.Add(1)
		go func() { defer h.brokers.Done(); h.broker(b) }()
		return a, nil
	}
	return h
}

// broker is the in-memory upstream: it checks what moat forwards.
func (h *fuzzHarness) broker(c net.Conn) {
	defer c.Close()
	r := codec.NewReader(c, 0)
	f, err := r.ReadPacket()
	if err != nil {
		return
	}
	if f.Type != codec.CONNECT {
		h.fail("the broker's first packet is " + f.Type.String())
		return
	}
	con, err := codec.DecodeConnect(f)
	if err != nil {
		h.fail("moat forwarded an invalid CONNECT: " + err.Error())
		return
	}
	v := con.Version
	ack, _ := (&codec.Connack{}).Append(nil, v)
	if _, err := c.Write(ack); err != nil {
		return
	}
	for {
		f, err := r.ReadPacket()
		if err != nil {
			return
		}
		p, err := codec.Decode(f, v)
		if err != nil {
			h.fail("moat forwarded an invalid " + f.Type.String() + ": " + err.Error())
			return
		}
		var reply codec.Packet
		switch p := p.(type) {
		case *codec.Publish:
			if !strings.HasPrefix(string(p.Topic), "ok/") && len(p.Topic) > 0 {
				h.fail("forbidden topic forwarded: " + string(p.Topic))
			}
			switch p.QoS {
			case 1:
				reply = &codec.Ack{PacketType: codec.PUBACK, PacketID: p.PacketID}
			case 2:
				reply = &codec.Ack{PacketType: codec.PUBREC, PacketID: p.PacketID}
			}
		case *codec.Ack:
			if p.PacketType == codec.PUBREL {
				reply = &codec.Ack{PacketType: codec.PUBCOMP, PacketID: p.PacketID}
			}
		case *codec.Subscribe:
			sa := &codec.Suback{PacketID: p.PacketID}
			for _, s := range p.Subscriptions {
				if !strings.HasPrefix(s.Filter, "ok/") {
					h.fail("forbidden filter forwarded: " + s.Filter)
				}
				sa.ReasonCodes = append(sa.ReasonCodes, s.QoS)
			}
			reply = sa
		case *codec.Unsubscribe:
			ua := &codec.Unsuback{PacketID: p.PacketID}
			if v == codec.V5 {
				ua.ReasonCodes = make([]byte, len(p.Filters))
			}
			reply = ua
		case *codec.Ping:
			if p.PacketType == codec.PINGREQ {
				reply = &codec.Ping{PacketType: codec.PINGRESP}
			}
		}
		if reply != nil {
			b, err := reply.Append(nil, v)
			if err != nil {
				h.fail("fake broker: " + err.Error())
				return
			}
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	}
}

func (h *fuzzHarness) fail(why string) {
	h.mu.Lock()
	if h.bad == "" {
		h.bad = why
	}
	h.mu.Unlock()
}

// run plays one input: mode 3, 4 or 5 sends a valid CONNECT of that
// version first; any other mode sends the bytes alone.
func (h *fuzzHarness) run(t *testing.T, mode byte, in []byte) {
	h.mu.Lock()
	h.bad = ""
	h.mu.Unlock()
	client, moatSide := net.Pipe()
	l := h.srv.listeners[0]
	sess := newSession(h.srv, l, moatSide)
	sess.addr = "127.0.0.1"
	if ok, _ := h.srv.conns.Admit(sess.addr, time.Now()); !ok || !h.srv.track(sess) {
		t.Fatal("session refused")
	}
	done := make(chan struct{})
	go func() { sess.serve(); close(done) }()
	// Drain what moat says to the client.
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := client.Read(buf); err != nil {
				return
			}
		}
	}()
	var stream []byte
	if v := codec.Version(mode); v == codec.V31 || v == codec.V311 || v == codec.V5 {
		stream, _ = (&codec.Connect{Version: v, ClientID: "fuzz", CleanStart: true, KeepAlive: 30}).Append(nil, v)
	}
	stream = append(stream, in...)
	client.SetWriteDeadline(time.Now().Add(2 * time.Second))
	client.Write(stream)
	client.Close()
	<-done
	deadline := time.Now().Add(5 * time.Second)
	for h.srv.Sessions() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the session did not end after the client closed")
		}
		time.Sleep(time.Millisecond)
	}
	h.brokers.Wait()
	if open := h.srv.conns.Open(); open != 0 {
		t.Fatalf("%d admitted connections not released", open)
	}
	h.mu.Lock()
	bad := h.bad
	h.mu.Unlock()
	if bad != "" {
		t.Fatal(bad)
	}
}
