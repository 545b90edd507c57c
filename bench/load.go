package main

import (
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/internal/loadgen"
)

// Client ids and topics follow the plant policy's roles: publishers are
// sensor-* and publish under sensors/{id}/, subscribers are dashboard-*.

// throughput is the closed-loop test: pubs publishers each run load l;
// QoS 1 keeps up to l.Window unacknowledged, QoS 0 ends with a PINGREQ
// whose PINGRESP proves the broker has read everything before it. denied
// publishes to a topic the plant policy forbids sensors (commands/...).
func throughput(p *path, v codec.Version, l loadgen.Load, pubs int, denied bool) (sample, error) {
	clients := make([]*loadgen.Client, pubs)
	for i := range clients {
		c, err := loadgen.Dial(p.addr, p.tls, fmt.Sprintf("sensor-tp-%d", i), v)
		if err != nil {
			return sample{}, err
		}
		defer c.Disconnect()
		clients[i] = c
	}
	loads := make([]loadgen.Load, pubs)
	for i := range loads {
		loads[i] = l
		loads[i].Topic = fmt.Sprintf("sensors/sensor-tp-%d/temp", i)
		if denied {
			loads[i].Topic = fmt.Sprintf("commands/valve-%d/close", i)
		}
	}
	if warmUp > 0 && p.proc != nil && p.tls != nil {
		if err := publishAll(clients, loads, time.Now().Add(warmUp)); err != nil {
			return sample{}, fmt.Errorf("warming up: %w", err)
		}
	}
	cpu0, bcpu0, user0 := p.cpu(), p.brokerCPU(), p.userCPU()
	start := time.Now()
	if err := publishAll(clients, loads, time.Time{}); err != nil {
		return sample{}, err
	}
	elapsed := time.Since(start)
	msgs := pubs * l.N
	smp := sample{
		value:    float64(msgs) / elapsed.Seconds(),
		cpuPerOp: perOp(p.cpu()-cpu0, msgs),
		brokerOp: perOp(p.brokerCPU()-bcpu0, msgs),
	}
	if p.proc != nil {
		smp.note = fmt.Sprintf("user %.2f µs/op", perOp(p.userCPU()-user0, msgs))
	}
	return smp, nil
}

// warmUp is how long a throughput run through a proxy's TLS listener
// sends its load before the measured part, on the same connections. Both
// proxies meet the load warm: buffers in use, TCP windows grown, and moat's thread
// controller (package procs) settled on the Ps the load needs, which
// took it 0.8-1.0 s after a load began (its debug log against the runs'
// start times); without it every 1-2 s run began on the spare P an idle
// moat keeps, and measured half the steady state. Plants run continuous
// load: the steady state is what they get. The plain paths, which no
// goal is judged on, go without: warming all of them made a full run
// 9m30s on a busy host, against the 10 minutes it has.
var warmUp = 1250 * time.Millisecond

