package moat.authz_test

import rego.v1

import data.moat.authz

client(addr) := {"id": "c1", "address": addr, "auth_method": "anonymous", "protocol_version": 4}

test_loopback_connects if {
	authz.allow with input as {"action": "connect", "client": client("127.0.0.1")}
	authz.allow with input as {"action": "connect", "client": client("::1")}
}

test_remote_refused if not authz.allow with input as {"action": "connect", "client": client("192.0.2.7")}

test_demo_topics if {
	authz.allow with input as {"action": "publish", "client": client("127.0.0.1"), "topic": "demo/hello"}
	authz.allow with input as {"action": "subscribe", "client": client("127.0.0.1"), "topic": "demo/#"}
	authz.allow with input as {"action": "receive", "client": client("127.0.0.1"), "topic": "demo/a/b"}
}

test_everything_else_denied if {
	not authz.allow with input as {"action": "publish", "client": client("127.0.0.1"), "topic": "plant/valve1/close"}
	not authz.allow with input as {"action": "subscribe", "client": client("127.0.0.1"), "topic": "#"}
	not authz.allow with input as {"action": "subscribe", "client": client("127.0.0.1"), "topic": "$SYS/#"}
	not authz.allow with input as {"action": "receive", "client": client("127.0.0.1"), "topic": "demo2/x"}
}
