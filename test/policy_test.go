package e2e

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// e2ePolicy exercises every action: ok/ is open, secret/ is closed,
// ok/hidden/ may not be received, ok0/ only at QoS 0, dev/{client id}/ is
// each client's own, and client id "intruder" may not connect.
const e2ePolicy = `package moat.authz

import rego.v1

default allow := false

allow if {
	input.action == "connect"
	input.client.id != "intruder"
}

allow if {
	input.action == "publish"
	not input.will
	moat.topic_matches("ok/#", input.topic)
}

allow if {
	input.action == "publish"
	input.qos == 0
	moat.topic_matches("ok0/#", input.topic)
}

allow if {
	input.action == "publish"
	moat.topic_matches_with("dev/{id}/#", {"id": input.client.id}, input.topic)
}

allow if {
	input.action == "publish"
	input.will
	moat.topic_matches("ok/will/#", input.topic)
}

allow if {
	input.action in {"subscribe", "unsubscribe"}
	some f in ["ok/#", "ok0/#", "dev/#"]
	moat.filter_covers(f, input.topic)
}

allow if {
	input.action == "receive"
	some f in ["ok/#", "ok0/#", "dev/#"]
	moat.topic_matches(f, input.topic)
	not moat.topic_matches("ok/hidden/#", input.topic)
}

reason := sprintf("%s %s is not allowed", [input.action, input.topic]) if input.action != "connect"
`

// policyEnv is an env enforcing e2ePolicy, with Mosquitto logging
// subscriptions so tests can see what reached the broker.
func policyEnv(t *testing.T, mutate func(*config.Config)) (*env, string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "e2e.rego"), []byte(e2ePolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	decisions := filepath.Join(t.TempDir(), "decisions.jsonl")
	broker := mqtttest.Start(t, "log_type subscribe\nlog_type unsubscribe\n")
	e := newEnvWithBroker(t, broker, func(c *config.Config) {
		c.Policy = &config.Policy{Mode: config.ModeEnforce, Paths: []string{dir},
			WatchInterval: config.OptDuration{Set: true}, DecisionLog: config.DecisionLog{File: decisions}}
		if mutate != nil {
			mutate(c)
		}
	})
	return e, decisions
}

// spy subscribes to everything directly on the broker, behind moat's back.
func spy(t *testing.T, e *env) *received {
	rec := newReceived()
	c := paho5(t, e.broker.Addr, nil, "spy", rec)
	sub5(t, c, "#", 2)
	return rec
}

