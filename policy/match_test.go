package policy

import (
	"strings"
	"testing"

	"github.com/moat-mqtt/moat/codec"
)

func TestTopicMatches(t *testing.T) {
	cases := []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+", "a", false},
		{"a/#", "a", true}, // [MQTT-4.7.1-1] '#' includes the parent level
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"#", "a/b", true},
		{"#", "/a", true},
		{"+/+", "/a", true},
		{"+", "/a", false},
		{"a//b", "a//b", true},
		{"a/+/b", "a//b", true},
		// [MQTT-4.7.2-1] first-level wildcards never match '$' topics.
		{"#", "$SYS/broker/uptime", false},
		{"+/broker/uptime", "$SYS/broker/uptime", false},
		{"+", "$share", false},
		{"$SYS/#", "$SYS/broker/uptime", true},
		{"$SYS/+/uptime", "$SYS/broker/uptime", true},
		{"a/#", "a/$x", true}, // '$' only matters at the first level
		// A topic with wildcards, or empty, matches nothing.
		{"#", "a/+", false},
		{"#", "a/#", false},
		{"#", "", false},
		{"a/b", "a/b/", false},
		{"a/b/", "a/b/", true},
		{"a/b/+", "a/b/", true},
	}
	for _, c := range cases {
		if got := TopicMatches(c.filter, c.topic); got != c.want {
			t.Errorf("TopicMatches(%q, %q) = %v, want %v", c.filter, c.topic, got, c.want)
		}
	}
}

func TestFilterCovers(t *testing.T) {
	cases := []struct {
		allowed, requested string
		want               bool
	}{
		{"data/#", "data/+/temp", true},
		{"data/#", "data/#", true},
		{"data/#", "data", true},
		{"data/#", "data/x/#", true},
		{"data/+", "data/#", false},
		{"data/+", "data/+", true},
		{"data/+", "data/x", true},
		{"data/+", "data", false},
		{"data/+/temp", "data/+", false},
		{"data/x", "data/+", false},
		{"data", "data/#", false},
		{"#", "#", true},
		{"#", "a/b", true},
		{"+/#", "#", false},
		{"+/#", "+/x", true},
		// '$' spaces are never covered by first-level wildcards.
		{"#", "$SYS/#", false},
		{"+/#", "$SYS/x", false},
		{"$SYS/#", "$SYS/broker/+", true},
		{"", "a", false},
		{"a", "", false},
	}
	for _, c := range cases {
		if got := FilterCovers(c.allowed, c.requested); got != c.want {
			t.Errorf("FilterCovers(%q, %q) = %v, want %v", c.allowed, c.requested, got, c.want)
		}
	}
}

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

// FuzzCovers checks the two matchers agree: a filter covered by an allowed
// filter never matches a topic the allowed one does not.
func FuzzCovers(f *testing.F) {
	f.Add("data/#", "data/+/temp", "data/x/temp")
	f.Add("#", "$SYS/#", "$SYS/a")
	f.Add("+/a", "+/a", "$x/a")
	f.Add("a/#", "a", "a")
	f.Fuzz(func(t *testing.T, allowed, requested, topic string) {
		if codec.ValidFilter(allowed) != nil || codec.ValidFilter(requested) != nil || strings.HasPrefix(requested, "$share/") || strings.HasPrefix(allowed, "$share/") {
			return
		}
		if FilterCovers(allowed, requested) && TopicMatches(requested, topic) && !TopicMatches(allowed, topic) {
			t.Fatalf("%q covers %q, which matches %q, but %q does not", allowed, requested, topic, allowed)
		}
	})
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
