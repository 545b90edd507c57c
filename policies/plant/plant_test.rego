package moat.authz_test

import rego.v1

import data.moat.authz

cert(cn) := {"id": cn, "auth_method": "certificate", "protocol_version": 5, "cert": {"subject": {"common_name": cn}}}

req(client, action, topic) := {"version": 1, "client": client, "action": action, "topic": topic, "share_group": null, "qos": 1, "retain": false, "will": false}

test_sensor_connects_with_its_own_id if authz.allow with input as {"version": 1, "action": "connect", "client": cert("sensor-7")}

test_sensor_cannot_connect_as_another_id if {
	c := object.union(cert("sensor-7"), {"id": "sensor-8"})
	not authz.allow with input as {"version": 1, "action": "connect", "client": c}
	authz.reason == "client id must equal the certificate CN or username" with input as {"version": 1, "action": "connect", "client": c}
}

test_unknown_identity_cannot_connect if not authz.allow with input as {"version": 1, "action": "connect", "client": cert("printer")}

test_anonymous_cannot_connect if not authz.allow with input as {"version": 1, "action": "connect", "client": {"id": "sensor-1", "auth_method": "anonymous"}}

test_unverified_username_is_not_an_identity if {
	# A username the proxy did not check arrives with auth_method anonymous.
	not authz.allow with input as {"version": 1, "action": "connect", "client": {"id": "controller", "username": "controller", "auth_method": "anonymous"}}
}

test_sensor_publishes_own_topic if authz.allow with input as req(cert("sensor-7"), "publish", "sensors/sensor-7/temp")

test_sensor_cannot_publish_other_sensor if not authz.allow with input as req(cert("sensor-7"), "publish", "sensors/sensor-8/temp")

test_sensor_cannot_publish_commands if not authz.allow with input as req(cert("sensor-7"), "publish", "commands/sensor-8/open")

test_wildcard_identity_does_not_widen if {
	# A certificate CN of '+' must not turn sensors/{id}/# into sensors/+/#.
	not authz.allow with input as req(cert("sensor-+"), "publish", "sensors/sensor-7/temp")
	not authz.allow with input as req(object.union(cert("sensor-+"), {"id": "sensor-+"}), "publish", "sensors/sensor-7/temp")
}

test_sensor_will_on_status if authz.allow with input as object.union(req(cert("sensor-7"), "publish", "status/sensor-7"), {"will": true})

test_sensor_will_elsewhere_denied if not authz.allow with input as object.union(req(cert("sensor-7"), "publish", "commands/valve1/close"), {"will": true})

test_sensor_subscribes_own_commands if authz.allow with input as req(cert("sensor-7"), "subscribe", "commands/sensor-7/#")

test_sensor_cannot_subscribe_all_commands if not authz.allow with input as req(cert("sensor-7"), "subscribe", "commands/#")

test_dashboard_reads if {
	authz.allow with input as req(cert("dashboard-1"), "subscribe", "sensors/+/temp")
	authz.allow with input as req(cert("dashboard-1"), "receive", "sensors/sensor-7/temp")
}

test_dashboard_is_read_only if not authz.allow with input as req(cert("dashboard-1"), "publish", "sensors/sensor-7/temp")

test_nobody_subscribes_everything if {
	not authz.allow with input as req(cert("controller"), "subscribe", "#")
	not authz.allow with input as req(cert("controller"), "subscribe", "$SYS/#")
	not authz.allow with input as req(cert("dashboard-1"), "subscribe", "+/#")
}

test_shared_subscription_is_checked_on_inner_filter if {
	authz.allow with input as object.union(req(cert("dashboard-1"), "subscribe", "sensors/#"), {"share_group": "g"})
	not authz.allow with input as object.union(req(cert("dashboard-1"), "subscribe", "#"), {"share_group": "g"})
}

test_controller_commands if authz.allow with input as req(cert("controller"), "publish", "commands/valve1/close")

test_retained_command_denied if not authz.allow with input as object.union(req(cert("controller"), "publish", "commands/valve1/close"), {"retain": true})

test_dashboard_cannot_command if not authz.allow with input as req(cert("dashboard-1"), "publish", "commands/valve1/close")

test_denial_reason_names_who_and_what if authz.reason == "dashboard-1 may not publish commands/x" with input as req(cert("dashboard-1"), "publish", "commands/x")
