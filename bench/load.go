package main

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moat-mqtt/moat/codec"
)

// client is a minimal MQTT client for load: raw packets, buffered writes.
type client struct {
	conn net.Conn
	r    *codec.Reader
	w    *bufio.Writer
	v    codec.Version
	buf  []byte
}

func dialClient(addr string, tc *tls.Config, id string, v codec.Version) (*client, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	var (
		conn net.Conn
		err  error
	)
	if tc != nil {
		conn, err = tls.DialWithDialer(d, "tcp", addr, tc)
	} else {
		conn, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	c := &client{conn: conn, r: codec.NewReader(conn, 0), w: bufio.NewWriterSize(conn, 32<<10), v: v}
	if err := c.send(&codec.Connect{Version: v, CleanStart: true, ClientID: id, KeepAlive: 300}, true); err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := c.r.ReadPacket()
	conn.SetReadDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("CONNACK for %s: %w", id, err)
	}
	if f.Type != codec.CONNACK || f.Body[1] != 0 {
		conn.Close()
		return nil, fmt.Errorf("CONNECT %s refused: % x", id, f.Bytes)
	}
	return c, nil
}

func (c *client) send(p codec.Packet, flush bool) error {
	var err error
	if c.buf, err = p.Append(c.buf[:0], c.v); err != nil {
		return err
	}
	if _, err := c.w.Write(c.buf); err != nil {
		return err
	}
	if flush {
		return c.w.Flush()
	}
	return nil
}

// expect reads until a packet of type t arrives.
func (c *client) expect(t codec.PacketType, timeout time.Duration) (codec.Frame, error) {
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	defer c.conn.SetReadDeadline(time.Time{})
	for {
		f, err := c.r.ReadPacket()
		if err != nil {
			return f, err
		}
		if f.Type == t {
			return f, nil
		}
	}
}

func (c *client) subscribe(filter string) error {
	if err := c.send(&codec.Subscribe{PacketID: 1, Subscriptions: []codec.Subscription{{Filter: filter}}}, true); err != nil {
		return err
	}
	_, err := c.expect(codec.SUBACK, 10*time.Second)
	return err
}

func (c *client) disconnect() {
	c.send(&codec.Disconnect{}, true)
	c.conn.Close()
}

// throughput is the closed-loop test: pubs publishers each send n messages
// of size bytes; QoS 1 keeps up to window unacknowledged, QoS 0 ends with a
// PINGREQ whose PINGRESP proves the broker has read everything before it.
func throughput(p *path, v codec.Version, qos byte, size, pubs, n, window int) (sample, error) {
	clients := make([]*client, pubs)
	for i := range clients {
		c, err := dialClient(p.addr, p.tls, fmt.Sprintf("tp-%d", i), v)
		if err != nil {
			return sample{}, err
		}
		defer c.disconnect()
		clients[i] = c
	}
	cpu0, bcpu0 := p.cpu(), p.brokerCPU()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, pubs)
	for _, c := range clients {
		wg.Add(1)
		go func(c *client) {
			defer wg.Done()
			if err := publishLoop(c, qos, size, n, window); err != nil {
				errs <- err
			}
		}(c)
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return sample{}, err
	}
	msgs := pubs * n
	return sample{
		value:    float64(msgs) / elapsed.Seconds(),
		cpuPerOp: perOp(p.cpu()-cpu0, msgs),
		brokerOp: perOp(p.brokerCPU()-bcpu0, msgs),
	}, nil
}

func perOp(d time.Duration, n int) float64 {
	if d < 0 || n == 0 {
		return 0
	}
	return float64(d.Microseconds()) / float64(n)
}

func publishLoop(c *client, qos byte, size, n, window int) error {
	pub := &codec.Publish{QoS: qos, Topic: []byte("bench/plant1/zone3/temp"), Payload: make([]byte, size)}
	if qos == 0 {
		for i := 0; i < n; i++ {
			if err := c.send(pub, false); err != nil {
				return err
			}
		}
		if err := c.send(&codec.Ping{PacketType: codec.PINGREQ}, true); err != nil {
			return err
		}
		_, err := c.expect(codec.PINGRESP, 60*time.Second)
		return err
	}
	slots := make(chan struct{}, window)
	for i := 0; i < window; i++ {
		slots <- struct{}{}
	}
	done := make(chan error, 1)
	go func() {
		for acked := 0; acked < n; {
			f, err := c.expect(codec.PUBACK, 60*time.Second)
			if err != nil {
				done <- fmt.Errorf("after %d of %d acks: %w", acked, n, err)
				return
			}
			_ = f
			acked++
			slots <- struct{}{}
		}
		done <- nil
	}()
	for i := 0; i < n; i++ {
		select {
		case <-slots:
		default:
			if err := c.w.Flush(); err != nil {
				return err
			}
			select {
			case <-slots:
			case err := <-done:
				return fmt.Errorf("acknowledgements stopped: %v", err)
			}
		}
		pub.PacketID = uint16(i%65535 + 1)
		if err := c.send(pub, false); err != nil {
			return err
		}
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	return <-done
}

// latency is the open-loop test: one publisher sends QoS 0 messages on a
// fixed schedule, one subscriber receives them through the same path;
// latency runs from each message's scheduled time, so a stalled sender
// cannot hide delay (no coordinated omission).
func latency(p *path, v codec.Version, rate int, dur time.Duration) (latencyResult, error) {
	topic := fmt.Sprintf("lat/%s/%d", p.name, time.Now().UnixNano())
	sub, err := dialClient(p.addr, p.tls, "lat-sub", v)
	if err != nil {
		return latencyResult{}, err
	}
	defer sub.disconnect()
	if err := sub.subscribe(topic); err != nil {
		return latencyResult{}, err
	}
	pub, err := dialClient(p.addr, p.tls, "lat-pub", v)
	if err != nil {
		return latencyResult{}, err
	}
	defer pub.disconnect()

	n := int(float64(rate) * dur.Seconds())
	lat := make([]time.Duration, 0, n)
	start := time.Now()
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		var pkt codec.Publish
		sub.conn.SetReadDeadline(start.Add(dur + 5*time.Second))
		for len(lat) < n {
			f, err := sub.r.ReadPacket()
			if err != nil {
				return
			}
			if f.Type != codec.PUBLISH || codec.DecodePublish(&pkt, f, v) != nil || len(pkt.Payload) < 8 {
				continue
			}
			sched := time.Duration(binary.BigEndian.Uint64(pkt.Payload))
			lat = append(lat, time.Since(start)-sched)
		}
	}()
	msg := &codec.Publish{Topic: []byte(topic), Payload: make([]byte, 64)}
	interval := time.Second / time.Duration(rate)
	for i := 0; i < n; i++ {
		sched := time.Duration(i) * interval
		if d := time.Until(start.Add(sched)); d > 0 {
			time.Sleep(d)
		}
		binary.BigEndian.PutUint64(msg.Payload, uint64(sched))
		if err := pub.send(msg, true); err != nil {
			return latencyResult{}, err
		}
	}
	<-recvDone
	return summarize(lat, n), nil
}

