package policy

import (
	"context"
	"strings"
	"sync/atomic"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/moat-mqtt/moat/codec"
)

// A connection that keeps asking about topics the decision cache has not
// seen (a sensor that puts a timestamp or a sequence number in its topic, a
// dashboard receiving from thousands of devices) would pay a full
// evaluation per message. For such a connection the engine partially
// evaluates the allow rule once per action, with everything known except
// the message itself. What remains for the plant policy is one or two
// checks such as "the topic matches sensors/sensor-7/#", which moat runs
// natively in well under a microsecond.
//
// Only "allow" answers come from a residual, and only when every check in
// it is one this file evaluates exactly; anything else, and every denial
// (it needs the policy's reason), goes to the full evaluation. A residual
// lives as long as a cached decision (cache TTL), so rules that read the
// clock are not frozen any longer than the cache freezes them.

// residualAfter is how many misses for one action a connection has before
// the rules are specialised for it: partial evaluation costs about twenty
// full evaluations, and most connections ask about a few topics only.
const residualAfter = 4

// unknowns are the parts of the input that change per message.
var unknowns = []*ast.Term{
	ast.MustParseTerm("input.topic"), ast.MustParseTerm("input.topic_levels"), ast.MustParseTerm("input.qos"),
	ast.MustParseTerm("input.retain"), ast.MustParseTerm("input.share_group"), ast.MustParseTerm("input.properties"),
}

// residualQuery is the query partially evaluated; it equals allowQuery
// when residualSafe holds for the policy.
const residualQuery = "data.moat.authz.allow == true"

// fastSet is a connection's residuals, one per action.
type fastSet struct {
	misses [numActions]atomic.Uint32
	res    [numActions]atomic.Pointer[residual]
}

// residual is the allow rule specialised for one connection and action:
// allowed if any body holds; a body holds if all its checks do.
type residual struct {
	rev     *revision
	expires int64 // monoNow nanoseconds
	ok      bool  // false: the residual needs something checks cannot do
	bodies  [][]check
}

// residualSafe reports whether every rule defining allow has the value true
// (or is the default false), so "allow == true" decides exactly what the
// full query does: no conflicts, no non-boolean values, no else chains.
func residualSafe(c *ast.Compiler) bool {
	want := ast.MustParseRef("data.moat.authz.allow")
	rules := c.GetRules(want)
	if len(rules) == 0 {
		return false
	}
	for _, r := range rules {
		if r.Module == nil || !r.Ref().Equal(want) {
			return false
		}
		if len(r.Head.Args) > 0 || r.Else != nil || r.Head.Value == nil {
			return false
		}
		want := ast.Boolean(!r.Default)
		if b, ok := r.Head.Value.Value.(ast.Boolean); !ok || b != want {
			return false
		}
	}
	return true
}

// residualFor returns the connection's residual for action a, building it
// once the connection has missed the cache often enough; nil if there is
// none (yet). now is the caller's monoNow.
func (e *Engine) residualFor(rev *revision, s *Subject, a Action, now int64) *residual {
	if a <= Connect || a >= numActions {
		return nil // connect is never cached, and nothing else is an action
	}
	fs := s.fast.Load()
	if fs == nil {
		fs = &fastSet{}
		if !s.fast.CompareAndSwap(nil, fs) {
			if fs = s.fast.Load(); fs == nil {
				return nil
			}
		}
	}
	if rs := fs.res[a].Load(); rs != nil && rs.rev == rev && now < rs.expires {
		return rs
	}
	if fs.misses[a].Add(1) < residualAfter {
		return nil
	}
	fs.misses[a].Store(0)
	rs := e.specialise(rev, s, a)
	rs.expires = now + int64(e.opts.CacheTTL)
	fs.res[a].Store(rs)
	return rs
}

func preparePartial(rev *revision) (rego.PreparedPartialQuery, error) {
	opts := append([]func(*rego.Rego){rego.Query(residualQuery), rego.Compiler(rev.compiler), rego.Store(rev.store), rego.StrictBuiltinErrors(true)}, Builtins()...)
	return rego.New(opts...).PrepareForPartial(context.Background())
}

