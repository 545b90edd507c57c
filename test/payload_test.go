package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// Payload rules: schema violations refused, valid payloads forwarded
// byte for byte, retain stripped where configured, and an alias cannot
// carry a payload past the rule of the topic it stands for.
func TestPayloadRules(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Payload.Rules = []config.PayloadRule{
			{Topics: []string{"commands/#"}, SchemaFile: "testdata/command-schema.json", Retain: "forbid"},
			{Topics: []string{"telemetry/#"}, MaxSize: 32, UTF8: true, Retain: "strip"},
		}
	})
	spied := spy(t, e)
	good := `{"valve":"valve1","action":"close"}`
	c := paho5(t, e.plain, nil, "pl5", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	publish := func(topic, payload string, retain bool) byte {
		t.Helper()
		r, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Retain: retain, Payload: []byte(payload)})
		if r == nil {
			t.Fatalf("publish %s: %v", topic, err)
		}
		return r.ReasonCode
	}
	for _, cs := range []struct {
		topic, payload string
		retain         bool
		ok             bool
	}{
		{"commands/v1", good, false, true},
		{"commands/v1", `{"valve":"valve1","action":"explode"}`, false, false},
		{"commands/v1", `not json`, false, false},
		{"commands/v1", good, true, false},
		{"telemetry/t1", "21.5", true, true},
		{"telemetry/t1", "012345678901234567890123456789012", false, false},
		{"other/x", "\xff anything", false, true},
	} {
		got := publish(cs.topic, cs.payload, cs.retain)
		if cs.ok && got >= 0x80 || !cs.ok && got != byte(codec.PayloadFormatInvalid) {
			t.Errorf("%s %q retain=%v: 0x%02X", cs.topic, cs.payload, cs.retain, got)
		}
	}
	// 3.1.1: refused payloads are acknowledged and dropped.
	c3 := paho3(t, e.plain, nil, "pl3", true)
	wait3(t, c3.Publish("commands/v2", 1, false, `{"valve":"v"}`), "invalid 3.1.1 publish")

	// An alias set on a valid command cannot carry an invalid one later.
	raw := mqtttest.DialRaw(t, e.plain, nil)
	raw.Connect(codec.V5, "alias-pl", 30)
	p := &codec.Publish{Topic: []byte("commands/v3"), QoS: 1, PacketID: 1, Payload: []byte(good)}
	p.Properties.Set(codec.PropTopicAlias)
	p.Properties.TopicAlias = 1
	raw.SendPacket(p)
	raw.Expect(5 * time.Second)
	p.Topic, p.PacketID, p.Payload = nil, 2, []byte(`{"valve":"valve3","action":"explode"}`)
	raw.SendPacket(p)
	if a, ok := raw.Expect(5 * time.Second).(*codec.Ack); !ok || a.ReasonCode != codec.PayloadFormatInvalid {
		t.Fatalf("alias with an invalid payload: %+v", a)
	}

	spied.wait(t, 4, 10*time.Second)
	time.Sleep(300 * time.Millisecond) // anything refused would have arrived by now
	msgs := spied.wait(t, 4, time.Second)
	var got []string
	for _, m := range msgs {
		got = append(got, m.Topic+" "+m.Payload)
	}
	want := []string{"commands/v1 " + good, "telemetry/t1 21.5", "other/x \xff anything", "commands/v3 " + good}
	if len(got) != len(want) {
		t.Fatalf("broker got %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("broker got %q, want %q", got, want)
		}
	}
	// The retained telemetry reading was stripped: nothing is stored.
	late := newReceived()
	sub5(t, paho5(t, e.plain, nil, "late", late), "telemetry/#", 0)
	time.Sleep(300 * time.Millisecond)
	if late.count() != 0 {
		t.Fatal("a stripped retained message was stored")
	}
}