func TestPolicyConnect(t *testing.T) {
	e, decisions := policyEnv(t, nil)
	t.Run("v5", func(t *testing.T) {
		c := paho5Client(t, e.plain, nil, "intruder", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ack, err := c.Connect(ctx, &paho.Connect{ClientID: "intruder", CleanStart: true})
		if ack == nil || ack.ReasonCode != byte(codec.NotAuthorized) {
			t.Fatalf("CONNACK %+v, %v; want 0x87", ack, err)
		}
	})
	for _, v := range []string{"mqttv31", "mqttv311"} {
		t.Run(v, func(t *testing.T) {
			h, p := hostPort(t, e.plain)
			out, err := mosquittoTool(t, 10*time.Second, "mosquitto_pub", "-h", h, "-p", p, "-V", v, "-i", "intruder", "-t", "ok/x", "-m", "m")
			if err == nil || !strings.Contains(strings.ToLower(out), "not authori") {
				t.Fatalf("mosquitto_pub as intruder: %v %s", err, out)
			}
		})
	}
	if b, _ := os.ReadFile(decisions); !strings.Contains(string(b), `"action":"connect"`) {
		t.Errorf("decision log has no connect denial:\n%s", b)
	}
}

// A will to a forbidden topic refuses the connection at CONNECT.
func TestPolicyWill(t *testing.T) {
	e, _ := policyEnv(t, nil)
	spied := spy(t, e)
	t.Run("v5 forbidden", func(t *testing.T) {
		c := paho5Client(t, e.plain, nil, "w5", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ack, err := c.Connect(ctx, &paho.Connect{ClientID: "w5", CleanStart: true,
			WillMessage: &paho.WillMessage{Topic: "secret/will", Payload: []byte("boom"), QoS: 1}})
		if ack == nil || ack.ReasonCode != byte(codec.NotAuthorized) {
			t.Fatalf("CONNACK %+v, %v; want 0x87", ack, err)
		}
	})
	t.Run("v311 forbidden", func(t *testing.T) {
		o := paho3Options(e.plain, "w3", true).SetWill("secret/will", "boom", 1, false)
		c := mqtt3.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(10*time.Second) || tok.Error() == nil || !strings.Contains(strings.ToLower(tok.Error().Error()), "not authorized") {
			t.Fatalf("connect with a forbidden will: %v", tok.Error())
		}
	})
	t.Run("v31 forbidden", func(t *testing.T) {
		h, p := hostPort(t, e.plain)
		out, err := mosquittoTool(t, 10*time.Second, "mosquitto_pub", "-h", h, "-p", p, "-V", "mqttv31", "-i", "w31",
			"--will-topic", "secret/will", "--will-payload", "boom", "-t", "ok/x", "-m", "m")
		if err == nil || !strings.Contains(strings.ToLower(out), "not authori") {
			t.Fatalf("mosquitto_pub with a forbidden will: %v %s", err, out)
		}
	})
	t.Run("allowed will fires", func(t *testing.T) {
		conn := dial(t, e.plain, nil)
		c := mqtttest.DialRaw(t, e.plain, nil)
		conn.Close()
		c.V = codec.V311
		c.SendPacket(&codec.Connect{Version: codec.V311, CleanStart: true, ClientID: "wok", KeepAlive: 30,
			Will: &codec.Will{Topic: "ok/will/wok", Payload: []byte("gone"), QoS: 1}})
		if ack, ok := c.Expect(5 * time.Second).(*codec.Connack); !ok || ack.ReasonCode != 0 {
			t.Fatalf("CONNACK %+v", ack)
		}
		c.Conn.Close() // abrupt: the will fires
		for _, m := range spied.wait(t, 1, 10*time.Second) {
			if m.Topic == "ok/will/wok" && m.Payload == "gone" {
				return
			}
		}
		t.Fatal("allowed will did not fire")
	})
	time.Sleep(200 * time.Millisecond)
	for _, m := range spied.msgs {
		if strings.HasPrefix(m.Topic, "secret/") {
			t.Fatalf("a forbidden will reached the broker: %+v", m)
		}
	}
}

func TestPolicyPublish(t *testing.T) {
	e, decisions := policyEnv(t, nil)
	spied := spy(t, e)
	t.Run("v5", func(t *testing.T) {
		c := paho5(t, e.plain, nil, "p5", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, qos := range []byte{1, 2} {
			resp, err := c.Publish(ctx, &paho.Publish{Topic: "secret/x", Payload: []byte("no"), QoS: qos})
			if resp == nil || resp.ReasonCode != byte(codec.NotAuthorized) {
				t.Fatalf("QoS %d denied publish: %+v %v; want reason 0x87", qos, resp, err)
			}
			if resp.Properties == nil || resp.Properties.ReasonString != "publish secret/x is not allowed" {
				t.Errorf("QoS %d reason string %+v", qos, resp.Properties)
			}
		}
		c.Publish(ctx, &paho.Publish{Topic: "secret/x", Payload: []byte("no"), QoS: 0})
		pub5(t, c, "ok/v5", "yes", 1, false)
	})
	t.Run("v311", func(t *testing.T) {
		c := paho3(t, e.plain, nil, "p3", true)
		for _, qos := range []byte{0, 1, 2} {
			// QoS 1 is acked and QoS 2 completes PUBREC/PUBREL/PUBCOMP
			// locally: the tokens finish without error.
			wait3(t, c.Publish("secret/x", qos, false, "no"), "denied publish")
		}
		wait3(t, c.Publish("ok/v311", 2, false, "yes"), "allowed publish")
		// The flow completed locally and the connection is still usable.
		wait3(t, c.Publish("secret/y", 2, false, "no"), "second denied QoS 2")
		wait3(t, c.Publish("ok/v311b", 1, false, "yes"), "allowed publish after")
	})
	t.Run("v31", func(t *testing.T) {
		h, p := hostPort(t, e.plain)
		for _, topic := range []string{"secret/x", "ok/v31"} {
			if out, err := mosquittoTool(t, 10*time.Second, "mosquitto_pub", "-h", h, "-p", p, "-V", "mqttv31", "-q", "2", "-t", topic, "-m", "m"); err != nil {
				t.Fatalf("mosquitto_pub %s: %v %s", topic, err, out)
			}
		}
	})
	t.Run("client id wildcards do not widen", func(t *testing.T) {
		for _, id := range []string{"+", "#"} {
			c := paho3(t, e.plain, nil, id, true)
			wait3(t, c.Publish("dev/other/x", 1, false, "no"), "publish as "+id)
		}
		c := paho3(t, e.plain, nil, "dev7", true)
		wait3(t, c.Publish("dev/dev7/x", 1, false, "mine"), "own topic")
	})
	spied.wait(t, 5, 10*time.Second)
	time.Sleep(300 * time.Millisecond) // anything denied would have arrived by now
	var topics []string
	for _, m := range spied.wait(t, 5, time.Second) {
		topics = append(topics, m.Topic)
		if strings.HasPrefix(m.Topic, "secret/") || m.Topic == "dev/other/x" {
			t.Errorf("a denied publish reached the broker: %+v", m)
		}
	}
	for _, want := range []string{"ok/v5", "ok/v311", "ok/v311b", "ok/v31", "dev/dev7/x"} {
		if !slices.Contains(topics, want) {
			t.Errorf("allowed %s did not reach the broker; got %v", want, topics)
		}
	}
	if b, _ := os.ReadFile(decisions); !strings.Contains(string(b), `"topic":"secret/x"`) {
		t.Errorf("decision log:\n%s", b)
	}
}

func TestPolicyPublishDenyDisconnect(t *testing.T) {
	e, _ := policyEnv(t, func(c *config.Config) { c.Policy.OnPublishDeny = "disconnect" })
	c := mqtttest.DialRaw(t, e.plain, nil)
	c.Connect(codec.V5, "d5", 30)
	c.SendPacket(&codec.Publish{Topic: []byte("secret/x"), QoS: 1, PacketID: 1, Payload: []byte("no")})
	c.ExpectDisconnect(codec.NotAuthorized, 5*time.Second)

	c3 := mqtttest.DialRaw(t, e.plain, nil)
	c3.Connect(codec.V311, "d3", 30)
	c3.SendPacket(&codec.Publish{Topic: []byte("secret/x"), QoS: 1, PacketID: 1, Payload: []byte("no")})
	if got := c3.ExpectClosed(5 * time.Second); len(got) != 0 {
		t.Fatalf("3.1.1 client got %v before the close", got)
	}
}

// Topic aliases are resolved before the policy sees a topic, and an alias
// re-pointed at a forbidden topic stays forbidden.
func TestPolicyTopicAlias(t *testing.T) {
	e, _ := policyEnv(t, nil)
	spied := spy(t, e)
	c := mqtttest.DialRaw(t, e.plain, nil)
	ack := c.Connect(codec.V5, "alias", 30)
	if ack.Properties.TopicAliasMaximum < 2 {
		t.Fatalf("broker allows %d topic aliases; the test needs 2", ack.Properties.TopicAliasMaximum)
	}
	var id uint16
	publish := func(topic string, alias uint16, qos byte, payload string) codec.Packet {
		t.Helper()
		p := &codec.Publish{Topic: []byte(topic), QoS: qos, Payload: []byte(payload)}
		p.Properties.Set(codec.PropTopicAlias)
		p.Properties.TopicAlias = alias
		if qos > 0 {
			id++
			p.PacketID = id
		}
		c.SendPacket(p)
		if qos == 0 {
			return nil
		}
		return c.Expect(5 * time.Second)
	}
	reason := func(p codec.Packet) codec.ReasonCode {
		a, ok := p.(*codec.Ack)
		if !ok {
			t.Fatalf("got %#v, want PUBACK", p)
		}
		return a.ReasonCode
	}
	if r := reason(publish("ok/a", 1, 1, "1")); r != 0 {
		t.Fatalf("alias 1 -> ok/a: 0x%02X", r)
	}
	if r := reason(publish("", 1, 1, "2")); r != 0 {
		t.Fatalf("alias 1 alone: 0x%02X", r)
	}
	// Re-point alias 1 at a forbidden topic: denied, and so is using it.
	if r := reason(publish("secret/x", 1, 1, "3")); r != codec.NotAuthorized {
		t.Fatalf("alias 1 -> secret/x: 0x%02X", r)
	}
	if r := reason(publish("", 1, 1, "4")); r != codec.NotAuthorized {
		t.Fatalf("alias 1 (now secret/x) alone: 0x%02X", r)
	}
	// Re-point it at ok0/t at QoS 1 (denied: ok0 is QoS 0 only), then use
	// it at QoS 0 (allowed): the broker still maps alias 1 to ok/a, so moat
	// must send the topic in full.
	if r := reason(publish("ok0/t", 1, 1, "5")); r != codec.NotAuthorized {
		t.Fatalf("alias 1 -> ok0/t at QoS 1: 0x%02X", r)
	}
	publish("", 1, 0, "6")
	publish("ok/end", 2, 1, "7")
	msgs := spied.wait(t, 4, 10*time.Second)
	var got []string
	for _, m := range msgs {
		got = append(got, m.Topic+"="+m.Payload)
	}
	if want := []string{"ok/a=1", "ok/a=2", "ok0/t=6", "ok/end=7"}; !slices.Equal(got, want) {
		t.Fatalf("broker saw %v, want %v", got, want)
	}
	// Alias 0 and aliases over the maximum are protocol errors.
	publish("ok/a", 0, 0, "x")
	c.ExpectDisconnect(codec.TopicAliasInvalid, 5*time.Second)
	c2 := mqtttest.DialRaw(t, e.plain, nil)
	c2.Connect(codec.V5, "alias2", 30)
	p := &codec.Publish{Topic: nil, Payload: []byte("x")}
	p.Properties.Set(codec.PropTopicAlias)
	p.Properties.TopicAlias = 1
	c2.SendPacket(p)
	c2.ExpectDisconnect(codec.ProtocolError, 5*time.Second)
}

// subscribeLog returns the filters Mosquitto logged subscriptions to,
// sorted, once there are want of them (it logs after it answers, so the
// SUBACK may arrive first) or after a few seconds.
func subscribeLog(e *env, client string, want int) []string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		var out []string
		for l := range strings.SplitSeq(e.broker.Log(), "\n") {
			// "<time>: <client> <qos> <filter>" with log_type subscribe.
			f := strings.Fields(l)
			if len(f) == 4 && f[1] == client {
				out = append(out, f[3])
			}
		}
		if len(out) >= want || time.Now().After(deadline) {
			slices.Sort(out)
			return out
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPolicySubscribe(t *testing.T) {
	e, _ := policyEnv(t, nil)
	t.Run("v5 middle filter denied", func(t *testing.T) {
		rec := newReceived()
		c := paho5(t, e.plain, nil, "s5", rec)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
			{Topic: "ok/a", QoS: 1}, {Topic: "secret/#", QoS: 1}, {Topic: "ok/b", QoS: 2}}})
		if err != nil && sa == nil {
			t.Fatal(err)
		}
		if want := []byte{1, 0x87, 2}; !slices.Equal(sa.Reasons, want) {
			t.Fatalf("SUBACK %v, want %v", sa.Reasons, want)
		}
		if got := subscribeLog(e, "s5", 2); !slices.Equal(got, []string{"ok/a", "ok/b"}) {
			t.Fatalf("broker saw subscriptions %v", got)
		}
		sa, _ = c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "#"}, {Topic: "$share/g/#"}, {Topic: "$SYS/#"}}})
		if sa == nil || !slices.Equal(sa.Reasons, []byte{0x87, 0x87, 0x87}) {
			t.Fatalf("all-denied SUBACK %+v", sa)
		}
		sa, _ = c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$share/g/ok/#"}}})
		if sa == nil || !slices.Equal(sa.Reasons, []byte{0}) {
			t.Fatalf("shared ok/# SUBACK %+v", sa)
		}
		ua, _ := c.Unsubscribe(ctx, &paho.Unsubscribe{Topics: []string{"ok/a", "secret/#"}})
		if ua == nil || len(ua.Reasons) != 2 || ua.Reasons[1] != 0x87 || ua.Reasons[0] >= 0x80 {
			t.Fatalf("UNSUBACK %+v", ua)
		}
	})
	t.Run("v311 middle filter denied", func(t *testing.T) {
		c := paho3(t, e.plain, nil, "s3", true)
		tok := c.SubscribeMultiple(map[string]byte{"ok/c": 1, "secret/#": 1, "ok/d": 0}, nil)
		wait3(t, tok, "subscribe")
		res := tok.(*mqtt3.SubscribeToken).Result()
		if res["ok/c"] != 1 || res["secret/#"] != 0x80 || res["ok/d"] != 0 {
			t.Fatalf("SUBACK %v", res)
		}
		if got := subscribeLog(e, "s3", 2); !slices.Equal(got, []string{"ok/c", "ok/d"}) {
			t.Fatalf("broker saw subscriptions %v", got)
		}
		wait3(t, c.Unsubscribe("secret/#"), "unsubscribe denied")
	})
	t.Run("v31 denied", func(t *testing.T) {
		h, p := hostPort(t, e.plain)
		out, _ := mosquittoTool(t, 10*time.Second, "mosquitto_sub", "-h", h, "-p", p, "-V", "mqttv31", "-i", "s31", "-t", "#", "-W", "3")
		if !strings.Contains(out, "denied") {
			t.Fatalf("mosquitto_sub -t '#': %s", out)
		}
	})
	for _, l := range strings.Split(e.broker.Log(), "\n") {
		if strings.Contains(l, "secret/#") || strings.HasSuffix(l, " #") {
			t.Errorf("a denied filter reached the broker: %s", l)
		}
	}
}

