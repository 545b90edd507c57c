package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const limitsPolicy = `package moat.authz
allow := true
limits := {"publish_per_second": 5, "topic_rates": [{"topics": ["t/+/telemetry"], "publish_per_second": 1}]} if input.client.id == "slow"
limits := {"publish_per_second": -1} if input.client.id == "free"
`

func TestPolicyLimits(t *testing.T) {
	e := newEngine(t, limitsPolicy, Options{})
	sub := func(id string) *Subject {
		return NewSubject(1, Client{ID: id, ProtocolVersion: 5, AuthMethod: "anonymous"})
	}
	l, err := e.Limits(sub("slow"))
	if err != nil || l == nil || l.PublishPerSecond != 5 || len(l.TopicRates) != 1 || l.TopicRates[0].Topics[0] != "t/+/telemetry" {
		t.Fatalf("slow: %+v, %v", l, err)
	}
	if l, err := e.Limits(sub("free")); err != nil || l == nil || l.PublishPerSecond != -1 {
		t.Fatalf("free: %+v, %v", l, err)
	}
	if l, err := e.Limits(sub("other")); err != nil || l != nil {
		t.Fatalf("undefined for a client: %+v, %v", l, err)
	}
	// A policy without the rule gives none.
	if l, err := newEngine(t, "package moat.authz\nallow := true\n", Options{}).Limits(sub("x")); l != nil || err != nil {
		t.Fatalf("no rule: %+v, %v", l, err)
	}
}

func TestPolicyLimitsMalformed(t *testing.T) {
	for name, rule := range map[string]string{
		"not an object":   `limits := 5`,
		"unknown key":     `limits := {"publish_per_secnd": 5}`,
		"wrong type":      `limits := {"publish_per_second": "fast"}`,
		"bad topic rate":  `limits := {"topic_rates": [{"topics": [], "publish_per_second": 1}]}`,
		"bad topic":       `limits := {"topic_rates": [{"topics": ["a/#/b"], "publish_per_second": 1}]}`,
		"no rate on rule": `limits := {"topic_rates": [{"topics": ["a"]}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			body := "package moat.authz\nallow := true\n" + rule + "\n"
			if err := os.WriteFile(filepath.Join(dir, "p.rego"), []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			// The smoke evaluation sees it: such a policy never goes live.
			if _, err := New(Options{Paths: []string{dir}}); err == nil || !strings.Contains(err.Error(), "limits") {
				t.Fatalf("accepted, or the error does not say limits: %v", err)
			}
		})
	}
	// Malformed only for some clients: the smoke test cannot see it, the
	// evaluation refuses.
	e := newEngine(t, "package moat.authz\nallow := true\nlimits := \"x\" if input.client.id == \"odd\"\n", Options{})
	if _, err := e.Limits(NewSubject(1, Client{ID: "odd"})); err == nil {
		t.Fatal("a malformed limits value was accepted")
	}
}
