package codec

import (
	"strings"
	"testing"
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

// FuzzCovers checks the two matchers agree: a filter covered by an allowed
// filter never matches a topic the allowed one does not.
func FuzzCovers(f *testing.F) {
	f.Add("data/#", "data/+/temp", "data/x/temp")
	f.Add("#", "$SYS/#", "$SYS/a")
	f.Add("+/a", "+/a", "$x/a")
	f.Add("a/#", "a", "a")
	f.Fuzz(func(t *testing.T, allowed, requested, topic string) {
		if ValidFilter(allowed) != nil || ValidFilter(requested) != nil || strings.HasPrefix(requested, "$share/") || strings.HasPrefix(allowed, "$share/") {
			return
		}
		if FilterCovers(allowed, requested) && TopicMatches(requested, topic) && !TopicMatches(allowed, topic) {
			t.Fatalf("%q covers %q, which matches %q, but %q does not", allowed, requested, topic, allowed)
		}
	})
}
