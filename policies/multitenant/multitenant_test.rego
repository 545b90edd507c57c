package moat.authz_test

import rego.v1

import data.moat.authz

pw(user, id) := {"id": id, "username": user, "auth_method": "password"}

jwt(tenant, id) := {"id": id, "auth_method": "jwt", "claims": {"tenant": tenant}}

cert(org, id) := {"id": id, "auth_method": "certificate", "cert": {"subject": {"common_name": id, "organization": [org]}}}

req(c, action, topic) := {"client": c, "action": action, "topic": topic, "share_group": null, "qos": 0, "retain": false, "will": false}

test_tenants_connect_with_prefixed_ids if {
	authz.allow with input as {"action": "connect", "client": pw("acme.alice", "acme-1")}
	authz.allow with input as {"action": "connect", "client": jwt("globex", "globex-7")}
	authz.allow with input as {"action": "connect", "client": cert("initech", "initech-x")}
}

test_foreign_client_id_refused if {
	not authz.allow with input as {"action": "connect", "client": pw("acme.alice", "globex-1")}
	authz.reason == "client id must start with \"acme-\"" with input as {"action": "connect", "client": pw("acme.alice", "globex-1")}
}

test_no_tenant_refused if {
	not authz.allow with input as {"action": "connect", "client": pw("alice", "alice-1")}
	not authz.allow with input as {"action": "connect", "client": {"id": "acme-1", "username": "acme.x", "auth_method": "anonymous"}}
	not authz.allow with input as {"action": "connect", "client": jwt(7, "7-1")}
}

test_own_space if {
	authz.allow with input as req(pw("acme.alice", "acme-1"), "publish", "tenants/acme/line1/temp")
	authz.allow with input as req(pw("acme.alice", "acme-1"), "subscribe", "tenants/acme/#")
	authz.allow with input as req(jwt("globex", "globex-1"), "receive", "tenants/globex/x")
}

test_tenants_isolated if {
	not authz.allow with input as req(pw("acme.alice", "acme-1"), "publish", "tenants/globex/x")
	not authz.allow with input as req(pw("acme.alice", "acme-1"), "subscribe", "tenants/+/x")
	not authz.allow with input as req(pw("acme.alice", "acme-1"), "subscribe", "tenants/#")
	not authz.allow with input as req(pw("acme.alice", "acme-1"), "receive", "tenants/globex/x")
}

test_wildcard_tenant_names_do_not_widen if {
	not authz.allow with input as req(jwt("+", "+-1"), "publish", "tenants/acme/x")
	not authz.allow with input as req(jwt("#", "#-1"), "subscribe", "tenants/#")
}

test_public_is_read_only if {
	authz.allow with input as req(pw("acme.alice", "acme-1"), "subscribe", "public/#")
	authz.allow with input as req(pw("acme.alice", "acme-1"), "receive", "public/news")
	not authz.allow with input as req(pw("acme.alice", "acme-1"), "publish", "public/news")
}
