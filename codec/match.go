package codec

import "strings"

// TopicMatches reports whether the topic filter matches the topic name.
// Wildcards in the first level never match a topic starting with '$'
// [MQTT-4.7.2-1], so an allow on "#" does not open $SYS or other
// broker-reserved spaces. A topic holding wildcards matches nothing.
func TopicMatches(filter, topic string) bool {
	if strings.ContainsAny(topic, "+#") || topic == "" {
		return false
	}
	if filter == "#" || (strings.HasPrefix(filter, "+") && (len(filter) == 1 || filter[1] == '/')) {
		if topic[0] == '$' { // [MQTT-4.7.2-1]
			return false
		}
	}
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		if f == "#" {
			return true
		}
		t, trest, tmore := strings.Cut(topic, "/")
		if f != "+" && f != t {
			return false
		}
		if !fmore || !tmore {
			// "a/#" also matches its parent "a" [MQTT-4.7.1-1].
			return fmore == tmore || (fmore && !tmore && frest == "#")
		}
		filter, topic = frest, trest
	}
}

// FilterCovers reports whether every topic the requested filter can match
// is also matched by the allowed filter, so a subscription to "data/+/temp"
// may be granted by an allow on "data/#". The first-level '$' rule of
// TopicMatches holds here too: "#" does not cover "$SYS/#".
func FilterCovers(allowed, requested string) bool {
	if requested == "" || allowed == "" {
		return false
	}
	first := true
	for {
		a, arest, amore := strings.Cut(allowed, "/")
		if a == "#" {
			// '#' covers everything below, including the parent level
			// the requested filter may end at; not '$' at the top.
			return !(first && requested[0] == '$')
		}
		r, rrest, rmore := strings.Cut(requested, "/")
		switch {
		case a == "+":
			if r == "#" || (first && strings.HasPrefix(r, "$")) {
				return false
			}
		case a != r:
			return false
		}
		first = false
		if !amore || !rmore {
			if !amore && !rmore {
				return true
			}
			// The requested filter stops here: covered only by a
			// trailing '#' that also matches the parent level.
			return amore && arest == "#"
		}
		allowed, requested = arest, rrest
	}
}
