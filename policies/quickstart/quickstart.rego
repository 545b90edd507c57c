# Quick start policy, used by `moat run` without a configuration.
#
# The quick start has no client authentication yet, so this policy admits
# anonymous clients from loopback only, and only to topics under demo/.
# Everything else is denied: try `mosquitto_sub -t '#'` and watch the
# decision log. Edit this file while moat runs: it is reloaded.
package moat.authz

import rego.v1

default allow := false

loopback if startswith(input.client.address, "127.")

loopback if input.client.address == "::1"

allow if {
	input.action == "connect"
	loopback
}

allow if {
	input.action in {"publish", "receive"}
	moat.topic_matches("demo/#", input.topic)
}

allow if {
	input.action in {"subscribe", "unsubscribe"}
	moat.filter_covers("demo/#", input.topic)
}

reason := "the quick start only admits clients on loopback" if {
	input.action == "connect"
	not loopback
}

reason := sprintf("the quick start policy only allows topics under demo/, not %q", [input.topic]) if {
	input.action != "connect"
}
