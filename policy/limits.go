package policy

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/moat-mqtt/moat/codec"
)

// Limits are the budgets a policy gives one client, from the optional
// rule `limits` in package moat.authz, evaluated once per connection with
// the connect input. A rate left out keeps the configured one; a
// negative rate turns that limit off for the client.
type Limits struct {
	PublishPerSecond   float64     `json:"publish_per_second"`
	PublishBurst       int         `json:"publish_burst"`
	BytesPerSecond     float64     `json:"bytes_per_second"`
	BytesBurst         int         `json:"bytes_burst"`
	SubscribePerSecond float64     `json:"subscribe_per_second"`
	SubscribeBurst     int         `json:"subscribe_burst"`
	TopicRates         []TopicRate `json:"topic_rates"`
}

// TopicRate is a per-client budget shared by publishes to the topics
// its filters match; it replaces limits.topic_rates for the client.
type TopicRate struct {
	Topics           []string `json:"topics"`
	PublishPerSecond float64  `json:"publish_per_second"`
	PublishBurst     int      `json:"publish_burst"`
}

// Limits evaluates the policy's `limits` rule for a connecting client.
// It returns nil when the policy has no such rule or it is undefined for
// the client. A value of the wrong shape is an error, which the caller
// treats as a refusal: a broken quota must not mean no quota.
func (e *Engine) Limits(s *Subject) (*Limits, error) {
	rev := e.cur.Load()
	if !rev.hasLimits {
		return nil, nil
	}
	b := e.budget()
	defer b.stop()
	rs, err := b.eval(rev.limits, s.input(&Request{Action: Connect}, rev.use))
	if err != nil {
		e.errs.Add(1)
		return nil, fmt.Errorf("evaluating limits: %w", err)
	}
	if len(rs) == 0 {
		return nil, nil
	}
	if len(rs) > 1 || len(rs[0].Expressions) != 1 {
		return nil, fmt.Errorf("limits returned %d results, want one", len(rs))
	}
	return parseLimits(rs[0].Expressions[0].Value)
}

func parseLimits(v any) (*Limits, error) {
	if _, ok := v.(map[string]any); !ok {
		return nil, fmt.Errorf("limits is %T, want an object", v)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var l Limits
	if err := dec.Decode(&l); err != nil {
		return nil, fmt.Errorf("limits: %w", err)
	}
	for i, tr := range l.TopicRates {
		if len(tr.Topics) == 0 || tr.PublishPerSecond <= 0 || tr.PublishBurst < 0 {
			return nil, fmt.Errorf("limits.topic_rates[%d]: needs topics and a positive publish_per_second", i)
		}
		for _, f := range tr.Topics {
			if err := codec.ValidFilter(f); err != nil {
				return nil, fmt.Errorf("limits.topic_rates[%d]: %q: %v", i, f, err)
			}
		}
	}
	return &l, nil
}