// partial evaluates allow for s and a with the message unknown.
func (e *Engine) partial(q rego.PreparedPartialQuery, s *Subject, a Action) (*rego.PartialQueries, error) {
	growStack(false)
	known := ast.NewObject(
		[2]*ast.Term{kVersion, vVersion},
		[2]*ast.Term{kAction, vActions[a]},
		[2]*ast.Term{kClient, s.client()},
		[2]*ast.Term{kWill, ast.BooleanTerm(false)},
	)
	b := e.budget()
	defer b.stop()
	return q.Partial(context.Background(), rego.EvalParsedInput(known), rego.EvalParsedUnknowns(unknowns), rego.EvalExternalCancel(b.cancel))
}

// specialise partially evaluates the allow rule for s and a.
func (e *Engine) specialise(rev *revision, s *Subject, a Action) *residual {
	rs := &residual{rev: rev}
	pq, err := e.partial(rev.partial, s, a)
	if err != nil || len(pq.Support) > 0 {
		return rs
	}
	for _, q := range pq.Queries {
		b, ok := compileBody(q)
		if !ok {
			return rs
		}
		rs.bodies = append(rs.bodies, b)
	}
	rs.ok = true
	return rs
}

// Explain shows the rules a busy connection with the subject's client
// facts would run for action a (`moat policy eval --explain`): the
// residual queries in Rego, any one of which allows, and why moat would
// evaluate every request in full instead, or "" if it runs them natively.
func (e *Engine) Explain(s *Subject, a Action) (queries []string, fallback string, err error) {
	rev := e.cur.Load()
	switch {
	case a <= Connect || a >= numActions:
		return nil, "connect decisions are evaluated in full, once per connection", nil
	case !residualSafe(rev.compiler):
		return nil, "the allow rules must all be `allow if ...` (value true), with no default or a false one", nil
	}
	q, err := preparePartial(rev)
	if err != nil {
		return nil, "", err
	}
	pq, err := e.partial(q, s, a)
	if err != nil {
		return nil, "", err
	}
	for _, body := range pq.Queries {
		text := body.String()
		if len(body) == 0 {
			text = "true"
		}
		queries = append(queries, text)
		if _, ok := compileBody(body); !ok && fallback == "" {
			fallback = "moat cannot evaluate `" + text + "` itself"
		}
	}
	if len(pq.Support) > 0 {
		fallback = "the rules need helper rules OPA could not inline"
	}
	if a == Publish && rev.hasInspect && fallback == "" {
		fallback = "publishes are evaluated in full while the policy defines inspect"
	}
	return queries, fallback, nil
}

// allows reports whether the residual allows r. False means "ask the full
// evaluation", not necessarily a denial.
func (rs *residual) allows(r *Request) bool {
	for _, body := range rs.bodies {
		if holds(body, r) {
			return true
		}
	}
	return false
}

func holds(body []check, r *Request) bool {
	for i := range body {
		if !body[i].holds(r) {
			return false
		}
	}
	return true
}

// field is a per-message part of the input.
type field uint8

const (
	fConst         field = iota
	fTopic               // input.topic
	fLevel               // input.topic_levels[n]
	fQoS                 // input.qos
	fRetain              // input.retain
	fGroup               // input.share_group
	fContentType         // input.properties.content_type
	fResponseTopic       // input.properties.response_topic
)

// kind is a value's JSON type, as far as the input's fields go.
type kind uint8

const (
	kUndefined kind = iota
	kNull
	kBool
	kNum
	kStr
)

type value struct {
	kind kind
	s    string
	n    int64 // numbers; booleans as 0 or 1
}

// operand is a constant or a field of the input.
type operand struct {
	field field
	level int
	c     value
}

// get returns the operand's value for r, as input() would build it.
func (o *operand) get(r *Request) value {
	switch o.field {
	case fTopic:
		return value{kind: kStr, s: r.Topic}
	case fLevel:
		if l, ok := topicLevel(r.Topic, o.level); ok {
			return value{kind: kStr, s: l}
		}
	case fQoS:
		return value{kind: kNum, n: int64((r.QoS & 3) % 3)}
	case fRetain:
		return boolValue(r.Retain)
	case fGroup:
		if r.Shared {
			return value{kind: kStr, s: r.ShareGroup}
		}
		return value{kind: kNull}
	case fContentType:
		if r.Props != nil {
			return value{kind: kStr, s: r.Props.ContentType}
		}
	case fResponseTopic:
		if r.Props != nil {
			return value{kind: kStr, s: r.Props.ResponseTopic}
		}
	default:
		return o.c
	}
	return value{}
}

