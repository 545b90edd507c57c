package payload

import (
	"errors"
	"strings"
	"testing"
)

func TestRules(t *testing.T) {
	schema, err := CompileSchema("testdata/command.json")
	if err != nil {
		t.Fatal(err)
	}
	c, err := New([]*Rule{
		{Topics: []string{"commands/#"}, Schema: schema, Retain: "forbid", MaxQoS: 1},
		{Topics: []string{"telemetry/#"}, MaxSize: 16, UTF8: true, Retain: "strip", MaxQoS: -1},
		{Topics: []string{"json/#"}, JSON: true, MaxQoS: -1},
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Rule("other/x") != nil || c.Rule("commandsx") != nil {
		t.Fatal("a rule matched a topic it does not name")
	}
	cases := []struct {
		topic, payload string
		qos            byte
		retain         bool
		refuse         string
		strip          bool
	}{
		{"commands/v1", `{"valve":"valve1","action":"close"}`, 1, false, "", false},
		{"commands/v1", `{"valve":"valve1","action":"explode"}`, 1, false, "schema", false},
		{"commands/v1", `{"valve":"valve1"}`, 1, false, "schema", false},
		{"commands/v1", `not json`, 1, false, "not JSON", false},
		{"commands/v1", `{"valve":"valve1","action":"close"}`, 2, false, "QoS 2", false},
		{"commands/v1", `{"valve":"valve1","action":"close"}`, 1, true, "retained", false},
		{"telemetry/t", "21.5", 0, true, "", true},
		{"telemetry/t", strings.Repeat("x", 17), 0, false, "17 bytes", false},
		{"telemetry/t", "\xff\xfe", 0, false, "UTF-8", false},
		{"json/x", `[1,2,3]`, 0, false, "", false},
		{"json/x", `[1,2,`, 0, false, "not JSON", false},
	}
	for _, cs := range cases {
		r := c.Rule(cs.topic)
		if r == nil {
			t.Fatalf("no rule for %s", cs.topic)
		}
		v := r.Check([]byte(cs.payload), cs.qos, cs.retain)
		if cs.refuse == "" && v.Refuse != nil || cs.refuse != "" && (v.Refuse == nil || !strings.Contains(v.Refuse.Error(), cs.refuse) || !errors.Is(v.Refuse, ErrPayload)) {
			t.Errorf("%s %q: %v, want %q", cs.topic, cs.payload, v.Refuse, cs.refuse)
		}
		if v.StripRetain != cs.strip {
			t.Errorf("%s %q: strip %v", cs.topic, cs.payload, v.StripRetain)
		}
	}
	if _, err := New([]*Rule{{Topics: []string{"a/#/b"}}}); err == nil {
		t.Error("invalid filter accepted")
	}
	if _, err := New([]*Rule{{Topics: []string{"a"}, Retain: "maybe"}}); err == nil {
		t.Error("bad retain accepted")
	}
}

func FuzzCheck(f *testing.F) {
	schema, err := CompileSchema("testdata/command.json")
	if err != nil {
		f.Fatal(err)
	}
	r := &Rule{Topics: []string{"#"}, Schema: schema, MaxSize: 4096, MaxQoS: -1}
	f.Add([]byte(`{"valve":"valve1","action":"close"}`))
	f.Add([]byte(`{"valve":`))
	f.Add([]byte("\xff"))
	f.Fuzz(func(t *testing.T, p []byte) {
		r.Check(p, 1, false)
	})
}

func BenchmarkCheck(b *testing.B) {
	schema, err := CompileSchema("testdata/command.json")
	if err != nil {
		b.Fatal(err)
	}
	c, _ := New([]*Rule{{Topics: []string{"commands/#"}, Schema: schema, MaxQoS: -1}, {Topics: []string{"telemetry/+/raw"}, MaxSize: 64, MaxQoS: -1}})
	p := []byte(`{"valve":"valve1","action":"close"}`)
	b.Run("schema", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if v := c.Rule("commands/valve1").Check(p, 1, false); v.Refuse != nil {
				b.Fatal(v.Refuse)
			}
		}
	})
	b.Run("no rule", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if c.Rule("sensors/s7/temp") != nil {
				b.Fatal("matched")
			}
		}
	})
}

func TestCapQoS(t *testing.T) {
	r := &Rule{Topics: []string{"t"}, MaxQoS: 1, CapQoS: true}
	if v := r.Check([]byte("x"), 2, false); v.Refuse != nil || !v.Capped || v.QoS != 1 {
		t.Fatalf("QoS 2 over a cap of 1: %+v", v)
	}
	if v := r.Check([]byte("x"), 1, false); v.Capped {
		t.Fatalf("QoS 1 at the cap was capped: %+v", v)
	}
	r.CapQoS = false
	if v := r.Check([]byte("x"), 2, false); v.Refuse == nil {
		t.Fatal("QoS 2 over a refusing max_qos of 1 passed")
	}
}
