package policy

import (
	"strings"
	"testing"
)

func TestExpand(t *testing.T) {
	vars := map[string]string{"id": "sensor-7", "plus": "+", "hash": "#", "slash": "a/b", "empty": "", "brace": "{id}"}
	cases := []struct {
		pattern, want string
		ok, err       bool
	}{
		{"sensors/{id}/#", "sensors/sensor-7/#", true, false},
		{"x-{id}-y", "x-sensor-7-y", true, false},
		{"plain/topic", "plain/topic", true, false},
		{"sensors/{plus}/#", "", false, false}, // a client id of '+' must not widen
		{"sensors/{hash}", "", false, false},
		{"sensors/{slash}/#", "", false, false},
		{"sensors/{empty}/#", "", false, false},
		{"sensors/{brace}", "sensors/{id}", true, false}, // values are not expanded again
		{"sensors/{nope}", "", false, true},
		{"sensors/{id", "", false, true},
	}
	for _, c := range cases {
		got, ok, err := Expand(c.pattern, vars)
		if (err != nil) != c.err || ok != c.ok || (ok && got != c.want) {
			t.Errorf("Expand(%q) = %q, %v, %v; want %q, %v, err %v", c.pattern, got, ok, err, c.want, c.ok, c.err)
		}
	}
}

// FuzzExpand checks that a value can never add a wildcard or a level.
func FuzzExpand(f *testing.F) {
	f.Add("sensors/{id}/#", "sensor-7")
	f.Add("a/{id}-{id}", "+")
	f.Add("{id}", "a/b")
	f.Add("x/{id", "#")
	f.Fuzz(func(t *testing.T, pattern, value string) {
		out, ok, err := Expand(pattern, map[string]string{"id": value})
		if err != nil || !ok {
			return
		}
		for _, c := range []string{"+", "#", "/"} {
			if strings.Count(out, c) != strings.Count(pattern, c) {
				t.Fatalf("Expand(%q, id=%q) = %q: %q count changed", pattern, value, out, c)
			}
		}
	})
}
