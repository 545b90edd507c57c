package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
)

// The log is the audit trail: connections with identity, address,
// listener, protocol, duration and reason; failed logins; denials; and
// never a password or a payload.
func TestAuditLog(t *testing.T) {
	e, _ := policyEnv(t, func(c *config.Config) {
		c.Auth = config.Auth{PasswordFile: passwordFile(t)}
	})
	if code := connect5(t, e.plain, nil, &paho.Connect{ClientID: "sensor-9", UsernameFlag: true, Username: "sensor-9",
		PasswordFlag: true, Password: []byte("wrong-Secret-1")}); code != byte(codec.BadUsernameOrPassword) {
		t.Fatalf("bad password: 0x%02X", code)
	}
	c := paho5Client(t, e.plain, nil, "sensor-9", nil)
	ctx, cancel := testCtx()
	defer cancel()
	if ack, err := c.Connect(ctx, &paho.Connect{ClientID: "sensor-9", CleanStart: true, KeepAlive: 30, UsernameFlag: true,
		Username: "sensor-9", PasswordFlag: true, Password: []byte("nine")}); err != nil || ack.ReasonCode != 0 {
		t.Fatalf("good password: %v %+v", err, ack)
	}
	c.Publish(ctx, &paho.Publish{Topic: "ok/audit", QoS: 1, Payload: []byte("payload-Secret-2")})
	c.Publish(ctx, &paho.Publish{Topic: "no/audit", QoS: 1, Payload: []byte("payload-Secret-3")})
	c.Disconnect(&paho.Disconnect{})

	var connected, disconnected, failed map[string]any
	deadline := time.Now().Add(5 * time.Second)
	for disconnected == nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		sc := bufio.NewScanner(strings.NewReader(e.log.String()))
		for sc.Scan() {
			var line map[string]any
			if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
				t.Fatalf("log line is not JSON: %q", sc.Text())
			}
			switch line["msg"] {
			case "client connected":
				connected = line
			case "client disconnected":
				disconnected = line
			case "authentication failed":
				failed = line
			}
		}
	}
	for name, line := range map[string]map[string]any{"connected": connected, "disconnected": disconnected, "auth failure": failed} {
		if line == nil {
			t.Fatalf("no %s line in:\n%s", name, e.log.String())
		}
	}
	for _, k := range []string{"identity", "auth_method", "remote", "listener", "protocol", "client_id"} {
		if connected[k] == nil || connected[k] == "" {
			t.Errorf("connect line lacks %s: %v", k, connected)
		}
	}
	if connected["identity"] != "sensor-9" || connected["auth_method"] != "password" {
		t.Errorf("connect line %v", connected)
	}
	for _, k := range []string{"identity", "duration", "reason", "protocol", "remote"} {
		if disconnected[k] == nil {
			t.Errorf("disconnect line lacks %s: %v", k, disconnected)
		}
	}
	for _, secret := range []string{"wrong-Secret-1", "nine\"", "payload-Secret-2", "payload-Secret-3"} {
		if strings.Contains(e.log.String(), secret) {
			t.Errorf("the log contains %q", secret)
		}
	}
}

func testCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}
