# Multi-tenant policy: many customers share one broker, and none can see or
# touch another's topics.
#
# The tenant comes from a verified identity only:
#   jwt          the token's "tenant" claim
#   password     the username's prefix before the first '.', e.g. acme.alice
#   certificate  the single Organization (O) of the client certificate
# Each tenant owns tenants/{tenant}/..., everyone may read public/..., and a
# client id must start with "{tenant}-" so ids never collide (and sessions
# can never be taken over) across tenants.
package moat.authz

import rego.v1

default allow := false

tenant := input.client.claims.tenant if {
	input.client.auth_method == "jwt"
	is_string(input.client.claims.tenant)
}

tenant := split(input.client.username, ".")[0] if {
	input.client.auth_method == "password"
	contains(input.client.username, ".")
}

tenant := input.client.cert.subject.organization[0] if {
	input.client.auth_method == "certificate"
	count(input.client.cert.subject.organization) == 1
}

space := {"t": tenant}

allow if {
	input.action == "connect"
	tenant != ""
	startswith(input.client.id, concat("", [tenant, "-"]))
}

allow if {
	input.action in {"publish", "receive"}
	moat.topic_matches_with("tenants/{t}/#", space, input.topic)
}

allow if {
	input.action in {"subscribe", "unsubscribe"}
	moat.filter_covers_with("tenants/{t}/#", space, input.topic)
}

allow if {
	input.action in {"subscribe", "unsubscribe"}
	moat.filter_covers("public/#", input.topic)
}

allow if {
	input.action == "receive"
	moat.topic_matches("public/#", input.topic)
}

reason := "no verified tenant for this client" if {
	input.action == "connect"
	not tenant
}

reason := sprintf("client id must start with %q", [concat("", [tenant, "-"])]) if {
	input.action == "connect"
	tenant
	not startswith(input.client.id, concat("", [tenant, "-"]))
}

reason := sprintf("tenant %s may not %s %s", [tenant, input.action, input.topic]) if {
	input.action != "connect"
	tenant
}
