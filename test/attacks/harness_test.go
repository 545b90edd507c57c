// Package attacks is the hostile-input corpus: each case sends what an
// attacker would to moat in front of a real Mosquitto, and checks both
// what the attacker sees and that nothing forbidden reached the broker
// (a subscriber to # on the broker's own port).
package attacks

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/mqtttest"
	"github.com/moat-mqtt/moat/proxy"
)

// policy is the fixed policy of the corpus: anything under ok/ is
// allowed; anything under secret/ never is; wildcard subscriptions on
// +/r are allowed, so the receive check is what keeps secret/r out.
const policy = `package moat.authz

allow if { input.action == "connect"; input.client.id != "intruder" }
allow if { input.action in {"publish", "subscribe", "unsubscribe", "receive"}; startswith(input.topic, "ok/") }
allow if { input.action in {"subscribe", "unsubscribe"}; input.topic == "+/r" }
`

// counts is how many cases each class ran, printed at the end.
var counts = struct {
	sync.Mutex
	m map[string]int
}{m: map[string]int{}}

func count(class string) {
	counts.Lock()
	counts.m[class]++
	counts.Unlock()
}

func TestMain(m *testing.M) {
	code := m.Run()
	var classes []string
	total := 0
	for c, n := range counts.m {
		classes = append(classes, fmt.Sprintf("%s: %d", c, n))
		total += n
	}
	sort.Strings(classes)
	if total > 0 {
		fmt.Printf("attack corpus: %d cases (%s)\n", total, strings.Join(classes, ", "))
	}
	os.Exit(code)
}

// target is moat with the corpus policy in front of its own Mosquitto,
// and a subscriber on the broker that records every topic it sees.
type target struct {
	addr   string
	broker *mqtttest.Broker
	srv    *proxy.Server
	mu     sync.Mutex
	seen   []string
}

func newTarget(t *testing.T, mutate func(*config.Config)) *target {
	t.Helper()
	// The broker logs every subscription: what moat let through is on record.
	broker := mqtttest.Start(t, "log_type subscribe\nlog_type unsubscribe\n")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "corpus.rego"), []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{
		Listeners: []config.Listener{{Name: "mqtt", Address: "127.0.0.1:0", Transport: "tcp"}},
		Upstream:  config.Upstream{Address: broker.Addr},
		Auth:      config.Auth{Anonymous: true},
		Policy:    &config.Policy{Mode: config.ModeEnforce, Paths: []string{dir}, WatchInterval: config.OptDuration{Set: true}, DecisionLog: config.DecisionLog{File: "off"}},
		Limits: config.Limits{ConnectTimeout: 2 * time.Second,
			Rate:        config.ClientRate{PublishPerSecond: -1, BytesPerSecond: -1, SubscribePerSecond: -1},
			Connections: config.ConnectionLimits{PerAddressPerSecond: -1, PerAddress: -1, PerSecond: -1, Max: -1}},
		Bans:     config.Bans{Denials: -1},
		Admin:    config.Admin{Address: "off"},
		Shutdown: config.Shutdown{DrainTimeout: 2 * time.Second},
	}
	if mutate != nil {
		mutate(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	buf := &mqtttest.SyncBuffer{}
	srv, err := proxy.New(cfg, slog.New(slog.NewTextHandler(buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if t.Failed() {
			t.Logf("moat log:\n%s", buf.String())
		}
	})
	tg := &target{addr: srv.Addr("mqtt").String(), broker: broker, srv: srv}
	tg.watch(t)
	return tg
}

// watch subscribes to everything on the broker itself.
func (tg *target) watch(t *testing.T) {
	spy := mqtttest.DialRaw(t, tg.broker.Addr, nil)
	spy.Connect(codec.V5, "corpus-spy", 0)
	spy.SendPacket(&codec.Subscribe{PacketID: 1, Subscriptions: []codec.Subscription{{Filter: "#", QoS: 0}}})
	if _, ok := spy.Expect(5 * time.Second).(*codec.Suback); !ok {
		t.Fatal("spy: no SUBACK")
	}
	spy.Conn.SetReadDeadline(time.Time{})
	go func() {
		for {
			p, err := spy.Read(time.Hour)
			if err != nil {
				return
			}
			if pub, ok := p.(*codec.Publish); ok {
				tg.mu.Lock()
				tg.seen = append(tg.seen, string(pub.Topic))
				tg.mu.Unlock()
			}
		}
	}()
}

var markers atomic.Int64

// clean checks, after a case, that no secret/ topic reached the broker
// (a marker publish through moat on ok/ shows the spy is caught up).
func (tg *target) clean(t *testing.T, name string) {
	t.Helper()
	marker := fmt.Sprintf("ok/marker/%d", markers.Add(1))
	c := mqtttest.DialRaw(t, tg.addr, nil)
	c.Connect(codec.V311, "corpus-marker", 30)
	c.SendPacket(&codec.Publish{Topic: []byte(marker), QoS: 1, PacketID: 1, Payload: []byte("m")})
	c.Expect(5 * time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for {
		tg.mu.Lock()
		seen := append([]string(nil), tg.seen...)
		tg.mu.Unlock()
		done := false
		for _, s := range seen {
			if strings.HasPrefix(s, "secret/") {
				t.Fatalf("%s: forbidden topic %q reached the broker", name, s)
			}
			done = done || s == marker
		}
		for _, l := range strings.Split(tg.broker.Log(), "\n") {
			// Subscriptions on record: "<time>: <client id> <qos> <filter>".
			if f := strings.Fields(l); len(f) == 4 && len(f[2]) == 1 && f[2][0] >= '0' && f[2][0] <= '2' && strings.Contains(f[3], "secret/") {
				t.Fatalf("%s: the broker saw a forbidden filter: %s", name, l)
			}
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the broker never saw the marker publish", name)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// versions are the protocol versions every malformed case runs for.
var versions = []codec.Version{codec.V31, codec.V311, codec.V5}
