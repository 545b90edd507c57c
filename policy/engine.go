// Package policy evaluates OPA/Rego topic policies: it loads and compiles
// the rules, builds the input document, caches decisions and reloads
// without ever failing open.
package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// Package and rules of the policy contract.
const (
	Package = "moat.authz"
	// PayloadPackage holds the payload rules: deny, a set of reasons.
	PayloadPackage = "moat.payload"
	allowQuery     = "data.moat.authz.allow"
	reasonQuery    = "data.moat.authz.reason"
	dollarQuery    = "data.moat.authz.allow_dollar"
	limitsQuery    = "data.moat.authz.limits"
	inspectQuery   = "data.moat.authz.inspect"
	payloadQuery   = "data.moat.payload.deny"
	defaultTTL     = time.Minute
	defaultSize    = 100_000
	defaultEvalT   = time.Second
)

// Mode says what a denial does.
type Mode uint8

const (
	Enforce Mode = iota // denials are enforced
	Shadow              // denials are logged and counted, traffic flows
)

func (m Mode) String() string {
	if m == Shadow {
		return "shadow"
	}
	return "enforce"
}

// Options configure an Engine. Zero values take the documented defaults.
type Options struct {
	Paths       []string // .rego modules and .json/.yaml data files, or directories of them
	Mode        Mode
	CacheSize   int           // decisions kept; negative disables the cache
	CacheTTL    time.Duration // how long a decision is reused
	EvalTimeout time.Duration // an evaluation that takes longer is a denial
	Log         *slog.Logger  // errors and reloads; nil discards
	Decisions   *DecisionLog  // one JSON line per denial (and allow, if asked); nil for none
	// OnEval, if set, is told how long each evaluation took (cache
	// misses, connect and will decisions), for a latency histogram.
	OnEval func(Action, time.Duration)
}

// Decision is the outcome of one evaluation.
type Decision struct {
	Allow  bool   // what to enforce (true for a would-be denial in shadow mode)
	Denied bool   // the policy said no (also in shadow mode)
	Reason string // the policy's reason, or why evaluation failed
	Cached bool
	// Inspect: a permitted publish whose payload must pass the rules in
	// package moat.payload (CheckPayload) before it goes on.
	Inspect bool
}

// Engine holds the policy in force. It is safe for concurrent use; a
// reload swaps the compiled policy and its cache in one atomic step.
type Engine struct {
	opts Options
	log  *slog.Logger
	cur  atomic.Pointer[revision]
	mu   sync.Mutex // serialises reloads

	hits, misses, denials, shadowDenials, errs atomic.Uint64
	specialised                                atomic.Uint64
	reloads, reloadFailures                    atomic.Uint64
	decisions                                  [numActions][numResults]atomic.Uint64
}

// Result is a decision's outcome, for counting.
type Result uint8

const (
	ResultAllow Result = iota
	ResultDeny
	ResultShadowDeny // denied by the policy, let through by shadow mode
	numResults
)

func (r Result) String() string {
	return [...]string{"allow", "deny", "shadow_deny"}[r]
}

// Decisions is how many decisions on action ended in result.
func (e *Engine) Decisions(a Action, r Result) uint64 {
	if a >= numActions || r >= numResults {
		return 0
	}
	return e.decisions[a][r].Load()
}

// revision is one compiled policy with its own cache.
type revision struct {
	id            string
	allow, reason rego.PreparedEvalQuery
	dollar        rego.PreparedEvalQuery
	hasReason     bool
	hasDollar     bool
	limits        rego.PreparedEvalQuery
	hasLimits     bool
	inspect       rego.PreparedEvalQuery // publish: does the payload go to moat.payload?
	payload       rego.PreparedEvalQuery
	hasInspect    bool
	use           inputUse                  // the parts of the input the policy reads
	partial       rego.PreparedPartialQuery // allow, for residuals
	residuals     bool                      // allow can be specialised (residualSafe)
	compiler      *ast.Compiler
	store         storage.Store
	cache         *lru.Cache[cacheKey, cached]
	stamp         string // file names, sizes and times, for the watcher
}