// stringField reports whether the operand is a string whenever it is
// defined, so string built-ins on it cannot fail.
func (o *operand) stringField() bool {
	switch o.field {
	case fTopic, fLevel, fContentType, fResponseTopic:
		return true
	}
	return false
}

func boolValue(b bool) value {
	if b {
		return value{kind: kBool, n: 1}
	}
	return value{kind: kBool}
}

// topicLevel is level n of topic (split at '/'), if there is one.
func topicLevel(topic string, n int) (string, bool) {
	for ; n > 0; n-- {
		i := strings.IndexByte(topic, '/')
		if i < 0 {
			return "", false
		}
		topic = topic[i+1:]
	}
	if i := strings.IndexByte(topic, '/'); i >= 0 {
		topic = topic[:i]
	}
	return topic, true
}

// op is what a check does.
type op uint8

const (
	opEqual    op = iota // a == b (also a = b: both sides are ground)
	opNotEqual           // a != b
	opTruthy             // a is defined and not false
	opFalse              // never holds
	opMatches            // codec.TopicMatches(s, a)
	opCovers             // codec.FilterCovers(s, a)
	opPrefix             // startswith(a, s)
	opSuffix             // endswith(a, s)
	opContains           // contains(a, s)
	opIn                 // a in set (internal.member_2)
)

type check struct {
	op   op
	not  bool // negated: holds when the check does not (it cannot fail, so this is exact)
	a, b operand
	s    string
	set  []value // opIn
}

func (c *check) holds(r *Request) bool { return c.eval(r) != c.not }

func (c *check) eval(r *Request) bool {
	a := c.a.get(r)
	if a.kind == kUndefined {
		return false // an undefined operand makes the expression undefined
	}
	switch c.op {
	case opEqual, opNotEqual:
		b := c.b.get(r)
		if b.kind == kUndefined {
			return false
		}
		return (a == b) == (c.op == opEqual)
	case opTruthy:
		return !(a.kind == kBool && a.n == 0)
	case opMatches:
		return codec.TopicMatches(c.s, a.s)
	case opCovers:
		return codec.FilterCovers(c.s, a.s)
	case opPrefix:
		return strings.HasPrefix(a.s, c.s)
	case opSuffix:
		return strings.HasSuffix(a.s, c.s)
	case opContains:
		return strings.Contains(a.s, c.s)
	case opIn:
		for _, v := range c.set {
			if a == v {
				return true
			}
		}
	}
	return false
}

// compileBody turns one residual query into checks; ok is false if any
// expression is not one checks evaluate exactly.
func compileBody(body ast.Body) ([]check, bool) {
	out := make([]check, 0, len(body))
	for _, ex := range body {
		c, ok := compileExpr(ex)
		if !ok {
			return nil, false
		}
		out = append(out, c)
	}
	return out, true
}

// compileExpr compiles one expression. A negated one is the check
// inverted: checks never fail, so "not" of one is exactly its opposite.
func compileExpr(ex *ast.Expr) (check, bool) {
	if len(ex.With) > 0 {
		return check{}, false
	}
	c, ok := compilePositive(ex)
	c.not = ex.Negated
	return c, ok
}

func compilePositive(ex *ast.Expr) (check, bool) {
	switch t := ex.Terms.(type) {
	case *ast.Term:
		a, ok := compileOperand(t)
		if !ok {
			return check{}, false
		}
		return check{op: opTruthy, a: a}, true
	case []*ast.Term:
		if len(t) == 0 {
			return check{}, false
		}
		args := t[1:]
		switch name := t[0].String(); name {
		case "eq", "equal", "neq":
			if len(args) != 2 {
				return check{}, false
			}
			a, ok1 := compileOperand(args[0])
			b, ok2 := compileOperand(args[1])
			if !ok1 || !ok2 {
				return check{}, false
			}
			o := opEqual
			if name == "neq" {
				o = opNotEqual
			}
			return check{op: o, a: a, b: b}, true
		case "moat.topic_matches", "moat.filter_covers", "startswith", "endswith", "contains":
			return compileStringCall(name, args)
		case "internal.member_2": // x in collection
			return compileIn(args)
		case "moat.topic_matches_with", "moat.filter_covers_with":
			if len(args) != 3 {
				return check{}, false
			}
			a, ok := compileOperand(args[2])
			if !ok || !a.stringField() {
				return check{}, false
			}
			filter, fine, _, err := expandArgs(name, args[0], args[1], ast.StringTerm(""))
			if err != nil {
				return check{}, false // the full evaluation reports the error
			}
			if !fine {
				return check{op: opFalse, a: a}, true
			}
			o := opMatches
			if name == "moat.filter_covers_with" {
				o = opCovers
			}
			return check{op: o, a: a, s: filter}, true
		}
	}
	return check{}, false
}

