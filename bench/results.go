package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/proxy"
)

var pathOrder = []string{"direct", "haproxy-tls", "moat-tls", "haproxy-tcp", "moat-tcp"}

type results struct {
	o         options
	order     []string                       // scenario names in first-seen order
	samples   map[string]map[string][]sample // scenario -> path -> samples
	gor       map[string]float64             // goroutines per connection by transport
	idleLimit int                            // the open-file limit that capped the idle test; 0: none did
	elapsed   time.Duration
}

func newResults(o options) *results {
	return &results{o: o, samples: map[string]map[string][]sample{}, gor: map[string]float64{}}
}

func (r *results) add(scn, path string, s sample) {
	if r.samples[scn] == nil {
		r.samples[scn] = map[string][]sample{}
		r.order = append(r.order, scn)
	}
	r.samples[scn][path] = append(r.samples[scn][path], s)
}

type stat struct{ med, lo, hi float64 }

func stats(xs []float64) (stat, bool) {
	if len(xs) == 0 {
		return stat{}, false
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return stat{med: median(s), lo: s[0], hi: s[len(s)-1]}, true
}

// median of sorted, non-empty s: with an even count, the mean of the
// middle two (taking the upper one would favour whichever path is noisier
// upward).
func median(s []float64) float64 {
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + m) / 2
	}
	return m
}

func (r *results) values(scn, path string, f func(sample) float64) (stat, bool) {
	var xs []float64
	for _, s := range r.samples[scn][path] {
		xs = append(xs, f(s))
	}
	return stats(xs)
}

func value(s sample) float64 { return s.value }
func cpuOp(s sample) float64 { return s.cpuPerOp }

func fmtNum(x float64) string {
	switch {
	case x >= 1000:
		return fmt.Sprintf("%.0f", x)
	case x >= 10:
		return fmt.Sprintf("%.1f", x)
	}
	return fmt.Sprintf("%.2f", x)
}

func fmtStat(st stat, ok bool) string {
	if !ok {
		return "—"
	}
	if st.lo == st.hi {
		return fmtNum(st.med)
	}
	return fmt.Sprintf("%s (%s–%s)", fmtNum(st.med), fmtNum(st.lo), fmtNum(st.hi))
}

func ratio(a, b stat, okA, okB bool) string {
	if !okA || !okB || b.med == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", a.med/b.med)
}

// summary prints each scenario's medians for every path that ran, the
// -compare paths included (the markdown tables have fixed columns).
func (r *results) summary(w io.Writer, paths []*path) {
	for _, scn := range r.order {
		for _, p := range paths {
			v, ok := r.values(scn, p.name, value)
			if !ok {
				continue
			}
			c, _ := r.values(scn, p.name, cpuOp)
			fmt.Fprintf(w, "median %-36s %-12s %12s  cpu/op %s µs\n", scn, p.name, fmtStat(v, true), fmtStat(c, true))
		}
	}
}