// A subscriber on an allowed wildcard does not receive what it may not
// read, retained messages included, and the broker's QoS 1/2 flows to it
// do not stall on what moat dropped.
func TestPolicyReceive(t *testing.T) {
	e, _ := policyEnv(t, nil)
	direct := paho5(t, e.broker.Addr, nil, "inside", nil)
	pub5(t, direct, "ok/hidden/r", "hidden retained", 1, true)
	pub5(t, direct, "ok/r", "visible retained", 1, true)

	for _, v := range []string{"v5", "v311"} {
		t.Run(v, func(t *testing.T) {
			rec := newReceived()
			if v == "v5" {
				c := paho5(t, e.plain, nil, "r5", rec)
				sub5(t, c, "ok/#", 2)
			} else {
				c := paho3(t, e.plain, nil, "r3", true)
				sub3(t, c, "ok/#", 2, rec)
			}
			rec.wait(t, 1, 10*time.Second) // the visible retained message
			// More hidden QoS 1/2 messages than Mosquitto keeps in flight
			// (20) of each QoS: unless moat acks them for the client, the last one stalls.
			for i := range 50 {
				pub5(t, direct, "ok/hidden/x", "h", byte(1+i%2), false)
			}
			pub5(t, direct, "ok/visible", "v", 2, false)
			rec.wait(t, 2, 10*time.Second)
			time.Sleep(200 * time.Millisecond) // a hidden message would have arrived by now
			msgs := rec.wait(t, 2, time.Second)
			if len(msgs) != 2 || msgs[0].Topic != "ok/r" || msgs[1].Topic != "ok/visible" {
				t.Fatalf("received %+v", msgs)
			}
		})
	}
}

