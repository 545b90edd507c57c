package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writePolicy(t testing.TB, dir, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "p.rego"), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newEngine(t testing.TB, body string, opts Options) *Engine {
	t.Helper()
	dir := t.TempDir()
	writePolicy(t, dir, body)
	opts.Paths = []string{dir}
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func certSubject(cn string) *Subject {
	return NewSubject(1, Client{ID: cn, ProtocolVersion: 5, Address: "127.0.0.1", Port: 40000, Listener: "mtls",
		Transport: "tls", AuthMethod: "certificate", Cert: &Cert{Subject: Name{CommonName: cn}}})
}

func plant(t testing.TB, opts Options) *Engine {
	t.Helper()
	opts.Paths = []string{"../policies/plant"}
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestPlantDecisions(t *testing.T) {
	e := plant(t, Options{})
	sensor, dash := certSubject("sensor-7"), certSubject("dashboard-1")
	cases := []struct {
		s    *Subject
		r    Request
		want bool
	}{
		{sensor, Request{Action: Connect}, true},
		{sensor, Request{Action: Publish, Topic: "sensors/sensor-7/temp", QoS: 1}, true},
		{sensor, Request{Action: Publish, Topic: "sensors/sensor-8/temp", QoS: 1}, false},
		{sensor, Request{Action: Publish, Topic: "status/sensor-7", Will: true}, true},
		{sensor, Request{Action: Publish, Topic: "status/sensor-7"}, false},
		{dash, Request{Action: Subscribe, Topic: "sensors/+/temp"}, true},
		{dash, Request{Action: Subscribe, Topic: "#"}, false},
		{dash, Request{Action: Subscribe, Topic: "#", Shared: true, ShareGroup: "g"}, false},
		{dash, Request{Action: Subscribe, Topic: "sensors/#", Shared: true, ShareGroup: "g"}, true},
		{dash, Request{Action: Receive, Topic: "commands/x"}, false},
		{dash, Request{Action: Receive, Topic: "sensors/a/b"}, true},
	}
	for _, c := range cases {
		r := c.r
		if d := e.Decide(c.s, &r); d.Allow != c.want || d.Denied == c.want {
			t.Errorf("%s %s %q: %+v, want allow %v", c.s.Client.ID, r.Action, r.Topic, d, c.want)
		}
	}
	// The same requests again come from the cache, with the same answers;
	// connect and will decisions, made once per connection, are not cached.
	// The dashboard's fourth subscribe miss specialised its rules
	// (residual.go): that one is answered by them, not the cache.
	for _, c := range cases {
		r := c.r
		once := r.Action == Connect || r.Will
		before := e.Stats().Specialised
		d := e.Decide(c.s, &r)
		fromResidual := e.Stats().Specialised > before
		if d.Allow != c.want || d.Cached == (once || fromResidual) {
			t.Errorf("second %s %s %q: %+v", c.s.Client.ID, r.Action, r.Topic, d)
		}
	}
	if st := e.Stats(); st.CacheHits != uint64(len(cases)-3) || st.Specialised != 2 || st.CacheMisses != uint64(len(cases)+3) || st.Denials != 10 {
		t.Errorf("stats %+v", st)
	}
	d := e.Decide(dash, &Request{Action: Publish, Topic: "commands/x"})
	if d.Reason != "dashboard-1 may not publish commands/x" {
		t.Errorf("reason %q", d.Reason)
	}
}

// Anything but a single boolean true is a denial.
func TestFailClosed(t *testing.T) {
	s := certSubject("c")
	cases := map[string]string{
		"undefined": `package moat.authz
allow if input.topic == "never"`,
		"conflict": `package moat.authz
allow := true if input.topic == "t"
allow := false if startswith(input.topic, "t")`,
		"builtin error": `package moat.authz
default allow := false
allow if moat.topic_matches(input.client.id, "t")
allow if input.action == "connect"`,
		"non-boolean": `package moat.authz
default allow := false
allow := "yes" if input.topic == "t"
allow if input.action == "connect"`,
		"timeout": `package moat.authz
default allow := false
allow if input.action == "connect"
allow if {
	input.topic == "t"
	count([x | some x in numbers.range(1, 100000000); x % 7 == 3]) > 0
}`,
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			e := newEngine(t, body, Options{EvalTimeout: 20 * time.Millisecond})
			d := e.Decide(s, &Request{Action: Publish, Topic: "t"})
			if d.Allow || !d.Denied {
				t.Fatalf("allowed: %+v", d)
			}
		})
	}
}

