package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/moat-mqtt/moat/admin"
	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/mqtttest"
	"github.com/moat-mqtt/moat/proxy"
)

const adminToken = "test-token-0123456789abcdef"

// adminEnv is policyEnv with the admin interface on a free loopback port.
func adminEnv(t *testing.T, mutate func(*config.Config)) (*env, string) {
	t.Helper()
	e, _ := policyEnv(t, mutate)
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte(adminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := admin.New(config.Admin{TokenFile: tok}, e.srv, testLogger(t), new(slog.LevelVar))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Shutdown(context.Background()) })
	return e, "http://" + a.Addr().String()
}

func httpDo(t *testing.T, method, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric returns the value of the sample named exactly series (name and
// labels as exposed, labels in name order), or -1.
func metric(t *testing.T, base, series string) float64 {
	t.Helper()
	_, body := httpDo(t, "GET", base+"/metrics", "")
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", series, err)
			}
			return f
		}
	}
	return -1
}

// Metrics after scripted traffic count what was sent and denied.
func TestMetrics(t *testing.T) {
	e, base := adminEnv(t, nil)
	c := paho5(t, e.plain, nil, "metered", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 7 {
		topic := "ok/m"
		if i >= 5 {
			topic = "no/m" // denied
		}
		if _, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte("v")}); err != nil && i < 5 {
			t.Fatal(err)
		}
	}
	for series, want := range map[string]float64{
		`moat_packets_total{direction="client_to_broker",type="PUBLISH"}`: 7,
		`moat_packets_total{direction="client_to_broker",type="CONNECT"}`: 1,
		`moat_packets_total{direction="broker_to_client",type="CONNACK"}`: 1,
		`moat_packets_total{direction="broker_to_client",type="PUBACK"}`:  5,
		`moat_decisions_total{action="publish",result="allow"}`:           5,
		`moat_decisions_total{action="publish",result="deny"}`:            2,
		`moat_decisions_total{action="connect",result="allow"}`:           1,
		`moat_refusals_total{cause="policy"}`:                             2,
		`moat_connections_active{listener="mqtt"}`:                        1,
		`moat_connections_total{listener="mqtt"}`:                         1,
		`moat_connections_active{listener="mqtts"}`:                       0,
	} {
		if got := metric(t, base, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if got := metric(t, base, `moat_policy_eval_seconds_count{action="publish"}`); got < 2 {
		t.Errorf("policy evaluation histogram has %v publish samples", got)
	}
	if got := metric(t, base, "moat_upstream_dial_seconds_count"); got != 1 {
		t.Errorf("upstream dials %v, want 1", got)
	}
	// No client id, address or topic becomes a label.
	_, body := httpDo(t, "GET", base+"/metrics", "")
	for _, leak := range []string{"metered", "ok/m", "no/m", "127.0.0.1"} {
		if strings.Contains(body, leak) {
			t.Errorf("metrics mention %q", leak)
		}
	}
}

func TestAdminAPI(t *testing.T) {
	e, base := adminEnv(t, func(c *config.Config) { c.Bans.Denials = 3 })
	if code, body := httpDo(t, "GET", base+"/healthz", ""); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Fatalf("healthz %d %q", code, body)
	}
	if code, _ := httpDo(t, "GET", base+"/readyz", ""); code != 200 {
		t.Fatalf("readyz %d with everything up", code)
	}
	for _, tok := range []string{"", "wrong-token-0123456789"} {
		if code, _ := httpDo(t, "GET", base+"/api/connections", tok); code != http.StatusUnauthorized {
			t.Fatalf("token %q: %d, want 401", tok, code)
		}
	}
	if code, _ := httpDo(t, "GET", base+"/debug/pprof/", adminToken); code != http.StatusNotFound {
		t.Fatalf("pprof served without admin.pprof: %d", code)
	}

	// List, then disconnect: an MQTT 5 client hears 0x98.
	c := mqtttest.DialRaw(t, e.plain, nil)
	c.Connect(codec.V5, "listed", 30)
	c.SendPacket(&codec.Publish{Topic: []byte("ok/a"), Payload: []byte("v")})
	var conns []proxy.Conn
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, body := httpDo(t, "GET", base+"/api/connections", adminToken)
		if err := json.Unmarshal([]byte(body), &conns); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		if len(conns) == 1 && conns[0].PacketsIn == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(conns) != 1 || conns[0].ClientID != "listed" || conns[0].Protocol != "5.0" || conns[0].Listener != "mqtt" || conns[0].PacketsIn != 2 {
		t.Fatalf("connections %+v", conns)
	}
	if code, _ := httpDo(t, "DELETE", base+"/api/connections/"+strconv.FormatUint(conns[0].ID, 10), adminToken); code != http.StatusNoContent {
		t.Fatalf("disconnect: %d", code)
	}
	c.ExpectDisconnect(codec.AdministrativeAction, 5*time.Second)
	if code, _ := httpDo(t, "DELETE", base+"/api/connections/999999", adminToken); code != http.StatusNotFound {
		t.Fatalf("disconnecting an unknown connection: %d", code)
	}

	// Bans: three denials from 127.0.0.2 ban it; the API lists and lifts it.
	bad := mqtttest.DialRawFrom(t, "127.0.0.2", e.plain)
	bad.Connect(codec.V311, "denied", 30)
	for range 3 {
		bad.SendPacket(&codec.Publish{Topic: []byte("no/x"), Payload: []byte("v")})
	}
	bad.ExpectClosed(5 * time.Second)
	var bans []proxy.Ban
	_, body := httpDo(t, "GET", base+"/api/bans", adminToken)
	if err := json.Unmarshal([]byte(body), &bans); err != nil || len(bans) != 1 || bans[0].Key != "127.0.0.2" || bans[0].Kind != "denials" {
		t.Fatalf("bans %s (%v)", body, err)
	}
	if metric(t, base, `moat_bans_total{kind="denials"}`) != 1 {
		t.Error("the ban was not counted")
	}
	if code, _ := httpDo(t, "DELETE", base+"/api/bans/127.0.0.2", adminToken); code != 200 {
		t.Fatalf("lift: %d", code)
	}
	if code, _ := httpDo(t, "DELETE", base+"/api/bans/127.0.0.2", adminToken); code != http.StatusNotFound {
		t.Fatalf("lifting twice: %d", code)
	}
	again := mqtttest.DialRawFrom(t, "127.0.0.2", e.plain)
	again.Connect(codec.V311, "forgiven", 30)

	if code, body := httpDo(t, "PUT", base+"/api/log/level", adminToken); code != http.StatusBadRequest {
		t.Fatalf("empty log level: %d %s", code, body)
	}
	req, _ := http.NewRequest("PUT", base+"/api/log/level", strings.NewReader("debug\n"))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("setting the log level: %v %v", resp, err)
	}
	if code, body := httpDo(t, "GET", base+"/api/log/level", adminToken); code != 200 || !strings.Contains(body, `"debug"`) {
		t.Fatalf("log level: %d %s", code, body)
	}
	if code, body := httpDo(t, "GET", base+"/api/policy", adminToken); code != 200 || !strings.Contains(body, `"revision"`) || !strings.Contains(body, `"mode": "enforce"`) {
		t.Fatalf("policy: %d %s", code, body)
	}
	// Readiness follows the upstream.
	e.broker.Stop()
	deadline = time.Now().Add(5 * time.Second)
	for {
		code, body := httpDo(t, "GET", base+"/readyz", "")
		if code == http.StatusServiceUnavailable && strings.Contains(body, "upstream") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readyz %d %q with the broker down", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestAdminTokenTooShort(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("short"), 0o600)
	if _, err := admin.ReadToken(tok); err == nil || !strings.Contains(err.Error(), "at least 16") {
		t.Fatalf("a 5-character token: %v", err)
	}
}

