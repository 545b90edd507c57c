# Plant least-privilege policy.
#
# Roles come from the verified identity (certificate CN, or the username a
# password or token vouched for), never from what the client claims:
#   sensor-*     publish readings under sensors/{id}/..., read commands/{id}/...,
#                may leave a will on status/{id}
#   dashboard-*  read sensors/# and status/#, publish nothing
#   controller   read like a dashboard, and publish commands/... (not retained)
# Every client's MQTT client id must equal its identity, so one device can
# never take over another's session. Nobody subscribes to '#' or '$SYS/#':
# no rule grants a filter that covers them.
package moat.authz

import rego.v1

default allow := false

# Each chain stops at its first match: one body is evaluated, not all of
# them (docs/policy.md, "Writing fast rules").
identity := input.client.cert.subject.common_name if input.client.auth_method == "certificate"
else := input.client.username if input.client.auth_method in {"password", "jwt"}

role := "sensor" if startswith(identity, "sensor-")
else := "dashboard" if startswith(identity, "dashboard-")
else := "controller" if identity == "controller"

allow if {
	input.action == "connect"
	role
	input.client.id == identity
}

# Sensors publish their own readings, and their will announces them gone.
allow if {
	input.action == "publish"
	role == "sensor"
	input.will == false
	moat.topic_matches_with("sensors/{id}/#", {"id": identity}, input.topic)
}

allow if {
	input.action == "publish"
	input.will
	role == "sensor"
	moat.topic_matches_with("status/{id}", {"id": identity}, input.topic)
}

# Sensors listen for the commands addressed to them.
allow if {
	input.action == "subscribe"
	role == "sensor"
	input.share_group == null
	moat.filter_covers_with("commands/{id}/#", {"id": identity}, input.topic)
}

allow if {
	input.action == "receive"
	role == "sensor"
	moat.topic_matches_with("commands/{id}/#", {"id": identity}, input.topic)
}

readable := {"sensors/#", "status/#"}

# Dashboards and the controller read the plant, shared subscriptions included.
allow if {
	input.action == "subscribe"
	role in {"dashboard", "controller"}
	some f in readable
	moat.filter_covers(f, input.topic)
}

allow if {
	input.action == "receive"
	role in {"dashboard", "controller"}
	some f in readable
	moat.topic_matches(f, input.topic)
}

# Only the controller commands, and a command is never retained: a stale
# "valve1/close" must not fire again when a device reconnects.
allow if {
	input.action == "publish"
	role == "controller"
	input.will == false
	input.retain == false
	moat.topic_matches("commands/#", input.topic)
}

# Unsubscribing takes nothing away from anyone.
allow if input.action == "unsubscribe"

reason := "unknown identity: no role for this certificate or user" if {
	input.action == "connect"
	not role
}

reason := "client id must equal the certificate CN or username" if {
	input.action == "connect"
	role
	input.client.id != identity
}

reason := sprintf("%s may not %s %s", [identity, input.action, input.topic]) if {
	input.action != "connect"
}