func TestRefusedPolicies(t *testing.T) {
	cases := map[string]string{
		"syntax":        "package moat.authz\nallow if {",
		"no allow":      "package moat.authz\nfoo := 1",
		"wrong package": "package authz\nallow := true",
		"type error":    "package moat.authz\nallow if moat.topic_matches(1, 2)",
		"smoke non-boolean": `package moat.authz
allow := "yes"`,
		"unknown builtin": "package moat.authz\nallow if moat.nope(input.topic)",
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writePolicy(t, dir, body)
			_, err := New(Options{Paths: []string{dir}})
			if err == nil {
				t.Fatal("accepted")
			}
			if name == "syntax" && !strings.Contains(err.Error(), "p.rego:2") {
				t.Errorf("error does not name file and line: %v", err)
			}
		})
	}
	if _, err := New(Options{Paths: []string{t.TempDir()}}); err == nil || !strings.Contains(err.Error(), "no .rego files") {
		t.Errorf("empty dir: %v", err)
	}
}

const allowT = `package moat.authz
default allow := false
allow if input.action == "connect"
allow if input.topic == "t"`

const allowU = `package moat.authz
default allow := false
allow if input.action == "connect"
allow if input.topic == "u"`

func TestReloadKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	writePolicy(t, dir, allowT)
	e, err := New(Options{Paths: []string{dir}})
	if err != nil {
		t.Fatal(err)
	}
	s := certSubject("c")
	if !e.Decide(s, &Request{Action: Publish, Topic: "t"}).Allow {
		t.Fatal("t denied")
	}
	rev := e.Revision()
	writePolicy(t, dir, "package moat.authz\nallow if {")
	if err := e.Reload(); err == nil {
		t.Fatal("broken policy accepted")
	}
	if e.Revision() != rev || !e.Decide(s, &Request{Action: Publish, Topic: "t"}).Allow {
		t.Fatal("broken reload changed the policy in force")
	}
	writePolicy(t, dir, allowU)
	if err := e.Reload(); err != nil {
		t.Fatal(err)
	}
	// The cache went with the old revision: t is denied at once.
	if e.Decide(s, &Request{Action: Publish, Topic: "t"}).Allow || !e.Decide(s, &Request{Action: Publish, Topic: "u"}).Allow {
		t.Fatal("reload did not take effect")
	}
}

