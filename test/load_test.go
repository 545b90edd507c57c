package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
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
			per := b.N / loadPublishers
			if per == 0 {
				per = 1
			}
			conns := make([]net.Conn, loadPublishers)
			for i := range conns {
				conns[i] = dialPublisher(b, p.addr, p.tls, fmt.Sprintf("load-%s-%d", p.name, i))
			}
			b.SetBytes(loadPayload)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for _, c := range conns {
				wg.Add(1)
				go func(c net.Conn) {
					defer wg.Done()
					if err := publishWindowed(c, per); err != nil {
						b.Error(err)
					}
				}(c)
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(per*loadPublishers)/elapsed.Seconds(), "msg/s")
			for _, c := range conns {
				c.Close()
			}
		})
	}
}

func dialPublisher(b *testing.B, addr string, tc *tls.Config, id string) net.Conn {
	var (
		c   net.Conn
		err error
	)
	if tc != nil {
		c, err = tls.Dial("tcp", addr, tc)
	} else {
		c, err = net.Dial("tcp", addr)
	}
	if err != nil {
		b.Fatal(err)
	}
	connect, _ := (&codec.Connect{Version: codec.V311, CleanStart: true, ClientID: id, KeepAlive: 60}).Append(nil, codec.V311)
	if _, err := c.Write(connect); err != nil {
		b.Fatal(err)
	}
	r := codec.NewReader(c, 0)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := r.ReadPacket()
	if err != nil || f.Type != codec.CONNACK || f.Body[1] != 0 {
		b.Fatalf("connect %s: %v %v", id, f.Type, err)
	}
	c.SetReadDeadline(time.Time{})
	return c
}

// publishWindowed sends n QoS 1 messages keeping up to loadWindow
// unacknowledged, and returns when all are acknowledged.
func publishWindowed(c net.Conn, n int) error {
	slots := make(chan struct{}, loadWindow)
	for i := 0; i < loadWindow; i++ {
		slots <- struct{}{}
	}
	errc := make(chan error, 1)
	go func() {
		r := codec.NewReader(c, 0)
		for acked := 0; acked < n; {
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			f, err := r.ReadPacket()
			if err != nil {
				errc <- fmt.Errorf("after %d acks: %w", acked, err)
				return
			}
			if f.Type == codec.PUBACK {
				acked++
				slots <- struct{}{}
			}
		}
		errc <- nil
	}()
	w := bufio.NewWriterSize(c, 32<<10)
	p := &codec.Publish{QoS: 1, Topic: []byte("load/plant1/zone3/temp"), Payload: make([]byte, loadPayload)}
	buf := make([]byte, 0, 256)
	for i := 0; i < n; i++ {
		select {
		case <-slots:
		default:
			if err := w.Flush(); err != nil {
				return err
			}
			select {
			case <-slots:
			case err := <-errc:
				return fmt.Errorf("reader stopped: %v", err)
			}
		}
		p.PacketID = uint16(i%65535 + 1)
		buf, _ = p.Append(buf[:0], codec.V311)
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return <-errc
}
