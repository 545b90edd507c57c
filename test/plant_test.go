package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/devpki"
)

// The plant example policy end to end: identities from client
// certificates, client ids bound to them, least privilege per role.
func TestPlantPolicy(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Policy = &config.Policy{Mode: config.ModeEnforce, Paths: []string{"../policies/plant"},
			WatchInterval: config.OptDuration{Set: true}, DecisionLog: config.DecisionLog{File: "off"}}
	})
	if _, err := devpki.Ensure(e.certs, "sensor-7", "dashboard-1", "controller"); err != nil {
		t.Fatal(err)
	}
	connect := func(cert, id string) (*paho.Client, *received, byte) {
		t.Helper()
		rec := newReceived()
		c := paho5Client(t, e.mtls, e.tlsConfig(cert), id, rec)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ack, err := c.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30})
		if ack == nil {
			t.Fatalf("connect %s as %s: %v", cert, id, err)
		}
		if ack.ReasonCode == 0 {
			t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
		}
		return c, rec, ack.ReasonCode
	}
	publish := func(c *paho.Client, topic string) byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r, err := c.Publish(ctx, &paho.Publish{Topic: topic, Payload: []byte("v"), QoS: 1})
		if r == nil {
			t.Fatalf("publish %s: %v", topic, err)
		}
		return r.ReasonCode
	}
	subscribe := func(c *paho.Client, filter string) byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
		if sa == nil || len(sa.Reasons) != 1 {
			t.Fatalf("subscribe %s: %+v %v", filter, sa, err)
		}
		return sa.Reasons[0]
	}

	if _, _, code := connect("sensor-7", "sensor-8"); code != byte(codec.NotAuthorized) {
		t.Fatalf("sensor-7 taking client id sensor-8: CONNACK 0x%02X, want 0x87", code)
	}
	anon := paho5Client(t, e.tls, e.tlsConfig(""), "sensor-7", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ack, _ := anon.Connect(ctx, &paho.Connect{ClientID: "sensor-7", CleanStart: true}); ack == nil || ack.ReasonCode != byte(codec.NotAuthorized) {
		t.Fatalf("anonymous client: CONNACK %+v, want 0x87", ack)
	}

	sensor, sensorRec, _ := connect("sensor-7", "sensor-7")
	dash, dashRec, _ := connect("dashboard-1", "dashboard-1")
	ctl, _, _ := connect("controller", "controller")

	if code := subscribe(dash, "#"); code != byte(codec.NotAuthorized) {
		t.Errorf("dashboard subscribing #: 0x%02X", code)
	}
	if code := subscribe(dash, "$SYS/#"); code != byte(codec.NotAuthorized) {
		t.Errorf("dashboard subscribing $SYS/#: 0x%02X", code)
	}
	if code := subscribe(dash, "sensors/+/temp"); code >= 0x80 {
		t.Fatalf("dashboard subscribing sensors/+/temp: 0x%02X", code)
	}
	if code := subscribe(sensor, "commands/sensor-7/#"); code >= 0x80 {
		t.Fatalf("sensor subscribing its commands: 0x%02X", code)
	}
	if code := subscribe(sensor, "commands/#"); code != byte(codec.NotAuthorized) {
		t.Errorf("sensor subscribing all commands: 0x%02X", code)
	}
	for _, c := range []struct {
		who   *paho.Client
		topic string
		allow bool
	}{
		{sensor, "sensors/sensor-8/temp", false},
		{sensor, "commands/valve1/close", false},
		{dash, "commands/sensor-7/reboot", false},
		{sensor, "sensors/sensor-7/temp", true},
		{ctl, "commands/sensor-7/reboot", true},
	} {
		got := publish(c.who, c.topic)
		if c.allow && got >= 0x80 || !c.allow && got != byte(codec.NotAuthorized) {
			t.Errorf("publish %s: 0x%02X", c.topic, got)
		}
	}
	if m := dashRec.wait(t, 1, 10*time.Second); m[0].Topic != "sensors/sensor-7/temp" {
		t.Errorf("dashboard received %+v", m)
	}
	if m := sensorRec.wait(t, 1, 10*time.Second); m[0].Topic != "commands/sensor-7/reboot" {
		t.Errorf("sensor received %+v", m)
	}
}