// publishAll runs loads[i] on clients[i], all at once: once each, or,
// with a deadline, in parts of a twentieth until it has passed.
func publishAll(clients []*loadgen.Client, loads []loadgen.Load, deadline time.Time) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(clients))
	for i, c := range clients {
		l := loads[i]
		if !deadline.IsZero() {
			l.N = max(l.N/20, 1)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if err := loadgen.PublishLoop(c, l); err != nil {
					errs <- err
					return
				}
				if deadline.IsZero() || !time.Now().Before(deadline) {
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func perOp(d time.Duration, n int) float64 {
	if d < 0 || n == 0 {
		return 0
	}
	return float64(d.Microseconds()) / float64(n)
}

// latencySlices is how many turns each path gets in a latency run: 100 ms
// each at the full run's 5 s, so with all five paths a path waits 400 ms
// between turns, under the second after which moat parks a quiet pump.
const latencySlices = 50

// latency is the open-loop test: on every path one publisher sends QoS 0
// messages on a fixed schedule and one subscriber receives them through
// the same path. The paths take turns in slices of dur/latencySlices,
// all connected throughout, so every path meets the same machine: on a
// shared or virtual machine the tail comes mostly from the CPU being
// taken away for milliseconds at a time (steal, in /proc/stat), and
// paths measured one after another for seconds each meet different
// amounts of it. Each message carries its scheduled time and the time it
// was written. A path's latency runs from the write: the generator's own
// lateness (Go timers wake the sender up to a millisecond late, the same
// for every path) is not the path's. Latency from the scheduled time is
// kept too, so a path that pushed back on the sender cannot hide it (no
// coordinated omission).
func latency(ps []*path, v codec.Version, rate int, dur time.Duration) ([]latencyResult, error) {
	per := max(int(float64(rate)*dur.Seconds())/latencySlices, 1) // messages per slice
	n := per * latencySlices                                      // per path
	runs := make([]*latencyRun, 0, len(ps))
	defer func() {
		for _, r := range runs {
			r.close()
		}
	}()
	for _, p := range ps {
		r, err := dialLatency(p, v, n)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		runs = append(runs, r)
	}
	bwait0 := runWait(ps[0].broker.pid())
	box0 := boxTimes()
	start := time.Now()
	deadline := start.Add(time.Duration(len(ps))*dur + 5*time.Second)
	for _, r := range runs {
		go r.receive(start, deadline, v)
	}
	interval := time.Second / time.Duration(rate)
	var sendErr error
	for slot := 0; slot < latencySlices*len(runs) && sendErr == nil; slot++ {
		// One schedule for the whole run: a stall in one slice makes the
		// next start late, from the scheduled time, not afresh.
		r := runs[slot%len(runs)]
		for i := 0; i < per; i++ {
			sched := time.Duration(slot*per+i) * interval
			if d := time.Until(start.Add(sched)); d > 0 {
				time.Sleep(d)
			}
			if sendErr = r.send(sched, time.Since(start)); sendErr != nil {
				break
			}
		}
	}
	out := make([]latencyResult, len(runs))
	for i, r := range runs {
		if sendErr != nil {
			r.sub.Conn.SetReadDeadline(time.Now())
		}
		<-r.done
		l := summarize(r.lat, n)
		l.schedP99 = summarize(r.fromSched, n).p99
		l.all = r.lat // sorted by summarize
		out[i] = l
	}
	if sendErr != nil {
		return nil, sendErr
	}
	// Time the proxy's and the broker's threads sat runnable without a
	// CPU, and the machine's CPU the host took: a tail the proxy's own
	// code does not explain shows up here. A proxy serving two paths (its
	// TLS and plain listeners) waited for the messages of both.
	box := boxTimes().since(box0)
	bwait := perOp(runWait(ps[0].broker.pid())-bwait0, n*len(runs))
	through := map[*proc]int{}
	for _, r := range runs {
		through[r.p.proc] += n
	}
	for i, r := range runs {
		out[i].note = fmt.Sprintf("waited for a CPU per message: proxy %.1f µs, broker %.1f µs; host took %.0f%% of the CPU",
			perOp(r.p.runWait()-r.wait0, through[r.p.proc]), bwait, box.stealPct())
	}
	return out, nil
}

// latencyRun is one path's clients in a latency run.
type latencyRun struct {
	p              *path
	sub, pub       *loadgen.Client
	msg            *codec.Publish
	n              int // messages the publisher sends
	lat, fromSched []time.Duration
	wait0          time.Duration // the proxy's run-queue wait at the start
	done           chan struct{}
}

func dialLatency(p *path, v codec.Version, n int) (*latencyRun, error) {
	pubID := "sensor-lat-" + p.name
	topic := fmt.Sprintf("sensors/%s/%d", pubID, time.Now().UnixNano())
	// -latency-through: the other client may go to the broker directly,
	// to tell which leg a path's tail is on.
	subAddr, subTLS, pubAddr, pubTLS := p.addr, p.tls, p.addr, p.tls
	switch latencyThrough {
	case "publisher":
		subAddr, subTLS = p.directAddr, nil
	case "subscriber":
		pubAddr, pubTLS = p.directAddr, nil
	}
	r := &latencyRun{p: p, n: n, done: make(chan struct{}),
		msg: &codec.Publish{Topic: []byte(topic), Payload: make([]byte, 64)},
		lat: make([]time.Duration, 0, n), fromSched: make([]time.Duration, 0, n)}
	var err error
	if r.sub, err = loadgen.Dial(subAddr, subTLS, "dashboard-lat-"+p.name, v); err != nil {
		return nil, err
	}
	if err := r.sub.Subscribe(topic); err != nil {
		r.sub.Disconnect()
		return nil, err
	}
	if r.pub, err = loadgen.Dial(pubAddr, pubTLS, pubID, v); err != nil {
		r.sub.Disconnect()
		return nil, err
	}
	r.wait0 = p.runWait()
	return r, nil
}

func (r *latencyRun) send(sched, sent time.Duration) error {
	binary.BigEndian.PutUint64(r.msg.Payload, uint64(sched))
	binary.BigEndian.PutUint64(r.msg.Payload[8:], uint64(sent))
	return r.pub.Send(r.msg, true)
}

// receive reads until every message arrived or the deadline passed.
func (r *latencyRun) receive(start, deadline time.Time, v codec.Version) {
	defer close(r.done)
	var pkt codec.Publish
	r.sub.Conn.SetReadDeadline(deadline)
	for len(r.lat) < r.n {
		f, err := r.sub.R.ReadPacket()
		if err != nil {
			return
		}
		if f.Type != codec.PUBLISH || codec.DecodePublish(&pkt, f, v) != nil || len(pkt.Payload) < 16 {
			continue
		}
		now := time.Since(start)
		sched := time.Duration(binary.BigEndian.Uint64(pkt.Payload))
		sent := time.Duration(binary.BigEndian.Uint64(pkt.Payload[8:]))
		r.lat = append(r.lat, now-sent)
		r.fromSched = append(r.fromSched, now-sched)
	}
}

func (r *latencyRun) close() {
	r.pub.Disconnect()
	r.sub.Disconnect()
}

type latencyResult struct {
	p50, p99, p999 time.Duration // from the write
	schedP99       time.Duration // from the scheduled time
	lost           int
	note           string
	all            []time.Duration // every latency from the write, sorted
}

func summarize(lat []time.Duration, sent int) latencyResult {
	if len(lat) == 0 {
		return latencyResult{lost: sent}
	}
	slices.Sort(lat)
	return latencyResult{p50: quantile(lat, 0.50), p99: quantile(lat, 0.99), p999: quantile(lat, 0.999), lost: sent - len(lat)}
}

// quantile of sorted, non-empty lat.
func quantile(lat []time.Duration, f float64) time.Duration {
	return lat[min(len(lat)-1, int(f*float64(len(lat))))]
}

// fanout: one publisher, subs subscribers, all through the path; the rate
// is deliveries per second until every subscriber has every message.
func fanout(p *path, v codec.Version, subs, n int) (sample, error) {
	topic := fmt.Sprintf("sensors/sensor-fan/%s-%d", p.name, time.Now().UnixNano())
	var (
		wg       sync.WaitGroup
		received atomic.Int64
		clients  []*loadgen.Client
	)
	for i := 0; i < subs; i++ {
		c, err := loadgen.Dial(p.addr, p.tls, fmt.Sprintf("dashboard-fan-%d", i), v)
		if err != nil {
			return sample{}, err
		}
		defer c.Disconnect()
		if err := c.Subscribe(topic); err != nil {
			return sample{}, err
		}
		clients = append(clients, c)
	}
	pub, err := loadgen.Dial(p.addr, p.tls, "sensor-fan", v)
	if err != nil {
		return sample{}, err
	}
	defer pub.Disconnect()
	cpu0 := p.cpu()
	start := time.Now()
	for _, c := range clients {
		wg.Add(1)
		go func(c *loadgen.Client) {
			defer wg.Done()
			c.Conn.SetReadDeadline(time.Now().Add(60 * time.Second))
			for got := 0; got < n; {
				f, err := c.R.ReadPacket()
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
		if err := pub.Send(msg, false); err != nil {
			return sample{}, err
		}
	}
	pub.W.Flush()
	wg.Wait()
	elapsed := time.Since(start)
	if got := received.Load(); got != int64(subs*n) {
		return sample{}, fmt.Errorf("fan-out delivered %d of %d messages", got, subs*n)
	}
	return sample{value: float64(subs*n) / elapsed.Seconds(), cpuPerOp: perOp(p.cpu()-cpu0, subs*n)}, nil
}

// stormSlices is how many turns each path gets in a connection storm: 300
// ms each at 3 s per path.
const stormSlices = 10

// stormSettle is how long a turn waits after its workers' last
// connections, for the proxy to finish closing them, before its CPU is read.
const stormSettle = 20 * time.Millisecond

// stormTurn is one path's share of a storm, added up over its turns.
type stormTurn struct {
	p              *path
	tc             *tls.Config
	count, failed  atomic.Int64
	stages         [3]atomic.Int64 // ns: TCP connect, TLS handshake, CONNECT to CONNACK
	elapsed        time.Duration
	cpu, bcpu, gen time.Duration
	box            box
}

// storm is the connection storm: on every path, workers loop CONNECT,
// CONNACK, DISCONNECT on new connections (new client ids, so nothing is
// cached), with a full TLS handshake each time or, with resume, a resumed
// session. As in latency, the paths take turns, in slices of
// dur/stormSlices, so each repetition's paths meet the same machine: a
// storm is bound by the whole box's CPU, and the host's share of it
// moved the per-repetition ratio between 0.82 and 1.32 while the paths
// ran one after another for 3 s each. A turn runs until its workers'
// connections in flight are done; the proxy's and the broker's CPU are
// read at its ends, so a proxy serving two paths is charged each one's.
func storm(ps []*path, v codec.Version, resume bool, workers int, dur time.Duration) ([]sample, error) {
	turns := make([]*stormTurn, len(ps))
	for i, p := range ps {
		t := &stormTurn{p: p}
		if p.tls != nil {
			t.tc = p.tls.Clone()
			t.tc.ClientSessionCache = nil
			if resume {
				t.tc.ClientSessionCache = tls.NewLRUClientSessionCache(workers * 2)
			}
		}
		turns[i] = t
	}
	slice := dur / stormSlices
	var seq atomic.Int64 // client ids stay new across turns
	for k := 0; k < stormSlices*len(turns); k++ {
		turns[k%len(turns)].run(v, workers, slice, &seq)
	}
	out := make([]sample, len(turns))
	for i, t := range turns {
		n := int(t.count.Load())
		if n == 0 {
			return nil, fmt.Errorf("%s: no connection completed", t.p.name)
		}
		s := sample{value: float64(n) / t.elapsed.Seconds(), cpuPerOp: perOp(t.cpu, n), brokerOp: perOp(t.bcpu, n)}
		// The rest of the box, per connection: a storm is bound by all of it.
		s.note = fmt.Sprintf("broker %.0f µs/op, generator %.0f µs/op", s.brokerOp, perOp(t.gen, n))
		// A box with idle time left is not what bounds the storm.
		if t.box.total > 0 {
			s.note += fmt.Sprintf(", box %.0f%% idle, host took %.0f%%", t.box.idlePct(), t.box.stealPct())
		}
		// Where each worker's cycle went, as the client saw it (means).
		mean := func(a *atomic.Int64) float64 { return float64(a.Load()) / float64(n) / 1e3 }
		s.note += fmt.Sprintf("; client: connect %.0f µs, handshake %.0f µs, CONNACK %.0f µs", mean(&t.stages[0]), mean(&t.stages[1]), mean(&t.stages[2]))
		if f := t.failed.Load(); f > 0 {
			s.note += fmt.Sprintf(", %d failed", f)
		}
		out[i] = s
	}
	return out, nil
}

// run is one turn: workers connect for d, then the turn waits for their
// last connections and the proxy's closing.
func (t *stormTurn) run(v codec.Version, workers int, d time.Duration, seq *atomic.Int64) {
	p := t.p
	cpu0, bcpu0, gen0 := p.cpu(), p.brokerCPU(), selfCPU()
	box0 := boxTimes()
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				con := &codec.Connect{Version: v, CleanStart: true, ClientID: fmt.Sprintf("sensor-storm-%d", seq.Add(1)), KeepAlive: 300}
				c, st, err := loadgen.DialStages(p.addr, t.tc, con)
				if err != nil {
					t.failed.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				c.Disconnect()
				t.count.Add(1)
				t.stages[0].Add(int64(st.Dial))
				t.stages[1].Add(int64(st.Handshake))
				t.stages[2].Add(int64(st.Connack))
			}
		}()
	}
	wg.Wait()
	t.elapsed += time.Since(start)
	t.box = t.box.add(boxTimes().since(box0)) // the settling is idle by design
	time.Sleep(stormSettle)
	t.cpu += p.cpu() - cpu0
	t.bcpu += p.brokerCPU() - bcpu0
	t.gen += selfCPU() - gen0
}

// idle opens n connections through the path and holds them; it returns
// them for the caller to measure and close.
func idle(p *path, v codec.Version, n int) ([]*loadgen.Client, error) {
	var (
		mu      sync.Mutex
		clients = make([]*loadgen.Client, 0, n)
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
				c, err := loadgen.Dial(p.addr, p.tls, fmt.Sprintf("sensor-idle-%d", i), v)
				mu.Lock()
				if err != nil {
					if firstEr == nil {
						firstEr = err
					}
				} else {
					// Idle clients keep no buffers of their own either.
					c.W = nil
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

// latencyThrough is which of the latency test's clients go through the
// path (-latency-through): both, or only the publisher or the subscriber.
var latencyThrough = "both"
