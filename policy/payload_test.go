package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const payloadPolicy = `package moat.authz
allow := true
inspect if moat.topic_matches("valves/+/cmd", input.topic)
`

const payloadRules = `package moat.payload
deny contains "not JSON" if not input.payload.json
deny contains sprintf("action %v is not allowed", [input.payload.json.action]) if {
	input.payload.json
	not input.payload.json.action in {"open", "close"}
}
deny contains "too large" if input.payload.size > 64
`

func payloadEngine(t *testing.T, authz, rules string) (*Engine, error) {
	t.Helper()
	dir := t.TempDir()
	for name, body := range map[string]string{"authz.rego": authz, "payload.rego": rules} {
		if body == "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return New(Options{Paths: []string{dir}})
}

func TestPayloadRules(t *testing.T) {
	e, err := payloadEngine(t, payloadPolicy, payloadRules)
	if err != nil {
		t.Fatal(err)
	}
	s := NewSubject(1, Client{ID: "c", ProtocolVersion: 5, AuthMethod: "anonymous"})
	cmd := &Request{Action: Publish, Topic: "valves/v1/cmd", QoS: 1}
	if d := e.Decide(s, cmd); !d.Allow || !d.Inspect {
		t.Fatalf("command topic: %+v, want allowed and inspected", d)
	}
	if d := e.Decide(s, cmd); !d.Cached || !d.Inspect {
		t.Fatalf("cached decision lost inspect: %+v", d)
	}
	if d := e.Decide(s, &Request{Action: Publish, Topic: "telemetry/t1"}); !d.Allow || d.Inspect {
		t.Fatalf("plain topic: %+v, want allowed, not inspected", d)
	}
	for payload, want := range map[string]string{
		`{"action":"close"}`:   "",
		`{"action":"explode"}`: "action explode is not allowed",
		"close":                "not JSON",
		"\xff\xfe":             "not JSON",
		`{"action":"open","pad":"` + strings.Repeat("x", 64) + `"}`: "too large",
	} {
		d := e.CheckPayload(s, cmd, []byte(payload))
		if d.Allow != (want == "") || !strings.Contains(d.Reason, want) {
			t.Errorf("%q: %+v, want reason %q", payload, d, want)
		}
	}
}

func TestPayloadRulesNeedEachOther(t *testing.T) {
	if _, err := payloadEngine(t, payloadPolicy, ""); err == nil || !strings.Contains(err.Error(), "no module defines package moat.payload") {
		t.Fatalf("inspect without rules: %v", err)
	}
	if _, err := payloadEngine(t, "package moat.authz\nallow := true\n", payloadRules); err == nil || !strings.Contains(err.Error(), "would never run") {
		t.Fatalf("rules without inspect: %v", err)
	}
	// A deny that is not a set of strings fails the smoke evaluation.
	if _, err := payloadEngine(t, payloadPolicy, "package moat.payload\ndeny contains 5 if true\n"); err == nil || !strings.Contains(err.Error(), "moat.payload") {
		t.Fatalf("numeric deny: %v", err)
	}
}
