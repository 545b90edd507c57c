package policy

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

// tricky exercises every check residual.go knows, and a few it does not
// (those must fall back, never guess).
const tricky = `package moat.authz

import rego.v1

default allow := false

allow if {
	input.action == "publish"
	input.topic_levels[0] == "site"
	input.topic_levels[1] == input.client.id
	input.qos != 2
	input.retain == false
}

allow if {
	input.action == "publish"
	startswith(input.topic, "logs/")
	endswith(input.topic, "/txt")
	input.properties.content_type == "text/plain"
}

allow if {
	input.action == "publish"
	input.retain
	input.topic_levels[2] == "keep"
	input.qos == 0
}

allow if {
	input.action == "subscribe"
	input.share_group == "g1"
	moat.filter_covers("jobs/#", input.topic)
}

allow if {
	input.action == "subscribe"
	input.share_group == null
	moat.filter_covers_with("inbox/{id}/#", {"id": input.client.id}, input.topic)
}

allow if {
	input.action == "receive"
	contains(input.topic, input.client.id)
	input.qos == 1
}

allow if {
	input.action == "unsubscribe"
	input.topic in {"a/b", "c/d"}
}

allow if {
	input.action == "unsubscribe"
	count(input.topic_levels) < 3
	input.topic_levels[0] == "x"
}

allow if {
	input.action == "unsubscribe"
	not startswith(input.topic, "hidden/")
}

allow if {
	input.action == "receive"
	input.properties.response_topic == "r"
	input.topic_levels[0] != "hidden"
}

allow if {
	input.action == "receive"
	input.topic in {"a/b", "c/d", "inbox/dev1"}
	not input.retain
}

allow if {
	input.action == "subscribe"
	input.qos in [0, 1]
	not startswith(input.topic, "jobs/")
	not input.topic_levels[1] == "#"
	moat.filter_covers("x/#", input.topic)
}
`

func engineAt(t testing.TB, path string) *Engine {
	t.Helper()
	e, err := New(Options{Paths: []string{path}})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// randomRequest draws requests near the policies' edges: matching and
// almost-matching topics, wildcards, '$' topics, every QoS, shares and
// properties.
func randomRequest(rng *rand.Rand, a Action, ids []string) Request {
	firsts := []string{"site", "sensors", "status", "commands", "jobs", "inbox", "logs", "tenants", "public", "demo", "x", "a", "c", "hidden"}
	levels := []string{"txt", "keep", "b", "d", "", "+", "#", "$SYS", "acme", "globex"}
	pick := func(l []string) string { return l[rng.IntN(len(l))] }
	parts := []string{pick(firsts)}
	switch rng.IntN(6) {
	case 0:
		parts[0] = pick(levels)
	case 1:
		parts[0] = pick(ids)
	}
	for n := rng.IntN(4); n > 0; n-- {
		switch rng.IntN(3) {
		case 0:
			parts = append(parts, pick(ids))
		default:
			parts = append(parts, pick(levels))
		}
	}
	r := Request{Action: a, Topic: strings.Join(parts, "/"), QoS: byte(rng.IntN(4)), Retain: rng.IntN(2) == 0}
	if a == Subscribe && rng.IntN(3) == 0 {
		r.Shared, r.ShareGroup = true, pick([]string{"g1", "g2"})
	}
	if rng.IntN(3) == 0 {
		r.Props = &Props{ContentType: pick([]string{"text/plain", "json", ""}), ResponseTopic: pick([]string{"r", "q"})}
	}
	return r
}

// TestResidualAgreesWithOPA checks the specialised rules against the full
// evaluation: they never allow what the policy denies, a supported residual
// answers exactly as the policy does, and the example policies' residuals
// are all supported (so the fast path really is taken).
func TestResidualAgreesWithOPA(t *testing.T) {
	cases := []struct {
		name     string
		path     string
		body     string
		subjects []*Subject
		complete bool
	}{
		{"plant", "../policies/plant", "", []*Subject{certSubject("sensor-7"), certSubject("dashboard-1"), certSubject("controller"), certSubject("intruder")}, true},
		{"multitenant", "../policies/multitenant", "", []*Subject{
			NewSubject(1, Client{ID: "acme-1", Username: "acme.alice", AuthMethod: "password", Address: "127.0.0.1"}),
			NewSubject(2, Client{ID: "x", AuthMethod: "jwt", Claims: map[string]any{"tenant": "globex"}}),
			NewSubject(3, Client{ID: "y", AuthMethod: "jwt", Claims: map[string]any{"tenant": 7}}),
		}, true},
		{"quickstart", "../policies/quickstart", "", []*Subject{NewSubject(1, Client{ID: "q", Address: "127.0.0.1", AuthMethod: "anonymous"})}, true},
		{"tricky", "", tricky, []*Subject{certSubject("dev1"), certSubject("#"), certSubject("a/b"), certSubject("")}, false},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var e *Engine
			if c.body != "" {
				e = newEngine(t, c.body, Options{})
			} else {
				e = engineAt(t, c.path)
			}
			rev := e.cur.Load()
			if !rev.residuals {
				t.Fatal("the policy's allow rules should be specialisable")
			}
			supported, allowed := 0, 0
			for _, s := range c.subjects {
				ids := []string{s.Client.ID, "sensor-8", "acme", "globex"}
				for _, a := range []Action{Publish, Subscribe, Unsubscribe, Receive} {
					rs := e.specialise(rev, s, a)
					if c.complete && !rs.ok {
						t.Fatalf("%s %s: residual not supported", s.Client.ID, a)
					}
					if rs.ok {
						supported++
					}
					for range 1000 {
						r := randomRequest(rng, a, ids)
						want, _, err := evalBool(budget{}, rev.allow, s.input(&r, rev.use))
						if err != nil {
							continue // an error is a denial; the residual only ever allows
						}
						got := rs.ok && rs.allows(&r)
						if got && !want {
							t.Fatalf("%s %s %+v: residual allows, the policy denies", s.Client.ID, a, r)
						}
						if rs.ok && got != want {
							t.Fatalf("%s %s %+v: residual %v, policy %v", s.Client.ID, a, r, got, want)
						}
						if got {
							allowed++
						}
					}
				}
			}
			if supported == 0 || allowed == 0 {
				t.Fatalf("nothing exercised: %d residuals supported, %d requests allowed by them", supported, allowed)
			}
		})
	}
}

