package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
)

// CheckPayload runs package moat.payload over a publish the policy
// marked with inspect. The input is the publish input plus `payload`:
// size, utf8, text (when UTF-8) and json (when it parses). Any reason in
// deny refuses the publish; so does an evaluation error. Not cached: the
// payload differs every time.
func (e *Engine) CheckPayload(s *Subject, r *Request, payload []byte) Decision {
	rev := e.cur.Load()
	if !rev.hasInspect {
		return Decision{Allow: true}
	}
	rc := *r
	rc.Topic, rc.ShareGroup = strings.Clone(r.Topic), strings.Clone(r.ShareGroup)
	b := e.budget()
	defer b.stop()
	e.misses.Add(1)
	reasons, err := denySet(b, rev.payload, payloadInput(s, &rc, payload, rev.use))
	d := Decision{Allow: err == nil && len(reasons) == 0}
	switch {
	case err != nil:
		d.Reason = "payload policy evaluation failed"
	case len(reasons) > 0:
		d.Reason = strings.Join(reasons, "; ")
	}
	return e.enforce(s, &rc, rev, d, err)
}

// payloadInput is the publish input with the payload's facts added.
func payloadInput(s *Subject, r *Request, payload []byte, use inputUse) ast.Value {
	in := s.input(r, use).(ast.Object)
	facts := [][2]*ast.Term{
		ast.Item(ast.StringTerm("size"), ast.IntNumberTerm(len(payload))),
	}
	valid := utf8.Valid(payload)
	facts = append(facts, ast.Item(ast.StringTerm("utf8"), ast.BooleanTerm(valid)))
	if valid {
		facts = append(facts, ast.Item(ast.StringTerm("text"), ast.StringTerm(string(payload))))
		if json.Valid(payload) {
			dec := json.NewDecoder(bytes.NewReader(payload))
			dec.UseNumber()
			var doc any
			if dec.Decode(&doc) == nil {
				if v, err := ast.InterfaceToValue(doc); err == nil {
					facts = append(facts, ast.Item(ast.StringTerm("json"), ast.NewTerm(v)))
				}
			}
		}
	}
	in.Insert(ast.StringTerm("payload"), ast.ObjectTerm(facts...))
	return in
}

// denySet evaluates a set-of-strings rule; undefined is the empty set.
func denySet(b budget, q rego.PreparedEvalQuery, in ast.Value) ([]string, error) {
	rs, err := b.eval(q, in)
	if err != nil {
		return nil, err
	}
	if len(rs) == 0 {
		return nil, nil
	}
	if len(rs) > 1 || len(rs[0].Expressions) != 1 {
		return nil, fmt.Errorf("deny returned %d results, want one", len(rs))
	}
	set, ok := rs[0].Expressions[0].Value.([]any)
	if !ok {
		return nil, fmt.Errorf("deny is %T, want a set of strings", rs[0].Expressions[0].Value)
	}
	out := make([]string, 0, len(set))
	for _, v := range set {
		str, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("deny holds %T, want strings", v)
		}
		out = append(out, str)
	}
	slices.Sort(out)
	return out, nil
}