// cacheKey is everything a decision may depend on except the payload.
type cacheKey struct {
	subject uint64 // Subject.serial: the client document differs per connection anyway (port)
	topic   string
	group   string
	props   string
	action  Action
	qos     byte
	flags   uint8
}

const (
	flagRetain = 1 << iota
	flagWill
	flagShared
)

type cached struct {
	allow   bool
	inspect bool
	reason  string
	expires int64 // monoNow nanoseconds
}

// New loads and compiles the policy. It fails if the policy cannot be
// used; there is no engine without a good policy.
func New(opts Options) (*Engine, error) {
	if len(opts.Paths) == 0 {
		return nil, errors.New("policy: no paths given")
	}
	if opts.CacheTTL == 0 {
		opts.CacheTTL = defaultTTL
	}
	if opts.CacheSize == 0 {
		opts.CacheSize = defaultSize
	}
	if opts.EvalTimeout == 0 {
		opts.EvalTimeout = defaultEvalT
	}
	e := &Engine{opts: opts, log: opts.Log}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	rev, err := e.compile()
	if err != nil {
		return nil, err
	}
	e.cur.Store(rev)
	return e, nil
}

// Revision identifies the policy in force (a digest of its sources).
func (e *Engine) Revision() string { return e.cur.Load().id }

// Mode returns the enforcement mode.
func (e *Engine) Mode() Mode { return e.opts.Mode }

// Reload compiles the policy files again. A policy that does not load,
// compile or pass the smoke evaluation is refused: the one in force stays
// and the error says why, with file and line.
func (e *Engine) Reload() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.cur.Load()
	rev, err := e.compile()
	if err != nil {
		e.reloadFailures.Add(1)
		e.log.Error("policy reload refused, the previous policy stays in force", "revision", old.id, "err", err)
		return err
	}
	e.reloads.Add(1)
	e.cur.Store(rev)
	e.log.Info("policy reloaded", "revision", rev.id, "previous", old.id)
	return nil
}

func (e *Engine) compile() (*revision, error) {
	stamp, err := stampOf(e.opts.Paths)
	if err != nil {
		return nil, err
	}
	res, err := loader.NewFileLoader().Filtered(e.opts.Paths, skipTests)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if len(res.Modules) == 0 {
		return nil, fmt.Errorf("policy: no .rego files in %s", strings.Join(e.opts.Paths, ", "))
	}
	modules := res.ParsedModules()
	if !definesRule(modules, Package, "allow") {
		return nil, fmt.Errorf("policy: no module defines package %s with rule allow; every decision would be a denial", Package)
	}
	compiler := ast.NewCompiler().WithCapabilities(capabilities()).WithEnablePrintStatements(false)
	if compiler.Compile(modules); compiler.Failed() {
		return nil, fmt.Errorf("policy: %w", compiler.Errors)
	}
	store := inmem.NewFromObject(res.Documents)
	prep := func(q string) (rego.PreparedEvalQuery, error) {
		opts := append([]func(*rego.Rego){rego.Query(q), rego.Compiler(compiler), rego.Store(store), rego.StrictBuiltinErrors(true)}, Builtins()...)
		return rego.New(opts...).PrepareForEval(context.Background())
	}
	rev := &revision{id: digest(res), stamp: stamp, use: inputUseOf(compiler), compiler: compiler, store: store}
	if rev.allow, err = prep(allowQuery); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if rev.hasReason = definesRule(modules, Package, "reason"); rev.hasReason {
		if rev.reason, err = prep(reasonQuery); err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
	}
	if rev.hasDollar = definesRule(modules, Package, "allow_dollar"); rev.hasDollar {
		if rev.dollar, err = prep(dollarQuery); err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
	}
	if rev.hasLimits = definesRule(modules, Package, "limits"); rev.hasLimits {
		if rev.limits, err = prep(limitsQuery); err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
	}
	hasDeny := definesRule(modules, PayloadPackage, "deny")
	rev.hasInspect = definesRule(modules, Package, "inspect")
	switch {
	case rev.hasInspect && !hasDeny:
		return nil, fmt.Errorf("policy: rule inspect marks publishes for payload rules, but no module defines package %s with rule deny", PayloadPackage)
	case hasDeny && !rev.hasInspect:
		return nil, fmt.Errorf("policy: package %s would never run: define rule inspect in package %s to mark the publishes it checks", PayloadPackage, Package)
	case rev.hasInspect:
		if rev.inspect, err = prep(inspectQuery); err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		if rev.payload, err = prep(payloadQuery); err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
	}
	if err := smoke(rev); err != nil {
		return nil, err
	}
	if e.opts.CacheSize > 0 {
		rev.cache, _ = lru.New[cacheKey, cached](e.opts.CacheSize)
		// With the cache off every decision is evaluated in full, as
		// asked; residuals are a cache too.
		if rev.residuals = residualSafe(compiler); rev.residuals {
			if rev.partial, err = preparePartial(rev); err != nil {
				rev.residuals = false
			}
		}
	}
	return rev, nil
}