type latencyResult struct {
	p50, p99, p999 time.Duration
	lost           int
}

func summarize(lat []time.Duration, sent int) latencyResult {
	if len(lat) == 0 {
		return latencyResult{lost: sent}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(f float64) time.Duration { return lat[min(len(lat)-1, int(f*float64(len(lat))))] }
	return latencyResult{p50: q(0.50), p99: q(0.99), p999: q(0.999), lost: sent - len(lat)}
}

// fanout: one publisher, subs subscribers, all through the path; the rate
// is deliveries per second until every subscriber has every message.
func fanout(p *path, v codec.Version, subs, n int) (sample, error) {
	topic := fmt.Sprintf("fan/%s/%d", p.name, time.Now().UnixNano())
	var (
		wg       sync.WaitGroup
		received atomic.Int64
		clients  []*client
	)
	for i := 0; i < subs; i++ {
		c, err := dialClient(p.addr, p.tls, fmt.Sprintf("fan-%d", i), v)
		if err != nil {
			return sample{}, err
		}
		defer c.disconnect()
		if err := c.subscribe(topic); err != nil {
			return sample{}, err
		}
		clients = append(clients, c)
	}
	pub, err := dialClient(p.addr, p.tls, "fan-pub", v)
	if err != nil {
		return sample{}, err
	}
	defer pub.disconnect()
	cpu0 := p.cpu()
	start := time.Now()
	for _, c := range clients {
		wg.Add(1)
		go func(c *client) {
			defer wg.Done()
			c.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
			for got := 0; got < n; {
				f, err := c.r.ReadPacket()
				if err != nil {
					return
				}
				if f.Type == codec.PUBLISH {
					got++
					received.Add(1)
				}
			}
		}(c)
	}
	msg := &codec.Publish{Topic: []byte(topic), Payload: make([]byte, 64)}
	for i := 0; i < n; i++ {
		if err := pub.send(msg, false); err != nil {
			return sample{}, err
		}
	}
	pub.w.Flush()
	wg.Wait()
	elapsed := time.Since(start)
	if got := received.Load(); got != int64(subs*n) {
		return sample{}, fmt.Errorf("fan-out delivered %d of %d messages", got, subs*n)
	}
	return sample{value: float64(subs*n) / elapsed.Seconds(), cpuPerOp: perOp(p.cpu()-cpu0, subs*n)}, nil
}

// storm: workers loop over dial (full or resumed TLS handshake), CONNECT,
// CONNACK, DISCONNECT, close, for dur.
func storm(p *path, v codec.Version, resume bool, workers int, dur time.Duration) (sample, error) {
	var tc *tls.Config
	if p.tls != nil {
		tc = p.tls.Clone()
		tc.ClientSessionCache = nil
		if resume {
			tc.ClientSessionCache = tls.NewLRUClientSessionCache(workers * 2)
		}
	}
	var (
		count  atomic.Int64
		failed atomic.Int64
		wg     sync.WaitGroup
	)
	cpu0 := p.cpu()
	start := time.Now()
	deadline := start.Add(dur)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				c, err := dialClient(p.addr, tc, fmt.Sprintf("storm-%d-%d", w, i), v)
				if err != nil {
					failed.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				c.disconnect()
				count.Add(1)
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	n := int(count.Load())
	if n == 0 {
		return sample{}, errors.New("no connection completed")
	}
	s := sample{value: float64(n) / elapsed.Seconds(), cpuPerOp: perOp(p.cpu()-cpu0, n)}
	if f := failed.Load(); f > 0 {
		s.note = fmt.Sprintf("%d failed", f)
	}
	return s, nil
}

// idle opens n connections through the path and holds them; it returns
// them for the caller to measure and close.
func idle(p *path, v codec.Version, n int) ([]*client, error) {
	var (
		mu      sync.Mutex
		clients = make([]*client, 0, n)
		next    atomic.Int64
		firstEr error
		wg      sync.WaitGroup
	)
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				c, err := dialClient(p.addr, p.tls, fmt.Sprintf("idle-%d", i), v)
				mu.Lock()
				if err != nil {
					if firstEr == nil {
						firstEr = err
					}
				} else {
					// Idle clients keep no buffers of their own either.
					c.w = nil
					clients = append(clients, c)
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	return clients, firstEr
}