// goroutinesPerConn counts goroutines per idle connection in process.
func goroutinesPerConn(s *setup, r *results) error {
	for _, transport := range []string{"tcp", "tls"} {
		l := config.Listener{Name: "l", Address: "127.0.0.1:0", Transport: transport}
		if transport == "tls" {
			l.TLS = &config.ServerTLS{CertFile: s.cert, KeyFile: s.key}
		}
		cfg := &config.Config{Listeners: []config.Listener{l}, Upstream: config.Upstream{Address: s.brokerAd}, Auth: config.Auth{Anonymous: true},
			Limits: config.Limits{Connections: config.ConnectionLimits{PerAddressPerSecond: -1, PerAddress: -1, PerSecond: -1, Max: -1}},
			Policy: &config.Policy{Mode: config.ModeAllowAll}}
		if err := cfg.Validate(); err != nil {
			return err
		}
		srv, err := proxy.New(cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			return err
		}
		if err := srv.Start(); err != nil {
			return err
		}
		p := &path{name: "in-process", addr: srv.Addr("l").String(), broker: s.broker}
		if transport == "tls" {
			p.tls = s.clientTLS()
		}
		const n = 200
		runtime.GC()
		before := runtime.NumGoroutine()
		clients, err := idle(p, codec.V311, n)
		time.Sleep(1500 * time.Millisecond) // past moat's idleAfter
		// The harness's own clients start no goroutines once connected.
		after := runtime.NumGoroutine()
		for _, c := range clients {
			c.Conn.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		srv.Shutdown(ctx)
		cancel()
		if err != nil {
			return err
		}
		r.gor[transport] = float64(after-before) / n
	}
	return nil
}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				model = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	first := func(name string, args ...string) string {
		out, _ := exec.Command(name, args...).CombinedOutput()
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	mbin, _ := lookBin("mosquitto")
	hbin, _ := lookBin("haproxy")
	return fmt.Sprintf("%d CPUs (%s), Linux %s, %s, %s, %s", runtime.NumCPU(), model, strings.TrimSpace(string(kernel)),
		runtime.Version(), first(mbin, "-h"), first(hbin, "-v"))
}

func (r *results) markdown() string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	cmd := "go run ./bench " + strings.Join(os.Args[1:], " ")
	w("## Side-by-side load harness\n\n")
	w("Run %s, `%s`, took %s.\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), strings.TrimSpace(cmd), r.elapsed.Round(time.Second))
	w("Machine: %s. Load generator, proxies and Mosquitto share the cores; all traffic on loopback.\n\n", machine())
	w("Paths: `direct` is the load generator straight to Mosquitto; `haproxy-tls` / `moat-tls` terminate the same TLS\n")
	w("(same ECDSA P-256 certificate, TLS 1.3) and forward in plain TCP; `haproxy-tcp` / `moat-tcp` are their plain listeners.\n")
	if r.o.policy == "plant" {
		w("moat enforces the plant example policy (policies/plant, decision cache on; the harness's anonymous clients take their\n")
		w("client id as identity: publishers are sensor-*, subscribers dashboard-*) on every publish, subscription and delivery,\n")
		w("and decodes and validates every packet both ways, with rate and connection limits on but set too high to throttle.\n")
		w("\"write each\" writes every packet on its own, as paho and libmosquitto do (under TLS, one record per packet);\n")
		w("\"new topic each\" misses the decision cache on every message;\n")
		w("\"denied\" publishes where sensors may not (moat answers each PUBLISH itself and logs the denial; the other paths forward).\n")
	} else {
		w("moat runs with `policy: %s` and decodes and validates every packet both ways.\n", r.o.policy)
	}
	w("Each cell is the median, with min–max,\n")
	w("of %d run(s), variants interleaved", r.o.reps)
	if r.o.goalReps > r.o.reps {
		w("; the measurements the goals are judged on (QoS 1 64 B, write each, latency 5000 msg/s, full handshakes)\n")
		w("through the TLS paths, of %d", r.o.goalReps)
	}
	w(". In the connection storms the paths take turns in %d slices each, so a repetition's paths meet the same machine.", stormSlices)
	if warmUp > 0 {
		w(" Each throughput run through a TLS listener first sends its load for %s on the same connections, unmeasured, so\n", warmUp)
		w("both proxies are measured in the steady state a continuous load meets (the plain paths are not warmed up).")
	}
	w(" Protocol of the load: MQTT %s.\n\n", codec.Version(r.o.version))

	w("| measurement | unit | %s | moat-tls / haproxy-tls | moat-tls / direct |\n", strings.Join(pathOrder, " | "))
	w("|---|---|%s---:|---:|\n", strings.Repeat("---:|", len(pathOrder)))
	for _, scn := range r.order {
		if strings.HasPrefix(scn, "idle") {
			continue
		}
		unit := "msg/s"
		switch {
		case strings.HasPrefix(scn, "latency"):
			unit = "p99 µs"
		case strings.HasPrefix(scn, "fan-out"):
			unit = "deliveries/s"
		case strings.HasPrefix(scn, "connections"):
			unit = "conn/s"
		}
		w("| %s | %s |", scn, unit)
		for _, p := range pathOrder {
			st, ok := r.values(scn, p, value)
			w(" %s |", fmtStat(st, ok))
		}
		m, okm := r.values(scn, "moat-tls", value)
		h, okh := r.values(scn, "haproxy-tls", value)
		d, okd := r.values(scn, "direct", value)
		w(" %s | %s |\n", ratio(m, h, okm, okh), ratio(m, d, okm, okd))
	}

	w("\nProxy CPU time per operation, µs (from /proc/PID/stat, all threads; 10 ms tick resolution):\n\n")
	w("| measurement | haproxy-tls | moat-tls | moat / haproxy | haproxy-tcp | moat-tcp | moat / haproxy |\n|---|---:|---:|---:|---:|---:|---:|\n")
	for _, scn := range r.order {
		if strings.HasPrefix(scn, "idle") || strings.HasPrefix(scn, "latency") {
			continue
		}
		ht, okht := r.values(scn, "haproxy-tls", cpuOp)
		mt, okmt := r.values(scn, "moat-tls", cpuOp)
		hp, okhp := r.values(scn, "haproxy-tcp", cpuOp)
		mp, okmp := r.values(scn, "moat-tcp", cpuOp)
		w("| %s | %s | %s | %s | %s | %s | %s |\n", scn, fmtStat(ht, okht), fmtStat(mt, okmt), ratio(mt, ht, okmt, okht),
			fmtStat(hp, okhp), fmtStat(mp, okmp), ratio(mp, hp, okmp, okhp))
	}

	w("\nOpen-loop latency publisher -> broker -> subscriber, both through the path (µs, medians over runs; within a run the\n")
	w("paths take turns in %d slices each, all connected throughout, so they meet the same machine), from the\n", latencySlices)
	w("publisher's write; the last column is p99 from each message's scheduled time, which adds the load generator's\n")
	w("own lateness (its timers wake up to a millisecond late) and would show a path that pushed back on the sender:\n\n")
	w("| rate | path | p50 | p99 | p99.9 | lost | p99 from schedule | p99 of all runs' messages |\n|---|---|---:|---:|---:|---:|---:|---:|\n")
	for _, scn := range r.order {
		if !strings.HasPrefix(scn, "latency") {
			continue
		}
		for _, p := range pathOrder {
			ss := r.samples[scn][p]
			if len(ss) == 0 {
				continue
			}
			pick := func(f func(latencyResult) float64) string {
				var xs []float64
				for _, s := range ss {
					xs = append(xs, f(s.lat))
				}
				st, _ := stats(xs)
				return fmtNum(st.med)
			}
			pooled, _ := r.pooledP99(scn, p)
			w("| %s | %s | %s | %s | %s | %s | %s | %s |\n", strings.TrimPrefix(scn, "latency "), p,
				pick(func(l latencyResult) float64 { return float64(l.p50.Microseconds()) }),
				pick(func(l latencyResult) float64 { return float64(l.p99.Microseconds()) }),
				pick(func(l latencyResult) float64 { return float64(l.p999.Microseconds()) }),
				pick(func(l latencyResult) float64 { return float64(l.lost) }),
				pick(func(l latencyResult) float64 { return float64(l.schedP99.Microseconds()) }),
				fmtNum(float64(pooled.Microseconds())))
		}
	}

	w("\nIdle connections: RSS growth per connection on a fresh proxy process, KiB:\n\n")
	w("| connections | moat-tls | haproxy-tls | moat-tcp | haproxy-tcp |\n|---|---:|---:|---:|---:|\n")
	for _, scn := range r.order {
		if !strings.HasPrefix(scn, "idle") {
			continue
		}
		w("| %s |", strings.TrimSuffix(strings.TrimPrefix(scn, "idle memory "), " connections"))
		for _, p := range []string{"moat-tls", "haproxy-tls", "moat-tcp", "haproxy-tcp"} {
			st, ok := r.values(scn, p, value)
			w(" %s |", fmtStat(st, ok))
		}
		w("\n")
	}
	w("\nGoroutines per idle connection in moat: %.2f (TCP), %.2f (TLS).\n", r.gor["tcp"], r.gor["tls"])
	if r.idleLimit > 0 {
		w("The machine's open-file limit (hard limit %d) caps the idle test below %d connections: each proxy\n", r.idleLimit, maxIdle)
		w("holds two descriptors per connection.\n")
	}
	w("\n")
	r.goals(w)
	return b.String()
}

// pairedRatio is the median over repetitions of a/b for the samples of
// paths a and b taken in the same repetition (seconds apart, under the
// same machine conditions), and how many pairs there were. The two
// proxies' own figures drift together with the machine's load; their
// ratio within a repetition drifts less.
func (r *results) pairedRatio(scn, a, b string, f func(sample) float64) (float64, int) {
	as, bs := r.samples[scn][a], r.samples[scn][b]
	var rs []float64
	for i := 0; i < len(as) && i < len(bs); i++ {
		if d := f(bs[i]); d > 0 {
			rs = append(rs, f(as[i])/d)
		}
	}
	if len(rs) == 0 {
		return 0, 0
	}
	sort.Float64s(rs)
	return median(rs), len(rs)
}

// pooledP99 is the p99 of every latency of path's samples in scn, and
// how many there were.
func (r *results) pooledP99(scn, path string) (time.Duration, int) {
	var all []time.Duration
	for _, s := range r.samples[scn][path] {
		all = append(all, s.lat.all...)
	}
	if len(all) == 0 {
		return 0, 0
	}
	slices.Sort(all)
	return quantile(all, 0.99), len(all)
}

// paired is a goal row comparing moat-tls with haproxy-tls: their medians,
// and the median of their per-repetition ratios, which the verdict uses.
func (r *results) paired(scn string, f func(sample) float64, unit string) (row string, ratio float64, ok bool) {
	m, okm := r.values(scn, "moat-tls", f)
	h, okh := r.values(scn, "haproxy-tls", f)
	pr, n := r.pairedRatio(scn, "moat-tls", "haproxy-tls", f)
	if !okm || !okh || n == 0 {
		return "", 0, false
	}
	return fmt.Sprintf("%s vs %s %s; %.2fx, median of %d paired repetitions", fmtNum(m.med), fmtNum(h.med), unit, pr, n), pr, true
}

// goals checks the performance goals against this run.
func (r *results) goals(w func(string, ...any)) {
	w("Goals (from this run):\n\n| goal | measured | met |\n|---|---|---|\n")
	check := func(goal, measured string, ok bool) {
		mark := "no"
		if ok {
			mark = "yes"
		}
		w("| %s | %s | %s |\n", goal, measured, mark)
	}
	// The closed loop as the generator batches it, and with every packet
	// written on its own (a TLS record each), as paho and libmosquitto send.
	for _, q1 := range []string{"throughput QoS 1 64 B", "throughput QoS 1 64 B write each"} {
		what := strings.TrimPrefix(q1, "throughput QoS 1 64 B")
		if row, pr, ok := r.paired(q1, value, "msg/s"); ok {
			check("QoS 1 throughput"+what+", moat-tls >= haproxy-tls", row, pr >= 1)
		}
		if row, pr, ok := r.paired(q1, cpuOp, "µs"); ok {
			check("CPU per QoS 1 message"+what+", moat-tls <= 0.8 x haproxy-tls", row, pr <= 0.8)
		}
	}
	for _, scn := range r.order {
		if !strings.HasPrefix(scn, "latency 5000") {
			continue
		}
		// Both paths add to the same direct p99, so comparing their p99s
		// compares what each adds. The paths took turns through the same
		// seconds in every repetition, so all of one path's messages met
		// the same host as all of the other's: the verdict is on the p99
		// of every message, which a few millisecond stalls in one 5 s
		// repetition move far less than they move that repetition's p99.
		pm, nm := r.pooledP99(scn, "moat-tls")
		ph, nh := r.pooledP99(scn, "haproxy-tls")
		if nm > 0 && nh > 0 {
			row := fmt.Sprintf("%s vs %s µs, p99 of all %d and %d messages", fmtNum(float64(pm.Microseconds())), fmtNum(float64(ph.Microseconds())), nm, nh)
			if pr, n := r.pairedRatio(scn, "moat-tls", "haproxy-tls", value); n > 0 {
				lower := 0
				ms, hs := r.samples[scn]["moat-tls"], r.samples[scn]["haproxy-tls"]
				for i := 0; i < n && i < len(ms) && i < len(hs); i++ {
					if ms[i].value < hs[i].value {
						lower++
					}
				}
				row += fmt.Sprintf("; per repetition %.2fx (median of %d), moat lower in %d", pr, n, lower)
			}
			check("added p99 latency at 5k msg/s, moat-tls <= haproxy-tls", row, pm <= ph)
		}
	}
	if row, pr, ok := r.paired("connections/s full handshake", value, "conn/s"); ok {
		check("full TLS handshakes/s, moat-tls >= haproxy-tls", row, pr >= 1)
	}
	for _, scn := range r.order {
		if !strings.HasPrefix(scn, "idle") {
			continue
		}
		t, okt := r.values(scn, "moat-tls", value)
		p, okp := r.values(scn, "moat-tcp", value)
		if okt {
			check(scn+": moat TLS <= 20 KiB per connection", fmtNum(t.med)+" KiB", t.med <= 20)
		}
		if okp {
			check(scn+": moat plain <= 8 KiB per connection", fmtNum(p.med)+" KiB", p.med <= 8)
		}
	}
}

type rawSample struct {
	Scenario string  `json:"scenario"`
	Path     string  `json:"path"`
	Value    float64 `json:"value"`
	CPUPerOp float64 `json:"proxy_cpu_us_per_op,omitempty"`
	BrokerOp float64 `json:"broker_cpu_us_per_op,omitempty"`
	P50us    int64   `json:"p50_us,omitempty"`
	P99us    int64   `json:"p99_us,omitempty"`
	P999us   int64   `json:"p999_us,omitempty"`
	SchedP99 int64   `json:"p99_from_schedule_us,omitempty"`
	Lost     int     `json:"lost,omitempty"`
	Note     string  `json:"note,omitempty"`
}

const (
	beginMark = "<!-- bench:begin -->"
	endMark   = "<!-- bench:end -->"
)

func (r *results) write(o options) error {
	md := r.markdown()
	fmt.Println(md)
	if o.raw != "" {
		var raw []rawSample
		for _, scn := range r.order {
			for _, p := range pathOrder {
				for _, s := range r.samples[scn][p] {
					raw = append(raw, rawSample{Scenario: scn, Path: p, Value: s.value, CPUPerOp: s.cpuPerOp, BrokerOp: s.brokerOp,
						P50us: s.lat.p50.Microseconds(), P99us: s.lat.p99.Microseconds(), P999us: s.lat.p999.Microseconds(), SchedP99: s.lat.schedP99.Microseconds(), Lost: s.lat.lost, Note: s.note})
				}
			}
			for _, p := range []string{"moat-tls", "moat-tcp", "haproxy-tls", "haproxy-tcp"} {
				if strings.HasPrefix(scn, "idle") {
					for _, s := range r.samples[scn][p] {
						raw = append(raw, rawSample{Scenario: scn, Path: p, Value: s.value, Note: s.note})
					}
				}
			}
		}
		b, _ := json.MarshalIndent(map[string]any{"date": time.Now().UTC().Format(time.RFC3339), "machine": machine(),
			"command": "go run ./bench " + strings.Join(os.Args[1:], " "), "goroutines_per_conn": r.gor, "samples": raw}, "", "  ")
		if err := os.WriteFile(o.raw, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	if o.out == "" {
		return nil
	}
	doc, err := os.ReadFile(o.out)
	if err != nil {
		return err
	}
	s := string(doc)
	section := beginMark + "\n" + md + endMark
	i, j := strings.Index(s, beginMark), strings.Index(s, endMark)
	if i >= 0 && j > i {
		s = s[:i] + section + s[j+len(endMark):]
	} else {
		s = strings.TrimRight(s, "\n") + "\n\n" + section + "\n"
	}
	return os.WriteFile(o.out, []byte(s), 0o644)
}