func TestWatchReloads(t *testing.T) {
	dir := t.TempDir()
	writePolicy(t, dir, allowT)
	e, err := New(Options{Paths: []string{dir}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	stop := make(chan struct{})
	ctx := ctxFrom(stop)
	go func() { e.Watch(ctx, 10*time.Millisecond); close(done) }()
	defer func() { close(stop); <-done }()
	rev := e.Revision()
	writePolicy(t, dir, allowU+"\n# changed\n")
	s := certSubject("c")
	for deadline := time.Now().Add(5 * time.Second); e.Revision() == rev; {
		if time.Now().After(deadline) {
			t.Fatal("watch did not reload")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !e.Decide(s, &Request{Action: Publish, Topic: "u"}).Allow {
		t.Fatal("new policy not in force")
	}
}

func TestShadowMode(t *testing.T) {
	var log bytes.Buffer
	e := newEngine(t, allowT, Options{Mode: Shadow, Decisions: NewDecisionLog(&log, false, 0)})
	s := certSubject("c")
	d := e.Decide(s, &Request{Action: Publish, Topic: "x", QoS: 1})
	if !d.Allow || !d.Denied {
		t.Fatalf("shadow: %+v", d)
	}
	if st := e.Stats(); st.ShadowDenials != 1 || st.Denials != 0 {
		t.Fatalf("stats %+v", st)
	}
	var line map[string]any
	if err := json.Unmarshal(log.Bytes(), &line); err != nil {
		t.Fatalf("decision log %q: %v", log.String(), err)
	}
	if line["decision"] != "shadow_deny" || line["topic"] != "x" || line["client_id"] != "c" || line["revision"] != e.Revision() {
		t.Errorf("decision log line %v", line)
	}
}

func TestDecisionLog(t *testing.T) {
	var log bytes.Buffer
	e := newEngine(t, allowT, Options{Decisions: NewDecisionLog(&log, true, 0)})
	s := certSubject("c")
	e.Decide(s, &Request{Action: Publish, Topic: "t"})
	e.Decide(s, &Request{Action: Subscribe, Topic: "x", Shared: true, ShareGroup: "g"})
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"decision":"allow"`) || !strings.Contains(lines[1], `"decision":"deny"`) || !strings.Contains(lines[1], `"share_group":"g"`) {
		t.Errorf("decision log:\n%s", log.String())
	}
}

func TestDollarTopicsNeedExplicitRule(t *testing.T) {
	e := newEngine(t, `package moat.authz
allow := true`, Options{})
	s := certSubject("c")
	if d := e.Decide(s, &Request{Action: Publish, Topic: "$SYS/x"}); d.Allow {
		t.Fatalf("$ publish allowed without allow_dollar: %+v", d)
	}
	if d := e.Decide(s, &Request{Action: Subscribe, Topic: "$SYS/#"}); !d.Allow {
		t.Fatalf("subscribe is the policy's call: %+v", d)
	}
	e = newEngine(t, `package moat.authz
allow := true
allow_dollar if startswith(input.topic, "$devices/")`, Options{})
	if !e.Decide(s, &Request{Action: Publish, Topic: "$devices/a"}).Allow || e.Decide(s, &Request{Action: Publish, Topic: "$SYS/a"}).Allow {
		t.Fatal("allow_dollar not applied")
	}
}

func TestCacheTTLAndKey(t *testing.T) {
	e := newEngine(t, allowT, Options{CacheTTL: time.Nanosecond})
	s := certSubject("c")
	e.Decide(s, &Request{Action: Publish, Topic: "t"})
	time.Sleep(time.Millisecond)
	if d := e.Decide(s, &Request{Action: Publish, Topic: "t"}); d.Cached {
		t.Fatal("expired entry used")
	}
	// Expiry is judged at the request's At when the caller gives one.
	e = newEngine(t, allowT, Options{CacheTTL: time.Minute})
	e.Decide(s, &Request{Action: Publish, Topic: "t"})
	if d := e.Decide(s, &Request{Action: Publish, Topic: "t", At: time.Now()}); !d.Cached {
		t.Fatal("fresh entry not used")
	}
	if d := e.Decide(s, &Request{Action: Publish, Topic: "t", At: time.Now().Add(2 * time.Minute)}); d.Cached {
		t.Fatal("entry used past its TTL at the request's time")
	}
	e = newEngine(t, `package moat.authz
default allow := false
allow if input.action == "connect"
allow if { input.action == "publish"; input.topic == "t"; input.qos == 0; not input.retain; input.client.port == 40000 }`, Options{})
	if !e.Decide(s, &Request{Action: Publish, Topic: "t"}).Allow {
		t.Fatal("t qos 0 denied")
	}
	// Every field the decision depends on is part of the key.
	for _, r := range []Request{{Action: Publish, Topic: "t", QoS: 1}, {Action: Publish, Topic: "t", Retain: true}, {Action: Receive, Topic: "t"}} {
		if d := e.Decide(s, &r); d.Allow {
			t.Errorf("%+v allowed from the cache", r)
		}
	}
	other := NewSubject(2, Client{ID: "c", ProtocolVersion: 5, Address: "127.0.0.1", Port: 40001, AuthMethod: "certificate"})
	if e.Decide(other, &Request{Action: Publish, Topic: "t"}).Allow {
		t.Error("another client's decision reused")
	}
}

// A request's strings may alias a buffer the caller reuses: the cache must
// keep its own copy.
func TestRequestBuffersNotRetained(t *testing.T) {
	e := newEngine(t, allowT, Options{})
	s := certSubject("c")
	buf := []byte("t")
	if !e.Decide(s, &Request{Action: Publish, Topic: View(buf)}).Allow {
		t.Fatal("t denied")
	}
	buf[0] = 'x'
	if e.Decide(s, &Request{Action: Publish, Topic: View(buf)}).Allow {
		t.Fatal("x allowed: the cache kept the caller's buffer")
	}
}

func ctxFrom(stop <-chan struct{}) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-stop; cancel() }()
	return ctx
}

// A quiet connection keeps no client document; the next miss rebuilds it.
func TestSubjectRelease(t *testing.T) {
	e := newEngine(t, allowT, Options{CacheSize: -1})
	s := certSubject("c")
	if !e.Decide(s, &Request{Action: Publish, Topic: "t"}).Allow || s.term.Load() == nil {
		t.Fatal("no document after a miss")
	}
	s.Release()
	if s.term.Load() != nil {
		t.Fatal("document kept after Release")
	}
	if !e.Decide(s, &Request{Action: Publish, Topic: "t"}).Allow || e.Decide(s, &Request{Action: Publish, Topic: "x"}).Allow {
		t.Fatal("wrong decision after Release")
	}
}

// The cache holds at most cache.size decisions.
func TestCacheBounded(t *testing.T) {
	e := newEngine(t, allowT, Options{CacheSize: 2})
	s := certSubject("c")
	for _, topic := range []string{"t", "u", "v"} {
		e.Decide(s, &Request{Action: Publish, Topic: topic})
	}
	if n := e.cur.Load().cache.Len(); n != 2 {
		t.Fatalf("cache holds %d", n)
	}
	if d := e.Decide(s, &Request{Action: Publish, Topic: "t"}); d.Cached {
		t.Fatal("the oldest entry was not evicted")
	}
}

// A flood of denials is rate limited in the log and counted.
func TestDecisionLogLimit(t *testing.T) {
	var log bytes.Buffer
	e := newEngine(t, allowT, Options{Decisions: NewDecisionLog(&log, false, 5)})
	s := certSubject("c")
	for range 100 {
		e.Decide(s, &Request{Action: Publish, Topic: "x"})
	}
	if n := strings.Count(log.String(), "\n"); n != 5 {
		t.Fatalf("%d lines for 100 denials at 5/s", n)
	}
	time.Sleep(250 * time.Millisecond) // a token comes back
	e.Decide(s, &Request{Action: Publish, Topic: "x"})
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	if len(lines) != 7 || !strings.Contains(lines[5], `"suppressed":95`) {
		t.Fatalf("after the flood:\n%s", log.String())
	}
}
