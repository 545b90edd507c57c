package e2e

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/loadgen"
)

// The end-to-end load comparison: QoS 1 PUBLISH acknowledged by Mosquitto,
// straight to the broker and through moat's TCP and TLS listeners, in the
// same run. Each publisher keeps a window of messages in flight.
//
//	go test -run '^$' -bench QoS1Publish -benchtime 200000x -count 5 ./test
const (
	loadPublishers = 4
	loadWindow     = 64
	loadPayload    = 64
)

func BenchmarkQoS1Publish(b *testing.B) {
	e := newEnv(b, nil)
	paths := []struct {
		name string
		addr string
		tls  *tls.Config
	}{
		{"direct", e.broker.Addr, nil},
		{"moat-tcp", e.plain, nil},
		{"moat-tls", e.tls, e.tlsConfig("")},
	}
	for _, p := range paths {
		b.Run(p.name, func(b *testing.B) {
			per := max(b.N/loadPublishers, 1)
			clients := make([]*loadgen.Client, loadPublishers)
			for i := range clients {
				c, err := loadgen.Dial(p.addr, p.tls, fmt.Sprintf("load-%s-%d", p.name, i), codec.V311)
				if err != nil {
					b.Fatal(err)
				}
				defer c.Disconnect()
				clients[i] = c
			}
			b.SetBytes(loadPayload)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for _, c := range clients {
				wg.Add(1)
				go func(c *loadgen.Client) {
					defer wg.Done()
					if err := loadgen.PublishLoop(c, loadgen.Load{QoS: 1, Size: loadPayload, N: per, Window: loadWindow}); err != nil {
						b.Error(err)
					}
				}(c)
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(per*loadPublishers)/elapsed.Seconds(), "msg/s")
		})
	}
}

// BenchmarkConnect is one client's CONNECT/CONNACK/DISCONNECT through
// moat's plain listener, without a policy and with the plant policy (one
// uncached connect decision per connection).
//
//	go test -run '^$' -bench Connect -benchtime 3000x -count 3 ./test
func BenchmarkConnect(b *testing.B) {
	for _, pol := range []string{"allow_all", "plant"} {
		b.Run(pol, func(b *testing.B) {
			e := newEnv(b, func(c *config.Config) {
				if pol == "plant" {
					c.Policy = plantForAnonymous(b)
				}
			})
			for i := 0; b.Loop(); i++ {
				c, err := loadgen.Dial(e.plain, nil, fmt.Sprintf("sensor-c-%d", i), codec.V311)
				if err != nil {
					b.Fatal(err)
				}
				c.Disconnect()
			}
		})
	}
}

// plantForAnonymous is the plant policy with anonymous clients taking
// their client id as identity, as the load harness runs it.
func plantForAnonymous(t testing.TB) *config.Policy {
	dir := t.TempDir()
	id := "package moat.authz\nimport rego.v1\nidentity := input.client.id if input.client.auth_method == \"anonymous\"\n"
	if err := os.WriteFile(filepath.Join(dir, "identity.rego"), []byte(id), 0o600); err != nil {
		t.Fatal(err)
	}
	return &config.Policy{Mode: config.ModeEnforce, Paths: []string{"../policies/plant/plant.rego", dir},
		WatchInterval: config.OptDuration{Set: true}, DecisionLog: config.DecisionLog{File: "off"}}
}