// compileStringCall handles f(constant, field) for the moat matchers and
// f(field, constant) for the string built-ins.
func compileStringCall(name string, args []*ast.Term) (check, bool) {
	if len(args) != 2 {
		return check{}, false
	}
	ci, fi := 1, 0
	o := map[string]op{"startswith": opPrefix, "endswith": opSuffix, "contains": opContains, "moat.topic_matches": opMatches, "moat.filter_covers": opCovers}[name]
	if o == opMatches || o == opCovers {
		ci, fi = 0, 1
	}
	s, ok := args[ci].Value.(ast.String)
	if !ok {
		return check{}, false
	}
	a, ok := compileOperand(args[fi])
	if !ok || !a.stringField() {
		return check{}, false
	}
	if (o == opMatches || o == opCovers) && codec.ValidFilter(string(s)) != nil {
		return check{}, false
	}
	return check{op: o, a: a, s: string(s)}, true
}

// compileIn handles "field in {constants}" over a set or an array of
// scalars.
func compileIn(args []*ast.Term) (check, bool) {
	if len(args) != 2 {
		return check{}, false
	}
	a, ok := compileOperand(args[0])
	if !ok || a.field == fConst {
		return check{}, false
	}
	var elems []*ast.Term
	switch coll := args[1].Value.(type) {
	case ast.Set:
		elems = coll.Slice()
	case *ast.Array:
		for i := range coll.Len() {
			elems = append(elems, coll.Elem(i))
		}
	default:
		return check{}, false
	}
	c := check{op: opIn, a: a}
	for _, el := range elems {
		o, ok := compileOperand(el)
		if !ok || o.field != fConst {
			return check{}, false
		}
		c.set = append(c.set, o.c)
	}
	return c, true
}

// compileOperand accepts scalar constants and the per-message input fields.
func compileOperand(t *ast.Term) (operand, bool) {
	switch v := t.Value.(type) {
	case ast.String:
		return operand{c: value{kind: kStr, s: string(v)}}, true
	case ast.Boolean:
		return operand{c: boolValue(bool(v))}, true
	case ast.Null:
		return operand{c: value{kind: kNull}}, true
	case ast.Number:
		n, ok := v.Int() // the input holds integers only; leave the rest to OPA
		if !ok {
			return operand{}, false
		}
		return operand{c: value{kind: kNum, n: int64(n)}}, true
	case ast.Ref:
		return compileRef(v)
	}
	return operand{}, false
}

func compileRef(r ast.Ref) (operand, bool) {
	if len(r) < 2 || !r[0].Equal(ast.InputRootDocument) {
		return operand{}, false
	}
	key, ok := r[1].Value.(ast.String)
	if !ok {
		return operand{}, false
	}
	if len(r) == 2 {
		f := map[ast.String]field{"topic": fTopic, "qos": fQoS, "retain": fRetain, "share_group": fGroup}[key]
		return operand{field: f}, f != fConst
	}
	if len(r) != 3 {
		return operand{}, false
	}
	switch key {
	case "topic_levels":
		n, ok := r[2].Value.(ast.Number)
		if !ok {
			return operand{}, false
		}
		i, ok := n.Int()
		if !ok || i < 0 {
			return operand{}, false
		}
		return operand{field: fLevel, level: i}, true
	case "properties":
		switch r[2].Value {
		case ast.String("content_type"):
			return operand{field: fContentType}, true
		case ast.String("response_topic"):
			return operand{field: fResponseTopic}, true
		}
	}
	return operand{}, false
}