// A rule that caps QoS forwards at the cap and completes the client's
// own flow: the broker sees the lower QoS, the client its usual acks.
func TestQoSCap(t *testing.T) {
	zero, one := 0, 1
	e := newEnv(t, func(c *config.Config) {
		c.Payload.Rules = []config.PayloadRule{
			{Topics: []string{"cap0/#"}, MaxQoS: &zero, MaxQoSAction: "cap"},
			{Topics: []string{"cap1/#"}, MaxQoS: &one, MaxQoSAction: "cap"},
		}
	})
	spied := spy(t, e)
	c := paho5(t, e.plain, nil, "cap5", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, cs := range []struct {
		topic string
		qos   byte
	}{{"cap0/a", 1}, {"cap0/b", 2}, {"cap1/c", 2}, {"cap1/d", 2}} {
		r, err := c.Publish(ctx, &paho.Publish{Topic: cs.topic, QoS: cs.qos, Payload: []byte(cs.topic)})
		if err != nil || r == nil || r.ReasonCode >= 0x80 {
			t.Fatalf("%s at QoS %d: %+v, %v", cs.topic, cs.qos, r, err)
		}
	}
	c3 := paho3(t, e.plain, nil, "cap3", true)
	wait3(t, c3.Publish("cap1/e", 2, false, "cap1/e"), "3.1.1 QoS 2 publish")
	wait3(t, c3.Publish("cap0/f", 2, false, "cap0/f"), "3.1.1 QoS 2 publish")
	want := map[string]byte{"cap0/a": 0, "cap0/b": 0, "cap1/c": 1, "cap1/d": 1, "cap1/e": 1, "cap0/f": 0}
	for _, m := range spied.wait(t, len(want), 5*time.Second) {
		if q, ok := want[m.Topic]; !ok || m.QoS != q || m.Payload != m.Topic {
			t.Errorf("broker got %+v, want QoS %d", m, q)
		}
	}
	// Packet ids freed by moat's acks are reused without confusion.
	for i := range 30 {
		r, err := c.Publish(ctx, &paho.Publish{Topic: "cap1/loop", QoS: 2, Payload: []byte{byte(i)}})
		if err != nil || r == nil || r.ReasonCode >= 0x80 {
			t.Fatalf("loop %d: %+v, %v", i, r, err)
		}
	}
	spied.wait(t, len(want)+30, 5*time.Second)
}

// Payload rules written in Rego (package moat.payload) run on the
// publishes the policy marks with inspect, and only on those.
func TestPayloadPolicy(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"authz.rego": "package moat.authz\nallow := true\ninspect if moat.topic_matches(\"valves/+/cmd\", input.topic)\n",
		"payload.rego": `package moat.payload
deny contains "not JSON" if not input.payload.json
deny contains "unknown action" if not input.payload.json.action in {"open", "close"}
`,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e := newEnv(t, func(c *config.Config) {
		c.Policy = &config.Policy{Mode: config.ModeEnforce, Paths: []string{dir}, WatchInterval: config.OptDuration{Set: true}}
	})
	spied := spy(t, e)
	c := paho5(t, e.plain, nil, "pp5", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, cs := range []struct {
		topic, payload string
		ok             bool
	}{
		{"valves/v1/cmd", `{"action":"close"}`, true},
		{"valves/v1/cmd", `{"action":"explode"}`, false},
		{"valves/v1/cmd", `close`, false},
		{"telemetry/v1", "\xff not checked", true},
	} {
		r, err := c.Publish(ctx, &paho.Publish{Topic: cs.topic, QoS: 1, Payload: []byte(cs.payload)})
		if r == nil {
			t.Fatal(err)
		}
		if cs.ok && r.ReasonCode >= 0x80 || !cs.ok && r.ReasonCode != byte(codec.PayloadFormatInvalid) {
			t.Errorf("%s %q: 0x%02X", cs.topic, cs.payload, r.ReasonCode)
		}
	}
	c3 := paho3(t, e.plain, nil, "pp3", true)
	wait3(t, c3.Publish("valves/v2/cmd", 1, false, `{"action":"explode"}`), "3.1.1 refused publish")
	wait3(t, c3.Publish("valves/v2/cmd", 1, false, `{"action":"open"}`), "3.1.1 publish")
	got := spied.wait(t, 3, 5*time.Second)
	time.Sleep(200 * time.Millisecond)
	if spied.count() != 3 || got[0].Payload != `{"action":"close"}` || got[2].Payload != `{"action":"open"}` {
		t.Fatalf("broker got %+v", got)
	}
}