// skipTests leaves *_test.rego out of the policy in force; `moat policy
// test` loads them.
func skipTests(_ string, info fs.FileInfo, _ int) bool {
	return !info.IsDir() && strings.HasSuffix(info.Name(), "_test.rego")
}

func definesRule(modules map[string]*ast.Module, pkg, name string) bool {
	for _, m := range modules {
		if m.Package.Path.String() != "data."+pkg {
			continue
		}
		for _, r := range m.Rules {
			if r.Head.Name.String() == name || (len(r.Head.Reference) == 1 && r.Head.Reference[0].Value.String() == name) {
				return true
			}
		}
	}
	return false
}

// smoke evaluates every action once against a plain input: a policy that
// errors or answers with a non-boolean there is refused before it can deny
// (or worse) live traffic.
func smoke(rev *revision) error {
	s := NewSubject(0, Client{ID: "moat-smoke", ProtocolVersion: 5, Address: "127.0.0.1", Port: 1, Listener: "smoke", Transport: "tls", AuthMethod: "anonymous"})
	for a := Connect; a <= Receive; a++ {
		r := &Request{Action: a, Topic: "moat/smoke", QoS: 1}
		if _, _, err := evalBool(budget{}, rev.allow, s.input(r, rev.use)); err != nil {
			return fmt.Errorf("policy: smoke evaluation of %q: %w", a, err)
		}
	}
	if rev.hasInspect {
		r := &Request{Action: Publish, Topic: "moat/smoke", QoS: 1}
		if _, _, err := evalBool(budget{}, rev.inspect, s.input(r, rev.use)); err != nil {
			return fmt.Errorf("policy: smoke evaluation of inspect: %w", err)
		}
		if _, err := denySet(budget{}, rev.payload, payloadInput(s, r, []byte(`{"smoke":true}`), rev.use)); err != nil {
			return fmt.Errorf("policy: smoke evaluation of %s: %w", PayloadPackage, err)
		}
	}
	if rev.hasLimits {
		if rs, err := (budget{}).eval(rev.limits, s.input(&Request{Action: Connect}, rev.use)); err != nil {
			return fmt.Errorf("policy: smoke evaluation of limits: %w", err)
		} else if len(rs) == 1 && len(rs[0].Expressions) == 1 {
			if _, err := parseLimits(rs[0].Expressions[0].Value); err != nil {
				return fmt.Errorf("policy: smoke evaluation of %w", err)
			}
		}
	}
	return nil
}

