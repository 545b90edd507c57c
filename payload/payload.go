// Package payload checks what a PUBLISH carries against per-topic rules:
// size, UTF-8, JSON, a JSON Schema, retain and QoS. Topics no rule names
// pay only the topic match: no parsing, no evaluation.
package payload

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/moat-mqtt/moat/codec"
)

// Rule is what publishes to its topics must satisfy.
type Rule struct {
	Topics  []string // topic filters the rule applies to
	MaxSize int      // payload bytes; 0: no limit
	UTF8    bool     // the payload must be valid UTF-8
	JSON    bool     // the payload must parse as JSON
	Schema  *jsonschema.Schema
	// Retain: "" (allowed), "forbid" (refuse retained publishes) or
	// "strip" (forward them with the retain flag cleared).
	Retain string
	MaxQoS int // refuse publishes above; -1 or 2: any
	// CapQoS forwards a publish above MaxQoS at MaxQoS rather than
	// refusing it.
	CapQoS bool
}

// Checker holds the rules in order; the first whose filter matches a
// topic applies.
type Checker struct {
	rules []*Rule
}

// New validates the rules.
func New(rules []*Rule) (*Checker, error) {
	for i, r := range rules {
		if len(r.Topics) == 0 {
			return nil, fmt.Errorf("payload rule %d: no topics", i)
		}
		for _, t := range r.Topics {
			if err := codec.ValidFilter(t); err != nil {
				return nil, fmt.Errorf("payload rule %d: %v", i, err)
			}
		}
		switch r.Retain {
		case "", "forbid", "strip":
		default:
			return nil, fmt.Errorf("payload rule %d: retain %q: use forbid or strip", i, r.Retain)
		}
	}
	return &Checker{rules: rules}, nil
}

// CompileSchema reads a JSON Schema file.
func CompileSchema(path string) (*jsonschema.Schema, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(path, doc); err != nil {
		return nil, err
	}
	return c.Compile(path)
}

// Rule returns the rule for a topic, or nil.
func (c *Checker) Rule(topic string) *Rule {
	if c == nil {
		return nil
	}
	for _, r := range c.rules {
		for _, f := range r.Topics {
			if codec.TopicMatches(f, topic) {
				return r
			}
		}
	}
	return nil
}

// Verdict is a rule's answer for one publish.
type Verdict struct {
	Refuse      error // why the publish is refused; nil if not
	StripRetain bool
	// Capped: forward at QoS rather than the publish's own, higher one.
	Capped bool
	QoS    byte
}

// ErrPayload wraps every refusal.
var ErrPayload = errors.New("payload refused")

// Check applies the rule to a publish.
func (r *Rule) Check(p []byte, qos byte, retain bool) Verdict {
	fail := func(format string, a ...any) Verdict {
		return Verdict{Refuse: fmt.Errorf("%w: "+format, append([]any{ErrPayload}, a...)...)}
	}
	var v Verdict
	if r.MaxQoS >= 0 && r.MaxQoS < 2 && int(qos) > r.MaxQoS {
		if !r.CapQoS {
			return fail("QoS %d above %d", qos, r.MaxQoS)
		}
		v.Capped, v.QoS = true, byte(r.MaxQoS)
	}
	if retain && r.Retain == "forbid" {
		return fail("retained messages are not allowed on this topic")
	}
	if r.MaxSize > 0 && len(p) > r.MaxSize {
		return fail("%d bytes, the limit is %d", len(p), r.MaxSize)
	}
	if (r.UTF8 || r.JSON || r.Schema != nil) && !utf8.Valid(p) {
		return fail("not valid UTF-8")
	}
	if r.JSON || r.Schema != nil {
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(p))
		if err != nil {
			return fail("not JSON")
		}
		if r.Schema != nil {
			if err := r.Schema.Validate(doc); err != nil {
				return fail("does not match the schema: %v", firstLine(err.Error()))
			}
		}
	}
	v.StripRetain = retain && r.Retain == "strip"
	return v
}

func firstLine(s string) string {
	if i := bytes.IndexByte([]byte(s), '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