func TestPolicyShadow(t *testing.T) {
	e, decisions := policyEnv(t, func(c *config.Config) { c.Policy.Mode = config.ModeShadow })
	spied := spy(t, e)
	c := paho5(t, e.plain, nil, "sh", nil)
	pub5(t, c, "secret/x", "flows", 1, false)
	if m := spied.wait(t, 1, 10*time.Second); m[0].Topic != "secret/x" {
		t.Fatalf("spy got %+v", m)
	}
	b, _ := os.ReadFile(decisions)
	if !strings.Contains(string(b), `"decision":"shadow_deny"`) {
		t.Fatalf("decision log:\n%s", b)
	}
	if st := e.srv.Policy().Stats(); st.ShadowDenials == 0 || st.Denials != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// A reload that fails keeps the last good policy in force.
func TestPolicyBrokenReload(t *testing.T) {
	e, _ := policyEnv(t, nil)
	eng := e.srv.Policy()
	path := filepath.Join(e.cfg.Policy.Paths[0], "e2e.rego")
	if err := os.WriteFile(path, []byte("package moat.authz\nallow if {"), 0o600); err != nil {
		t.Fatal(err)
	}
	rev := eng.Revision()
	if err := eng.Reload(); err == nil || !strings.Contains(err.Error(), "e2e.rego:2") {
		t.Fatalf("broken reload: %v", err)
	}
	if eng.Revision() != rev {
		t.Fatal("revision changed")
	}
	spied := spy(t, e)
	c := paho3(t, e.plain, nil, "after", true)
	wait3(t, c.Publish("secret/x", 1, false, "no"), "denied")
	wait3(t, c.Publish("ok/x", 1, false, "yes"), "allowed")
	if m := spied.wait(t, 1, 10*time.Second); m[0].Topic != "ok/x" {
		t.Fatalf("spy got %+v", m)
	}
}