func digest(res *loader.Result) string {
	h := sha256.New()
	names := make([]string, 0, len(res.Modules))
	for n := range res.Modules {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(h, "%s\x00%d\x00", n, len(res.Modules[n].Raw))
		h.Write(res.Modules[n].Raw)
	}
	data, _ := json.Marshal(res.Documents)
	h.Write(data)
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// Decide evaluates one request for a subject. It never fails open: an
// undefined, non-boolean or failed evaluation is a denial.
func (e *Engine) Decide(s *Subject, r *Request) Decision {
	rev := e.cur.Load()
	key := cacheKey{subject: s.serial, topic: r.Topic, group: r.ShareGroup, action: r.Action, qos: r.QoS}
	if r.Retain {
		key.flags |= flagRetain
	}
	if r.Will {
		key.flags |= flagWill
	}
	if r.Shared {
		key.flags |= flagShared
	}
	if r.Props != nil {
		key.props = propsKey(r.Props)
	}
	// A connection asks about connect and its will once: caching those
	// would only push useful entries out.
	cache := rev.cache
	if r.Action == Connect || r.Will {
		cache = nil
	}
	if cache != nil {
		if c, ok := cache.Get(key); ok && r.now() < c.expires {
			e.hits.Add(1)
			return e.enforce(s, r, rev, Decision{Allow: c.allow, Inspect: c.inspect, Reason: c.reason, Cached: true}, nil)
		}
	}
	e.misses.Add(1)
	if cache != nil && rev.residuals {
		start := monoNow()
		if rs := e.residualFor(rev, s, r.Action, start); rs != nil && rs.ok && rs.allows(r) &&
			(r.Action != Publish || (!rev.hasInspect && !strings.HasPrefix(r.Topic, "$"))) {
			e.specialised.Add(1)
			if e.opts.OnEval != nil {
				e.opts.OnEval(r.Action, time.Duration(monoNow()-start))
			}
			return e.enforce(s, r, rev, Decision{Allow: true}, nil)
		}
	}
	// The request's strings may alias a packet buffer: copy before they
	// reach the input document or the cache.
	rc := *r
	rc.Topic, rc.ShareGroup = strings.Clone(r.Topic), strings.Clone(r.ShareGroup)
	key.topic, key.group = rc.Topic, rc.ShareGroup
	start := monoNow()
	d, err := e.evaluate(rev, s.input(&rc, rev.use), rc.Action, rc.Topic)
	if e.opts.OnEval != nil {
		e.opts.OnEval(rc.Action, time.Duration(monoNow()-start))
	}
	if err == nil && cache != nil {
		cache.Add(key, cached{allow: d.Allow, inspect: d.Inspect, reason: d.Reason, expires: monoNow() + int64(e.opts.CacheTTL)})
	}
	return e.enforce(s, &rc, rev, d, err)
}

// enforce applies the mode, counts and logs.
func (e *Engine) enforce(s *Subject, r *Request, rev *revision, d Decision, err error) Decision {
	if a := r.Action; a < numActions {
		switch {
		case d.Allow:
			e.decisions[a][ResultAllow].Add(1)
		case e.opts.Mode == Shadow:
			e.decisions[a][ResultShadowDeny].Add(1)
		default:
			e.decisions[a][ResultDeny].Add(1)
		}
	}
	if d.Allow {
		if e.opts.Decisions != nil && e.opts.Decisions.allows {
			e.opts.Decisions.write(s, r, rev.id, "allow", d.Reason, nil)
		}
		return d
	}
	d.Denied = true
	if err != nil {
		e.errs.Add(1)
		e.log.Error("policy evaluation failed, denied", "conn", s.ConnID, "action", r.Action.String(), "topic", r.Topic, "err", err)
	}
	verdict := "deny"
	if e.opts.Mode == Shadow {
		e.shadowDenials.Add(1)
		d.Allow = true
		verdict = "shadow_deny"
	} else {
		e.denials.Add(1)
	}
	if e.opts.Decisions != nil {
		e.opts.Decisions.write(s, r, rev.id, verdict, d.Reason, err)
	}
	return d
}

// EvalInput decides a whole input document given as JSON-shaped data, as
// `moat policy eval --input` does; no cache, no log.
func (e *Engine) EvalInput(doc any) (Decision, error) {
	v, err := ast.InterfaceToValue(doc)
	if err != nil {
		return Decision{Denied: true}, err
	}
	var action Action
	var topic string
	if m, ok := doc.(map[string]any); ok {
		a, _ := m["action"].(string)
		action, _ = ParseAction(a)
		topic, _ = m["topic"].(string)
	}
	d, err := e.evaluate(e.cur.Load(), v, action, topic)
	d.Denied = !d.Allow
	return d, err
}

func (e *Engine) evaluate(rev *revision, in ast.Value, action Action, topic string) (Decision, error) {
	growStack(false)
	b := e.budget()
	defer b.stop()
	allow, defined, err := evalBool(b, rev.allow, in)
	if err != nil {
		return Decision{Reason: "policy evaluation failed"}, err
	}
	if !defined {
		allow = false
	}
	if allow && action == Publish && strings.HasPrefix(topic, "$") {
		// Publishing into a '$' space (broker statistics, vendor control
		// topics) needs a rule that names it: allow_dollar.
		ok := false
		if rev.hasDollar {
			if ok, _, err = evalBool(b, rev.dollar, in); err != nil {
				return Decision{Reason: "policy evaluation failed"}, err
			}
		}
		if !ok {
			return Decision{Reason: "publishing to a $ topic needs allow_dollar"}, nil
		}
	}
	d := Decision{Allow: allow}
	if allow && action == Publish && rev.hasInspect {
		// Not knowing whether the payload must be checked is a denial.
		if d.Inspect, _, err = evalBool(b, rev.inspect, in); err != nil {
			return Decision{Reason: "policy evaluation failed"}, err
		}
	}
	if !allow {
		d.Reason = "no rule allows it"
		if rev.hasReason {
			if rs, err := b.eval(rev.reason, in); err == nil && len(rs) == 1 && len(rs[0].Expressions) == 1 {
				if s, ok := rs[0].Expressions[0].Value.(string); ok {
					d.Reason = s
				}
			}
		}
	}
	return d, nil
}

// budget bounds the queries of one decision by the evaluation timeout.
// Given a context with a deadline, OPA starts a goroutine per query to
// watch it; a timer that sets OPA's cancel flag bounds them all for a
// fraction of that cost. The zero budget has no bound (load-time checks).
type budget struct {
	cancel topdown.Cancel
	timer  *time.Timer
}

func (e *Engine) budget() budget {
	c := topdown.NewCancel()
	return budget{cancel: c, timer: time.AfterFunc(e.opts.EvalTimeout, c.Cancel)}
}

func (b budget) stop() {
	if b.timer != nil {
		b.timer.Stop()
	}
}

func (b budget) eval(q rego.PreparedEvalQuery, in ast.Value) (rego.ResultSet, error) {
	if b.cancel == nil {
		return q.Eval(context.Background(), rego.EvalParsedInput(in))
	}
	return q.Eval(context.Background(), rego.EvalParsedInput(in), rego.EvalExternalCancel(b.cancel))
}

// evalBool runs a boolean query. More than one result, or a value that is
// not a boolean, is an error; no result is "undefined".
func evalBool(bg budget, q rego.PreparedEvalQuery, in ast.Value) (value, defined bool, err error) {
	rs, err := bg.eval(q, in)
	if err != nil {
		return false, false, err
	}
	switch {
	case len(rs) == 0:
		return false, false, nil
	case len(rs) > 1 || len(rs[0].Expressions) != 1:
		return false, true, fmt.Errorf("query returned %d results, want one", len(rs))
	}
	b, ok := rs[0].Expressions[0].Value.(bool)
	if !ok {
		return false, true, fmt.Errorf("allow is %T, not a boolean", rs[0].Expressions[0].Value)
	}
	return b, true, nil
}

// Stats are the engine's counters since start.
type Stats struct {
	Revision      string
	CacheHits     uint64
	CacheMisses   uint64 // evaluations: misses, and connect/will decisions, which are not cached
	Specialised   uint64 // misses allowed by a connection's specialised rules (residual.go)
	Denials       uint64
	ShadowDenials uint64
	Errors        uint64
	Reloads       uint64 // successful reloads
	ReloadErrors  uint64 // reloads refused (the old policy stayed)
}

// HitRatio is the share of decisions answered from the cache.
func (s Stats) HitRatio() float64 {
	if n := s.CacheHits + s.CacheMisses; n > 0 {
		return float64(s.CacheHits) / float64(n)
	}
	return 0
}

// Stats returns the counters.
func (e *Engine) Stats() Stats {
	return Stats{Revision: e.Revision(), CacheHits: e.hits.Load(), CacheMisses: e.misses.Load(), Specialised: e.specialised.Load(),
		Denials: e.denials.Load(), ShadowDenials: e.shadowDenials.Load(), Errors: e.errs.Load(),
		Reloads: e.reloads.Load(), ReloadErrors: e.reloadFailures.Load()}
}

// Watch reloads the policy when its files change, polling every interval
// until ctx ends. Polling (names, sizes, modification times) also sees
// files replaced by rename or behind a swapped symlink, as config-map
// mounts do, which event-based watchers miss.
func (e *Engine) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		stamp, err := stampOf(e.opts.Paths)
		if err != nil || stamp == e.cur.Load().stamp {
			continue
		}
		if e.Reload() != nil {
			// Do not retry the same broken files every tick: remember
			// them by installing their stamp on the good revision copy.
			e.mu.Lock()
			cur := *e.cur.Load()
			cur.stamp = stamp
			e.cur.Store(&cur)
			e.mu.Unlock()
		}
	}
}

