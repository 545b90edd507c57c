package e2e

import (
	"crypto/tls"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
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
