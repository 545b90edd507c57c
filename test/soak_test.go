package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// TestSoak runs a few hundred clients through moat for MOAT_SOAK (default
// one minute; the long run is MOAT_SOAK=10m go test -run TestSoak -timeout 30m ./test):
// publishers at QoS 1 and 2 on allowed topics with the odd denied publish,
// subscribers on a wildcard and on forbidden filters, connections
// churning and the policy reloading every two seconds. At the end every
// message a publisher had acknowledged has reached every subscriber in
// order, nothing forbidden was delivered, and goroutines and heap are back
// near where they started.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("soak: run without -short")
	}
	d := time.Minute
	if v := os.Getenv("MOAT_SOAK"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("MOAT_SOAK=%q: %v", v, err)
		}
	}
	const publishers, subscribers = 150, 50
	dir := t.TempDir()
	policyFile := filepath.Join(dir, "soak.rego")
	writePolicy := func(rev int) {
		body := fmt.Sprintf(`package moat.authz
# revision %d
allow if input.action == "connect"
allow if { input.action in {"publish", "subscribe", "unsubscribe", "receive"}; startswith(input.topic, "ok/") }
`, rev)
		if err := os.WriteFile(policyFile, []byte(body), 0o600); err != nil {
			t.Error(err)
		}
	}
	writePolicy(0)
	// Mosquitto 2.0 reorders deliveries to a subscriber held at its
	// in-flight limit (max_inflight_messages, or the client's Receive
	// Maximum) — with or without moat in front, as a direct subscriber
	// shows once it reads slowly. Unlimited here, so that order checks
	// moat alone.
	broker := mqtttest.Start(t, "max_inflight_messages 0\n")
	e := newEnvWithBroker(t, broker, func(c *config.Config) {
		c.Policy = &config.Policy{Mode: config.ModeEnforce, Paths: []string{dir}, WatchInterval: config.OptDuration{Set: true}, DecisionLog: config.DecisionLog{File: "off"}}
		c.Bans.Denials = -1 // every client shares 127.0.0.1, and denials are part of the load
	})
	runtime.GC()
	baseGoroutines := runtime.NumGoroutine()
	var baseMem runtime.MemStats
	runtime.ReadMemStats(&baseMem)

	deadline := time.Now().Add(d + time.Minute)
	type sub struct {
		mu     sync.Mutex
		last   map[int]int    // publisher -> highest sequence received
		got    map[int][]bool // publisher -> sequences received
		gaps   []string
		secret int
	}
	subs := make([]*sub, subscribers)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range subs {
		s := &sub{last: map[int]int{}, got: map[int][]bool{}}
		subs[i] = s
		fc := &faultClient{addr: e.plain, id: "soak-sub-" + strconv.Itoa(i)}
		if err := fc.connect(deadline); err != nil {
			t.Fatal(err)
		}
		filters := []codec.Subscription{{Filter: "ok/soak/#", QoS: byte(1 + i%2)}, {Filter: "secret/#", QoS: 1}}
		if err := fc.send(&codec.Subscribe{PacketID: 1, Subscriptions: filters}); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer fc.conn.Close()
			for {
				p, err := fc.read(200 * time.Millisecond)
				if err != nil {
					if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
						select {
						case <-stop:
							return
						default:
							continue
						}
					}
					fc.conn.Close()
					if fc.connect(deadline) != nil {
						return
					}
					continue
				}
				switch p := p.(type) {
				case *codec.Publish:
					topic := string(p.Topic)
					s.mu.Lock()
					if strings.HasPrefix(topic, "secret/") {
						s.secret++
					} else if pub, err := strconv.Atoi(strings.TrimPrefix(topic, "ok/soak/")); err == nil {
						seq, _ := strconv.Atoi(string(p.Payload))
						prev, seen := s.last[pub]
						switch {
						case !seen && seq != 0, seen && seq > prev+1:
							s.gaps = append(s.gaps, fmt.Sprintf("publisher %d: %d after %d", pub, seq, prev))
						}
						if !seen || seq > prev {
							s.last[pub] = seq
						}
						for len(s.got[pub]) <= seq {
							s.got[pub] = append(s.got[pub], false)
						}
						s.got[pub][seq] = true
					}
					s.mu.Unlock()
					switch p.QoS {
					case 1:
						fc.send(&codec.Ack{PacketType: codec.PUBACK, PacketID: p.PacketID})
					case 2:
						fc.send(&codec.Ack{PacketType: codec.PUBREC, PacketID: p.PacketID})
					}
				case *codec.Ack:
					if p.PacketType == codec.PUBREL {
						fc.send(&codec.Ack{PacketType: codec.PUBCOMP, PacketID: p.PacketID})
					}
				}
			}
		}()
	}

	acked := make([]int, publishers) // highest acknowledged sequence, -1 for none
	var errMu sync.Mutex
	var pubErrs []string
	end := time.Now().Add(d)
	var pwg sync.WaitGroup
	for i := range publishers {
		acked[i] = -1
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			fc := &faultClient{addr: e.plain, id: "soak-pub-" + strconv.Itoa(i)}
			if err := fc.connect(deadline); err != nil {
				errMu.Lock()
				pubErrs = append(pubErrs, err.Error())
				errMu.Unlock()
				return
			}
			defer func() { fc.conn.Close() }()
			qos := byte(1 + i%2)
			id := uint16(0)
			for seq := 0; time.Now().Before(end); {
				id = id%60000 + 1
				topic, payload := "ok/soak/"+strconv.Itoa(i), strconv.Itoa(seq)
				denied := rng.IntN(20) == 0
				if denied {
					topic = "secret/soak"
				}
				ok := fc.send(&codec.Publish{Topic: []byte(topic), QoS: qos, PacketID: id, Payload: []byte(payload)}) == nil
				for ok {
					p, err := fc.read(5 * time.Second)
					if err != nil {
						ok = false
						break
					}
					a, isAck := p.(*codec.Ack)
					if !isAck || a.PacketID != id {
						continue
					}
					if a.PacketType == codec.PUBREC && a.ReasonCode < 0x80 {
						ok = fc.send(&codec.Ack{PacketType: codec.PUBREL, PacketID: id}) == nil
						continue
					}
					if a.PacketType == codec.PUBACK || a.PacketType == codec.PUBCOMP || a.PacketType == codec.PUBREC {
						break
					}
				}
				if !ok {
					fc.conn.Close()
					if fc.connect(deadline) != nil {
						return
					}
					continue // the same message again
				}
				if !denied {
					acked[i] = seq
					seq++
				}
				// Churn: now and then a publisher drops its connection.
				if rng.IntN(200) == 0 {
					fc.conn.Close()
					if fc.connect(deadline) != nil {
						return
					}
				}
				time.Sleep(time.Duration(150+rng.IntN(100)) * time.Millisecond)
			}
		}()
	}
	// The policy reloads under all this.
	reloads := 0
	for tick := time.NewTicker(2 * time.Second); time.Now().Before(end); {
		<-tick.C
		reloads++
		writePolicy(reloads)
		if err := e.srv.Policy().Reload(); err != nil {
			t.Error(err)
		}
	}
	pwg.Wait()
	// Let the last deliveries arrive.
	for wait := time.Now().Add(20 * time.Second); time.Now().Before(wait); time.Sleep(100 * time.Millisecond) {
		done := true
		for _, s := range subs {
			s.mu.Lock()
			for p, a := range acked {
				if a >= 0 && s.last[p] < a {
					done = false
				}
			}
			s.mu.Unlock()
		}
		if done {
			break
		}
	}
	close(stop)
	wg.Wait()
	if len(pubErrs) > 0 {
		t.Fatalf("publishers failed: %v", pubErrs[:min(len(pubErrs), 5)])
	}
	total := 0
	for p, a := range acked {
		total += a + 1
		for i, s := range subs {
			if s.last[p] < a {
				t.Fatalf("subscriber %d has publisher %d up to %d, but %d was acknowledged", i, p, s.last[p], a)
			}
		}
	}
	for i, s := range subs {
		for p, a := range acked {
			for seq := 0; seq <= a; seq++ {
				if seq >= len(s.got[p]) || !s.got[p][seq] {
					t.Fatalf("subscriber %d never received message %d of publisher %d (acknowledged up to %d)", i, seq, p, a)
				}
			}
		}
		if len(s.gaps) > 0 {
			t.Fatalf("subscriber %d received messages out of order: %v", i, s.gaps[:min(len(s.gaps), 5)])
		}
		if s.secret > 0 {
			t.Fatalf("subscriber %d received %d forbidden messages", i, s.secret)
		}
	}
	// Everything let go.
	for wait := time.Now().Add(10 * time.Second); e.srv.Sessions() > 0 && time.Now().Before(wait); {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	runtime.GC()
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	g := runtime.NumGoroutine()
	t.Logf("soak %v: %d clients, %d messages acknowledged (x%d subscribers), %d policy reloads; goroutines %d -> %d, heap %d -> %d KiB",
		d, publishers+subscribers, total, subscribers, reloads, baseGoroutines, g, baseMem.HeapInuse>>10, mem.HeapInuse>>10)
	if e.srv.Sessions() != 0 {
		t.Fatalf("%d sessions still open", e.srv.Sessions())
	}
	if g > baseGoroutines+10 {
		t.Fatalf("goroutines %d, %d at the start", g, baseGoroutines)
	}
	if grown := int64(mem.HeapInuse) - int64(baseMem.HeapInuse); grown > 32<<20 {
		t.Fatalf("heap %d MiB above the start", grown>>20)
	}
}