// stampOf lists the policy files with size and modification time.
func stampOf(paths []string) (string, error) {
	var b strings.Builder
	for _, p := range paths {
		err := filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !policyFile(path) {
				return nil
			}
			info, err := os.Stat(path) // follows symlinks
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, "%s\x00%d\x00%d\n", path, info.Size(), info.ModTime().UnixNano())
			return nil
		})
		if err != nil {
			return "", fmt.Errorf("policy: %w", err)
		}
	}
	return b.String(), nil
}

func policyFile(path string) bool {
	switch filepath.Ext(path) {
	case ".rego", ".json", ".yaml", ".yml":
		return true
	}
	return false
}

// View returns a string sharing b's bytes, for cache lookups on the hot
// path. Decide copies request strings before keeping them or handing them
// to the policy, so a view never outlives the buffer it points into.
func View(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// epoch anchors monoNow.
var epoch = time.Now()

// monoNow is nanoseconds on the monotonic clock, for expiry checks on the
// hot path: one clock read where time.Now takes two.
func monoNow() int64 { return int64(time.Since(epoch)) }

// now is r.At on monoNow's scale, or the clock when r.At is zero.
func (r *Request) now() int64 {
	if r.At.IsZero() {
		return monoNow()
	}
	return int64(r.At.Sub(epoch))
}

// growStack makes the calling goroutine's stack big enough for an
// evaluation in one step. OPA's evaluator recurses deeply; on a new
// goroutine, whose stack starts at a few KiB, the stack would double again
// and again during the evaluation, each time copying everything on it,
// which costs as much as the evaluation itself (BenchmarkDecideFreshGoroutine).
// Growing once, while the stack is still shallow, copies almost nothing.
// The frame is reserved at entry but never written (grow is false), so a
// goroutine whose stack is already big pays nothing.
//
//go:noinline
func growStack(grow bool) {
	if grow {
		var buf [60 << 10]byte
		useStack(buf[:])
	}
}

//go:noinline
func useStack([]byte) {}
