//go:build !race

// The race detector allocates on its own: this count means something
// only without it (scripts/test.sh runs it in a separate pass).

package proxy

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// allocSession connects an MQTT 5 client as id to moat enforcing rules,
// in front of a fake broker whose end it returns. Rate budgets are on but
// too large to pace (their check is on the path), and the in-flight quota
// is off: the clients here do not wait for acks.
func allocSession(t *testing.T, rules, id string, edit func(*config.Config)) (*mqtttest.Raw, net.Conn) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.rego"), []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, conns := fakeBroker(t)
	srv := newTestServer(t, addr, func(c *config.Config) {
		c.Policy = &config.Policy{Mode: config.ModeEnforce, Paths: []string{dir}}
		c.Limits.MaxInflight = -1
		c.Limits.Rate = config.ClientRate{PublishPerSecond: 1e9, BytesPerSecond: 1 << 40}
		if edit != nil {
			edit(c)
		}
	})
	c := mqtttest.DialRaw(t, srv.Addr("mqtt").String(), nil)
	c.Connect(codec.V5, id, 30)
	broker := <-conns
	t.Cleanup(func() { broker.Close() })
	return c, broker
}

// TestForwardingAllocatesNothing: a permitted QoS 1 publish whose decision
// is cached, and its PUBACK, cross moat without a heap allocation (the
// budget in DESIGN.md). Counted over many packets, so the odd runtime
// allocation does not matter; a per-packet one does.
func TestForwardingAllocatesNothing(t *testing.T) {
	c, broker := allocSession(t, "package moat.authz\nallow := true\n", "alloc", nil)
	pub, _ := (&codec.Publish{QoS: 1, PacketID: 1, Topic: []byte("a/b"), Payload: make([]byte, 64)}).Append(nil, codec.V5)
	ack, _ := (&codec.Ack{PacketType: codec.PUBACK, PacketID: 1}).Append(nil, codec.V5)
	go func() {
		r := codec.NewReader(broker, 0)
		for {
			if _, err := r.ReadPacket(); err != nil {
				return
			}
			broker.Write(ack)
		}
	}()
	c.Conn.SetReadDeadline(time.Time{})
	acks := codec.NewReader(c.Conn, 0)
	per := allocsPerPacket(t, c, acks, bytes.Repeat(pub, 200), func(codec.Frame) {})
	if per > 0.1 {
		t.Fatalf("%.2f allocations per forwarded publish and ack", per)
	}
}

// allocsPerPacket sends burst (200 packets) n/200 times after a warm-up
// (pools, cache, buffers), hands each answer read from r to check, and
// returns the heap allocations per packet. Bursts, as under load: a pump
// that goes idle between packets pays for waiting (netpoller, parker),
// which is not the path measured.
func allocsPerPacket(t *testing.T, c *mqtttest.Raw, r *codec.Reader, burst []byte, check func(codec.Frame)) float64 {
	t.Helper()
	round := func(n int) {
		for range n / 200 {
			c.Send(burst)
			for range 200 {
				f, err := r.ReadPacket()
				if err != nil {
					t.Fatal(err)
				}
				check(f)
			}
		}
	}
	round(2000)
	const n = 20000
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	round(n)
	runtime.ReadMemStats(&after)
	return float64(after.Mallocs-before.Mallocs) / n
}

// TestDenyingAllocatesNothing: a flood of denied publishes, each answered
// by moat itself with a PUBACK carrying the reason code and the policy's
// reason (MQTT 5, problem information on), allocates nothing per packet:
// a hostile client must not be able to drive the garbage collector, whose
// pauses every other session would feel. The decision log's own lines are
// rate limited and counted in the budget.
func TestDenyingAllocatesNothing(t *testing.T) {
	rules := "package moat.authz\nimport rego.v1\nallow if input.action == \"connect\"\n"
	c, _ := allocSession(t, rules, "denied", func(c *config.Config) {
		c.Policy.DecisionLog = config.DecisionLog{File: filepath.Join(c.Policy.Paths[0], "decisions.jsonl")}
		c.Bans.Denials = -1 // the flood is the point: no ban
	})
	pub, _ := (&codec.Publish{QoS: 1, PacketID: 7, Topic: []byte("a/b"), Payload: make([]byte, 64)}).Append(nil, codec.V5)
	c.Conn.SetReadDeadline(time.Time{})
	acks := codec.NewReader(c.Conn, 0)
	per := allocsPerPacket(t, c, acks, bytes.Repeat(pub, 200), func(f codec.Frame) {
		var ack codec.Ack
		if err := codec.DecodeAck(&ack, f, codec.V5); err != nil || ack.PacketType != codec.PUBACK || ack.PacketID != 7 ||
			ack.ReasonCode != codec.NotAuthorized || len(ack.Properties.ReasonString) == 0 {
			t.Fatalf("want PUBACK 7 0x87 with a reason, got %+v (%v)", ack, err)
		}
	})
	if per > 0.1 {
		t.Fatalf("%.2f allocations per denied publish", per)
	}
}
