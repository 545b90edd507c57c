package codec

import (
	"bytes"
	"strings"
)

// checkTopicName validates a PUBLISH or will topic name. An empty name is
// accepted only when allowEmpty (an MQTT 5 PUBLISH carrying a Topic Alias).
func checkTopicName(b []byte, allowEmpty bool) error {
	if len(b) == 0 {
		if allowEmpty {
			return nil
		}
		// [MQTT-4.7.3-1] topic names are at least one character long.
		return codeErr(TopicNameInvalid, "MQTT-4.7.3-1", "empty topic name")
	}
	if bytes.IndexByte(b, '+') >= 0 || bytes.IndexByte(b, '#') >= 0 {
		// [MQTT-3.3.2-2] the topic name must not contain wildcards.
		return codeErr(TopicNameInvalid, "MQTT-3.3.2-2", "topic name %q contains a wildcard", b)
	}
	return checkUTF8(b, "topic name")
}

// ValidTopicName reports whether s is a valid topic name for PUBLISH.
func ValidTopicName(s string) error { return checkTopicName([]byte(s), false) }

// ValidFilter checks a topic filter: not empty, '#' only as the whole last
// level, '+' only as a whole level, and a well-formed shared subscription.
func ValidFilter(s string) error {
	if err := checkUTF8([]byte(s), "topic filter"); err != nil {
		return err
	}
	if s == "" {
		// [MQTT-4.7.3-1]
		return codeErr(TopicFilterInvalid, "MQTT-4.7.3-1", "empty topic filter")
	}
	if group, inner, shared := SplitShared(s); shared {
		// [MQTT-4.8.2-1] [MQTT-4.8.2-2] $share/{ShareName}/{filter}: the share
		// name is at least one character and holds no '/', '+' or '#'.
		if group == "" || strings.ContainsAny(group, "+#") {
			return codeErr(TopicFilterInvalid, "MQTT-4.8.2-2", "shared subscription %q has an invalid share name", s)
		}
		if inner == "" {
			return codeErr(TopicFilterInvalid, "MQTT-4.8.2-1", "shared subscription %q has no topic filter", s)
		}
		s = inner
	}
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '#':
			// [MQTT-4.7.1-1] multi-level wildcard is last and a whole level.
			if i != len(s)-1 || (i > 0 && s[i-1] != '/') {
				return codeErr(TopicFilterInvalid, "MQTT-4.7.1-1", "topic filter %q: '#' must be the whole last level", s)
			}
		case '+':
			// [MQTT-4.7.1-2] single-level wildcard occupies a whole level.
			if (i > 0 && s[i-1] != '/') || (i < len(s)-1 && s[i+1] != '/') {
				return codeErr(TopicFilterInvalid, "MQTT-4.7.1-2", "topic filter %q: '+' must be a whole level", s)
			}
		}
	}
	return nil
}

// SplitShared splits "$share/group/filter" into its group and filter. For
// "$share/group" (no filter) it returns the group and an empty filter.
func SplitShared(s string) (group, filter string, shared bool) {
	const prefix = "$share/"
	if !strings.HasPrefix(s, prefix) {
		return "", "", false
	}
	rest := s[len(prefix):]
	i := strings.IndexByte(rest, '/')
	if i < 0 {
		return rest, "", true
	}
	return rest[:i], rest[i+1:], true
}