// TestResidualFallsBack: forms the checks do not evaluate exactly leave
// the decision to OPA.
func TestResidualFallsBack(t *testing.T) {
	e := newEngine(t, tricky, Options{})
	rev := e.cur.Load()
	s := certSubject("dev1")
	if rs := e.specialise(rev, s, Unsubscribe); rs.ok { // count()
		t.Errorf("unsubscribe: residual %v claims support", rs.bodies)
	}
	for _, a := range []Action{Publish, Subscribe, Receive} {
		if rs := e.specialise(rev, s, a); !rs.ok {
			t.Errorf("%s: residual not supported", a)
		}
	}
	for _, src := range []string{
		`input.topic in {"a", {"x": 1}}`,
		`input.topic in input.topic_levels`,
		`input.qos in {1.5}`,
		`not count(input.topic_levels) > 1`,
		`input.topic == "a" with input.topic as "a"`,
		`x := input.topic; x == "a"`,
		`input.qos == 1.5`,
		`input.client.id == "a"`,
		`input.properties.user[0][0] == "k"`,
		`input.topic_levels[-1] == "a"`,
		`input.topic > "a"`,
		`moat.topic_matches(input.topic, "a")`,
		`moat.topic_matches("a/#/b", input.topic)`,
		`startswith(input.qos, "a")`,
		`startswith(input.share_group, "a")`,
		`moat.topic_matches_with("a/{nope}", {"id": "x"}, input.topic)`,
		`{"a": 1}[input.topic] == 1`,
	} {
		body, err := ast.ParseBody(src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if _, ok := compileBody(body); ok {
			t.Errorf("%s: compiled, want a fallback", src)
		}
	}
}

func TestResidualSafe(t *testing.T) {
	for _, c := range []struct {
		src  string
		safe bool
	}{
		{"package moat.authz\nimport rego.v1\ndefault allow := false\nallow if input.topic == \"a\"", true},
		{"package moat.authz\nimport rego.v1\nallow := true if input.topic == \"a\"", true},
		// A false value can conflict with a true one; the full query reports that.
		{"package moat.authz\nimport rego.v1\nallow := false if input.topic == \"b\"\nallow if input.topic != \"\"", false},
		{"package moat.authz\nimport rego.v1\nallow := input.retain", false},
		{"package moat.authz\nimport rego.v1\ndefault allow := true\nallow if input.topic == \"a\"", false},
		{"package moat.authz\nimport rego.v1\nallow if input.topic == \"a\" else := false if input.qos == 1", false},
		{"package moat\nimport rego.v1\nauthz.allow := 1 if input.topic == \"a\"", false},
	} {
		c := c
		dir := t.TempDir()
		writePolicy(t, dir, c.src)
		e, err := New(Options{Paths: []string{dir}})
		if err != nil {
			// Policies the engine refuses never reach the question.
			if c.safe {
				t.Errorf("%q: %v", c.src, err)
			}
			continue
		}
		if got := e.cur.Load().residuals; got != c.safe {
			t.Errorf("%q: residuals %v, want %v", c.src, got, c.safe)
		}
	}
}

func TestTopicLevel(t *testing.T) {
	for _, c := range []struct {
		topic string
		n     int
		want  string
		ok    bool
	}{
		{"a/b/c", 0, "a", true}, {"a/b/c", 2, "c", true}, {"a/b/c", 3, "", false},
		{"", 0, "", true}, {"/", 1, "", true}, {"a//", 2, "", true}, {"a", 1, "", false},
	} {
		got, ok := topicLevel(c.topic, c.n)
		if got != c.want || ok != c.ok {
			t.Errorf("topicLevel(%q, %d) = %q, %v", c.topic, c.n, got, ok)
		}
		// Agrees with the input document, which splits at every '/'.
		parts := strings.Split(c.topic, "/")
		if ok != (c.n < len(parts)) || ok && parts[c.n] != got {
			t.Errorf("topicLevel(%q, %d) disagrees with strings.Split", c.topic, c.n)
		}
	}
}

// The fast path is taken after residualAfter misses, and stays exact
// across the subject's release and a policy reload.
func TestResidualInDecide(t *testing.T) {
	e := plant(t, Options{})
	s := certSubject("sensor-7")
	for i := range residualAfter + 10 {
		r := Request{Action: Publish, Topic: "sensors/sensor-7/t" + string(rune('a'+i)), QoS: 1}
		if !e.Decide(s, &r).Allow {
			t.Fatalf("%q denied", r.Topic)
		}
	}
	// The first residualAfter-1 misses are evaluated in full.
	if got := e.Stats().Specialised; got != 11 {
		t.Fatalf("specialised %d, want 11", got)
	}
	// Denials still come from the full evaluation, with the reason.
	d := e.Decide(s, &Request{Action: Publish, Topic: "sensors/sensor-8/x", QoS: 1})
	if d.Allow || d.Reason != "sensor-7 may not publish sensors/sensor-8/x" {
		t.Fatalf("denial %+v", d)
	}
	// A '$' topic needs allow_dollar: never from the residual.
	if d := e.Decide(s, &Request{Action: Publish, Topic: "$sensors/sensor-7/x"}); d.Allow {
		t.Fatalf("$ topic allowed: %+v", d)
	}
	s.Release()
	if s.fast.Load() != nil {
		t.Fatal("Release kept the residuals")
	}
	before := e.Stats().Specialised
	r := Request{Action: Publish, Topic: "sensors/sensor-7/after-release", QoS: 1}
	if !e.Decide(s, &r).Allow || e.Stats().Specialised != before {
		t.Fatal("a released subject answered from its old residual")
	}
}

// FuzzResidual: for any message, a supported residual answers as the full
// evaluation does.
func FuzzResidual(f *testing.F) {
	for _, s := range []string{"site/dev1/x", "logs/a/txt", "jobs/#", "inbox/dev1/+", "$SYS/x", "a/b", "", "/", "site//"} {
		f.Add(s, byte(1), false, "", "text/plain", "r")
	}
	e := newEngine(f, tricky, Options{})
	rev := e.cur.Load()
	subjects := []*Subject{certSubject("dev1"), certSubject("+")}
	var res [][]*residual
	for _, s := range subjects {
		var row []*residual
		for _, a := range Actions[1:] {
			row = append(row, e.specialise(rev, s, a))
		}
		res = append(res, row)
	}
	f.Fuzz(func(t *testing.T, topic string, qos byte, retain bool, group, ct, rt string) {
		for i, s := range subjects {
			for j, a := range Actions[1:] {
				rs := res[i][j]
				if !rs.ok {
					continue
				}
				r := Request{Action: a, Topic: topic, QoS: qos % 3, Retain: retain, Shared: group != "", ShareGroup: group}
				if ct != "" || rt != "" {
					r.Props = &Props{ContentType: ct, ResponseTopic: rt}
				}
				want, _, err := evalBool(budget{}, rev.allow, s.input(&r, rev.use))
				if err != nil {
					want = false
				}
				if got := rs.allows(&r); got != want {
					t.Fatalf("%s %s %+v: residual %v, policy %v (err %v)", s.Client.ID, a, r, got, want, err)
				}
			}
		}
	})
}

// TestInputUse: the input's costly parts are built only for policies that
// can read them; any use of input that cannot be pinned to a field means
// all of them.
func TestInputUse(t *testing.T) {
	const head = "package moat.authz\nimport rego.v1\ndefault allow := false\n"
	for _, c := range []struct {
		body string
		want inputUse
	}{
		{`allow if input.topic == "a"`, inputUse{}},
		{`allow if input.topic_levels[0] == "a"`, inputUse{levels: true}},
		{`allow if input.properties.content_type == "a"`, inputUse{props: true}},
		{"allow if {\n some l in input.topic_levels\n l == \"x\"\n}", inputUse{levels: true}},
		{"m := {\"a\": 1}\nallow if m[input.properties.response_topic] == 1", inputUse{props: true}},
		{"allow if {\n x := input\n x.topic_levels[0] == \"a\"\n}", allInput},
		{"allow if {\n some k\n input[k] == \"a\"\n}", allInput},
		{`allow if json.marshal(input) != ""`, allInput},
		{"allow if {\n walk(input, [p, v])\n v == \"a\"\n}", allInput},
	} {
		e := newEngine(t, head+c.body, Options{})
		if got := e.cur.Load().use; got != c.want {
			t.Errorf("%s: %+v, want %+v", c.body, got, c.want)
		}
	}
	if got := plant(t, Options{}).cur.Load().use; got != (inputUse{}) {
		t.Errorf("plant: %+v, want nothing optional", got)
	}
}