// TestOversizeDeliveryTo3x: an MQTT 3.1.1 client cannot tell the broker
// its packet size limit, so the broker may deliver more than moat admits.
// moat drops that message, acknowledges it to the broker at QoS 1 and 2,
// counts it, and the session goes on: the messages around it arrive in
// order, and the broker does not redeliver the dropped ones on reconnect.
func TestOversizeDeliveryTo3x(t *testing.T) {
	const limit = 4 << 10
	e, base := adminEnv(t, func(c *config.Config) { c.Limits.MaxPacketSize = limit })
	connect := func() *mqtttest.Raw {
		c := mqtttest.DialRaw(t, e.plain, nil)
		c.V = codec.V311
		c.SendPacket(&codec.Connect{Version: codec.V311, ClientID: "small-sub", KeepAlive: 30})
		if ack, ok := c.Expect(5 * time.Second).(*codec.Connack); !ok || ack.ReasonCode != 0 {
			t.Fatalf("CONNACK %#v", ack)
		}
		return c
	}
	sub := connect()
	sub.SendPacket(&codec.Subscribe{PacketID: 1, Subscriptions: []codec.Subscription{{Filter: "ok/big/#", QoS: 2}}})
	if p := sub.Expect(5 * time.Second); p.Type() != codec.SUBACK {
		t.Fatalf("got %s, want SUBACK", p.Type())
	}
	pub := paho5(t, e.broker.Addr, nil, "big-pub", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	big := bytes.Repeat([]byte("x"), 10<<10)
	for _, m := range []struct {
		topic   string
		qos     byte
		payload []byte
	}{{"ok/big/1", 1, []byte("first")}, {"ok/big/2", 1, big}, {"ok/big/3", 2, big}, {"ok/big/4", 2, []byte("last")}} {
		if _, err := pub.Publish(ctx, &paho.Publish{Topic: m.topic, QoS: m.qos, Payload: m.payload}); err != nil {
			t.Fatal(err)
		}
	}
	p, ok := sub.Expect(10 * time.Second).(*codec.Publish)
	if !ok || string(p.Topic) != "ok/big/1" || p.QoS != 1 {
		t.Fatalf("first delivery %#v", p)
	}
	sub.SendPacket(&codec.Ack{PacketType: codec.PUBACK, PacketID: p.PacketID})
	if p, ok = sub.Expect(10 * time.Second).(*codec.Publish); !ok || string(p.Topic) != "ok/big/4" || string(p.Payload) != "last" {
		t.Fatalf("second delivery %#v: want ok/big/4, the oversize ones dropped", p)
	}
	sub.SendPacket(&codec.Ack{PacketType: codec.PUBREC, PacketID: p.PacketID})
	if rel, ok := sub.Expect(5 * time.Second).(*codec.Ack); !ok || rel.PacketType != codec.PUBREL {
		t.Fatalf("want PUBREL, got %#v", rel)
	}
	sub.SendPacket(&codec.Ack{PacketType: codec.PUBCOMP, PacketID: p.PacketID})
	if got := metric(t, base, "moat_deliveries_oversize_dropped_total"); got != 2 {
		t.Fatalf("oversize drops counted %v, want 2", got)
	}
	sub.SendPacket(&codec.Disconnect{})
	sub.ExpectClosed(5 * time.Second)

	// The broker saw every message acknowledged: a new connection to the
	// same session gets nothing more.
	again := connect()
	if p, err := again.Read(1500 * time.Millisecond); err == nil {
		t.Fatalf("redelivered after reconnect: %#v", p)
	}
}
