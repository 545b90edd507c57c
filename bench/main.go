// Command bench is moat's side-by-side load harness. On loopback it starts
// Mosquitto, HAProxy in TCP mode terminating TLS in front of it, and moat
// terminating the same TLS, then drives the same load through each path:
// closed-loop throughput, open-loop latency, fan-out, connection storms and
// idle connections. It records each proxy's CPU time per message from
// /proc and writes medians, ranges and ratios to docs/benchmarks.md.
//
//	go run ./bench                 full run (about 8 minutes on 2 cores)
//	go run ./bench -smoke          seconds; what CI runs so the harness cannot rot
//
// Every run is bounded in count and time and stops by itself.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/internal/devpki"
	"github.com/moat-mqtt/moat/internal/loadgen"
)

type options struct {
	smoke   bool
	reps    int
	out     string // markdown file whose harness section is rewritten; empty: stdout only
	raw     string // file for the raw samples (JSON)
	policy  string
	version int
	only    *regexp.Regexp
	paths   *regexp.Regexp
	compare string // a second moat binary, run side by side as cmp-tls and cmp-tcp
	// goalReps is the repetitions of the measurements the goals are judged
	// on, through the TLS paths; the other cells get reps.
	goalReps int
}

func main() {
	var o options
	flag.BoolVar(&o.smoke, "smoke", false, "tiny counts and durations, for CI")
	flag.IntVar(&o.reps, "reps", 3, "repetitions of every measurement (variants interleaved)")
	flag.IntVar(&o.goalReps, "goal-reps", 0, "repetitions of the measurements the goals are judged on (QoS 1 64 B, write each, latency 5000 msg/s, full handshakes) through haproxy-tls and moat-tls; 0: as -reps")
	flag.StringVar(&o.out, "out", "", "markdown file to write the results section into (e.g. docs/benchmarks.md)")
	flag.StringVar(&o.raw, "raw", "", "file to write the raw samples to as JSON (e.g. docs/bench-raw.json)")
	flag.StringVar(&o.policy, "policy", "plant", "policy moat runs with: plant (policies/plant, enforced, decision cache on) or allow_all")
	flag.IntVar(&o.version, "mqtt", 4, "protocol level of the load: 4 (3.1.1) or 5")
	var env stringList
	flag.Var(&env, "moat-env", "NAME=VALUE added to moat's environment (repeatable), e.g. GOMAXPROCS=1")
	only := flag.String("run", "", "only measurements whose name matches this regular expression (e.g. 'idle|QoS 1 64')")
	flag.StringVar(&o.compare, "compare", "", "a second moat binary (e.g. built from an earlier commit) measured in the same run as paths cmp-tls and cmp-tcp")
	paths := flag.String("paths", "", "only paths whose name matches this regular expression (e.g. 'moat-tls' while profiling)")
	flag.DurationVar(&warmUp, "warmup", warmUp, "how long each throughput run through a TLS listener sends its load before the measured part (0: none)")
	flag.StringVar(&latencyThrough, "latency-through", "both", "which clients of the latency test use the path: both, publisher or subscriber (the other connects to the broker directly)")
	flag.Parse()
	if latencyThrough != "both" && latencyThrough != "publisher" && latencyThrough != "subscriber" {
		fmt.Fprintln(os.Stderr, "bench: -latency-through: want both, publisher or subscriber, not", latencyThrough)
		os.Exit(2)
	}
	moatEnv = env
	var err error
	if o.only, err = regexp.Compile(*only); err != nil {
		fmt.Fprintln(os.Stderr, "bench: -run:", err)
		os.Exit(2)
	}
	if o.paths, err = regexp.Compile(*paths); err != nil {
		fmt.Fprintln(os.Stderr, "bench: -paths:", err)
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// path is one way from the load generator to the broker.
type path struct {
	name       string
	addr       string
	tls        *tls.Config
	proc       *proc // the proxy, nil for direct
	broker     *proc
	directAddr string // the broker's own address
}

func (p *path) cpu() time.Duration {
	if p.proc == nil {
		return 0
	}
	return cpuTime(p.proc.pid())
}

func (p *path) brokerCPU() time.Duration { return cpuTime(p.broker.pid()) }

// runWait is how long the proxy's threads have waited for a CPU so far.
func (p *path) runWait() time.Duration {
	if p.proc == nil {
		return 0
	}
	return runWait(p.proc.pid())
}

// userCPU is the proxy's user-space share of cpu.
func (p *path) userCPU() time.Duration {
	if p.proc == nil {
		return 0
	}
	user, _ := cpuTimes(p.proc.pid())
	return user
}

// sample is one measurement: a rate (or other value) and, for proxies, the
// proxy's CPU microseconds per operation.
type sample struct {
	value    float64
	cpuPerOp float64
	brokerOp float64
	lat      latencyResult // latency scenarios only
	note     string
}

// setup is everything the harness started.
type setup struct {
	dir      string
	moatBin  string
	cert     string
	key      string
	pool     *x509.CertPool
	broker   *proc
	brokerAd string
	haproxy  *proc
	moat     *proc
	cmp      *proc // -compare's moat, if any
	paths    []*path
	policy   string // moat's policy section, YAML
}

func (s *setup) close() {
	for _, p := range []*proc{s.cmp, s.moat, s.haproxy, s.broker} {
		if p != nil {
			p.stop()
		}
	}
	os.RemoveAll(s.dir)
}

// clientTLS is the load generator's TLS: the same for every path. It offers
// X25519 only, the key exchange HAProxy's OpenSSL 3.0 negotiates; offered
// Go's default list, moat (Go) would choose the hybrid X25519MLKEM768,
// which costs both ends about 45% more per handshake, and the two proxies
// would not be doing the same work.
func (s *setup) clientTLS() *tls.Config {
	return &tls.Config{RootCAs: s.pool, ServerName: "localhost", MinVersion: tls.VersionTLS12, CurvePreferences: []tls.CurveID{tls.X25519}}
}

func run(o options) error {
	if o.policy != "allow_all" && o.policy != "plant" {
		return fmt.Errorf("-policy %q: use plant or allow_all", o.policy)
	}
	v := codec.Version(o.version)
	if v != codec.V311 && v != codec.V5 {
		return fmt.Errorf("-mqtt %d: use 4 or 5", o.version)
	}
	if o.smoke {
		o.reps, o.goalReps = 1, 0
		warmUp = min(warmUp, 50*time.Millisecond)
	}
	o.goalReps = max(o.goalReps, o.reps)
	s, err := start(o.policy, o.compare)
	if err != nil {
		return err
	}
	defer s.close()

	r := newResults(o)
	started := time.Now()
	sc := scenarios(o)
	// Every measurement reps times, then the goals' measurements on the
	// TLS paths until they have goalReps: their verdicts compare two
	// medians that noise moves by more than the margins.
	for rep := 0; rep < o.goalReps; rep++ {
		for _, scn := range sc {
			if !o.only.MatchString(scn.name) || rep >= o.reps && !goalScenarios[scn.name] {
				continue
			}
			var ps []*path
			for _, p := range s.paths {
				if o.paths.MatchString(p.name) && (scn.skip == nil || !scn.skip(p)) && (rep < o.reps || strings.HasSuffix(p.name, "-tls")) {
					ps = append(ps, p)
				}
			}
			if len(ps) == 0 {
				continue
			}
			smps, err := scn.runAll(ps, v)
			if err != nil {
				return fmt.Errorf("%s%w", scn.name, err)
			}
			for i, p := range ps {
				smp := smps[i]
				r.add(scn.name, p.name, smp)
				fmt.Fprintf(os.Stderr, "rep %d %-32s %-12s %12.1f %8.2f µs/op %s\n", rep+1, scn.name, p.name, smp.value, smp.cpuPerOp, smp.note)
			}
		}
	}
	if o.only.MatchString("idle memory") {
		if err := idleMemory(s, o, v, r); err != nil {
			return err
		}
		if err := goroutinesPerConn(s, r); err != nil {
			return err
		}
	}
	r.elapsed = time.Since(started)
	r.summary(os.Stderr, s.paths)
	return r.write(o)
}

func start(policy, compare string) (*setup, error) {
	dir, err := os.MkdirTemp("", "moat-bench-")
	if err != nil {
		return nil, err
	}
	s := &setup{dir: dir}
	if s.policy, err = moatPolicy(dir, policy); err != nil {
		return nil, err
	}
	if _, err := devpki.Ensure(dir); err != nil {
		return nil, err
	}
	s.cert, s.key = filepath.Join(dir, devpki.ServerCert), filepath.Join(dir, devpki.ServerKey)
	pem, err := os.ReadFile(filepath.Join(dir, devpki.CACert))
	if err != nil {
		return nil, err
	}
	s.pool = x509.NewCertPool()
	s.pool.AppendCertsFromPEM(pem)

	s.moatBin = filepath.Join(dir, "moat")
	build := exec.Command("go", "build", "-o", s.moatBin, "github.com/moat-mqtt/moat/cmd/moat")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("building moat: %w", err)
	}
	if s.broker, s.brokerAd, err = startMosquitto(dir); err != nil {
		return nil, err
	}
	ports := freePorts(4)
	hTLS, hPlain, mTLS, mPlain := ports[0], ports[1], ports[2], ports[3]
	if s.haproxy, err = startHAProxy(dir, s.cert, s.key, s.brokerAd, hTLS, hPlain); err != nil {
		s.close()
		return nil, err
	}
	if s.moat, err = startMoat(dir, s.moatBin, s.cert, s.key, s.brokerAd, mTLS, mPlain, s.policy); err != nil {
		s.close()
		return nil, err
	}
	s.paths = []*path{
		{name: "direct", addr: s.brokerAd, broker: s.broker},
		{name: "haproxy-tls", addr: hTLS, tls: s.clientTLS(), proc: s.haproxy, broker: s.broker},
		{name: "moat-tls", addr: mTLS, tls: s.clientTLS(), proc: s.moat, broker: s.broker},
		{name: "haproxy-tcp", addr: hPlain, proc: s.haproxy, broker: s.broker},
		{name: "moat-tcp", addr: mPlain, proc: s.moat, broker: s.broker},
	}
	if compare != "" {
		// Right after moat-tls/moat-tcp, so the two builds meet the same
		// machine conditions in every repetition.
		cp := freePorts(2)
		if s.cmp, err = startMoat(dir, compare, s.cert, s.key, s.brokerAd, cp[0], cp[1], s.policy); err != nil {
			s.close()
			return nil, err
		}
		s.paths = []*path{s.paths[0], s.paths[1], s.paths[2],
			{name: "cmp-tls", addr: cp[0], tls: s.clientTLS(), proc: s.cmp, broker: s.broker},
			s.paths[3], s.paths[4],
			{name: "cmp-tcp", addr: cp[1], proc: s.cmp, broker: s.broker}}
	}
	for _, p := range s.paths {
		p.directAddr = s.brokerAd
	}
	return s, nil
}

// goalScenarios are the measurements the goals are judged on.
var goalScenarios = map[string]bool{
	"throughput QoS 1 64 B":            true,
	"throughput QoS 1 64 B write each": true,
	"latency 5000 msg/s":               true,
	"connections/s full handshake":     true,
}

// scenario is one measurement run against one path, or, with group set
// instead of run, against all of them at once.
type scenario struct {
	name  string
	run   func(p *path, v codec.Version) (sample, error)
	group func(ps []*path, v codec.Version) ([]sample, error)
	skip  func(p *path) bool
}

// runAll measures every path: at once for a group scenario, else one
// path after another. The error names the path where there is one.
func (scn scenario) runAll(ps []*path, v codec.Version) ([]sample, error) {
	if scn.group != nil {
		smps, err := scn.group(ps, v)
		if err != nil {
			return nil, fmt.Errorf(": %w", err)
		}
		return smps, nil
	}
	smps := make([]sample, len(ps))
	for i, p := range ps {
		smp, err := scn.run(p, v)
		if err != nil {
			return nil, fmt.Errorf(" via %s: %w", p.name, err)
		}
		smps[i] = smp
	}
	return smps, nil
}

func scenarios(o options) []scenario {
	pubs, n, window := 10, 10000, 10
	latDur := 5 * time.Second
	rates := []int{5000, 20000}
	fanSubs, fanMsgs := 100, 1000
	stormWorkers, stormDur := 8, 3*time.Second
	if o.smoke {
		pubs, n = 2, 300
		latDur, rates = 300*time.Millisecond, []int{1000}
		fanSubs, fanMsgs = 5, 50
		stormDur = 300 * time.Millisecond
	}
	var sc []scenario
	for _, qos := range []byte{0, 1} {
		for _, size := range []int{64, 1024, 16384} {
			qos, size, count := qos, size, n
			if size == 16384 {
				count = max(n/10, 1)
			}
			sc = append(sc, scenario{
				name: fmt.Sprintf("throughput QoS %d %s", qos, sizeName(size)),
				run: func(p *path, v codec.Version) (sample, error) {
					return throughput(p, v, loadgen.Load{QoS: qos, Size: size, N: count, Window: window}, pubs, false)
				},
			})
		}
	}
	// The decision cache at 0% hits (a new topic per message), and the
	// deny path (moat answers every PUBLISH itself; the other paths
	// forward them).
	sc = append(sc, scenario{
		name: "throughput QoS 1 64 B new topic each",
		run: func(p *path, v codec.Version) (sample, error) {
			return throughput(p, v, loadgen.Load{QoS: 1, Size: 64, N: n, Window: window, UniqueTopics: true}, pubs, false)
		},
	}, scenario{
		name: "throughput QoS 1 64 B write each",
		run: func(p *path, v codec.Version) (sample, error) {
			return throughput(p, v, loadgen.Load{QoS: 1, Size: 64, N: n, Window: window, WriteEach: true}, pubs, false)
		},
	}, scenario{
		name: "throughput QoS 1 64 B denied",
		run: func(p *path, v codec.Version) (sample, error) {
			return throughput(p, v, loadgen.Load{QoS: 1, Size: 64, N: n, Window: window}, pubs, true)
		},
	})
	for _, rate := range rates {
		rate := rate
		sc = append(sc, scenario{
			name: fmt.Sprintf("latency %d msg/s", rate),
			group: func(ps []*path, v codec.Version) ([]sample, error) {
				dur := latDur
				if rate > 5000 && !o.smoke {
					// 60,000 messages in 3 s are enough for a p99.9, and
					// keep the harness under 10 minutes.
					dur = 3 * time.Second
				}
				ls, err := latency(ps, v, rate, dur)
				if err != nil {
					return nil, err
				}
				smps := make([]sample, len(ls))
				for i, l := range ls {
					smps[i] = sample{value: float64(l.p99.Microseconds()), lat: l, note: l.note}
				}
				return smps, nil
			},
		})
	}
	sc = append(sc, scenario{
		name: fmt.Sprintf("fan-out 1 to %d", fanSubs),
		run:  func(p *path, v codec.Version) (sample, error) { return fanout(p, v, fanSubs, fanMsgs) },
	})
	for _, resume := range []bool{false, true} {
		resume := resume
		name := "connections/s full handshake"
		if resume {
			name = "connections/s resumed"
		}
		sc = append(sc, scenario{
			name: name,
			group: func(ps []*path, v codec.Version) ([]sample, error) {
				return storm(ps, v, resume, stormWorkers, stormDur)
			},
			// Resumption means nothing without TLS.
			skip: func(p *path) bool { return resume && p.tls == nil },
		})
	}
	return sc
}

// benchIdentity lets the harness's anonymous loopback clients stand for
// plant devices: their client id is their identity. Added next to the
// plant policy, so every decision evaluates the plant rules in full.
const benchIdentity = `package moat.authz

import rego.v1

identity := input.client.id if input.client.auth_method == "anonymous"
`

// moatPolicy returns moat's policy section for the harness.
func moatPolicy(dir, policy string) (string, error) {
	if policy == "allow_all" {
		return "policy: {mode: allow_all}", nil
	}
	plant, err := filepath.Abs(filepath.Join("policies", "plant", "plant.rego"))
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(plant); err != nil {
		return "", fmt.Errorf("the plant policy: %w (run the harness from the repository root)", err)
	}
	ident := filepath.Join(dir, "bench-identity.rego")
	if err := os.WriteFile(ident, []byte(benchIdentity), 0o644); err != nil {
		return "", err
	}
	return fmt.Sprintf("policy: {mode: enforce, paths: [%q, %q], decision_log: {file: %q}}",
		plant, ident, filepath.Join(dir, "decisions.jsonl")), nil
}

func sizeName(n int) string {
	if n >= 1024 {
		return fmt.Sprintf("%d KiB", n/1024)
	}
	return fmt.Sprintf("%d B", n)
}

// idleMemory measures RSS growth per idle connection on fresh proxy
// processes, plain and TLS.
func idleMemory(s *setup, o options, v codec.Version, r *results) error {
	counts := idleCounts(fileLimit())
	if most := counts[len(counts)-1]; most < maxIdle {
		fmt.Fprintf(os.Stderr, "idle: the open-file limit (%d) holds %d connections at most, not %d\n", fileLimit(), most, maxIdle)
		r.idleLimit = fileLimit()
	}
	if o.smoke {
		counts = []int{200}
	}
	for _, n := range counts {
		for _, kind := range []string{"moat", "haproxy"} {
			for _, useTLS := range []bool{true, false} {
				ports := freePorts(2)
				tlsAddr, plainAddr := ports[0], ports[1]
				var (
					p   *proc
					err error
				)
				if kind == "moat" {
					p, err = startMoat(s.dir, s.moatBin, s.cert, s.key, s.brokerAd, tlsAddr, plainAddr, s.policy)
				} else {
					p, err = startHAProxy(s.dir, s.cert, s.key, s.brokerAd, tlsAddr, plainAddr)
				}
				if err != nil {
					return err
				}
				pa := &path{name: kind, addr: plainAddr, proc: p, broker: s.broker}
				transport := "tcp"
				if useTLS {
					pa.addr, pa.tls, transport = tlsAddr, s.clientTLS(), "tls"
				}
				runtime.GC()
				time.Sleep(300 * time.Millisecond)
				before := rss(p.pid())
				clients, err := idle(pa, v, n)
				if err == nil {
					// Settle: moat hands quiet connections to its parker after 1 s.
					time.Sleep(3 * time.Second)
					after := rss(p.pid())
					r.add(fmt.Sprintf("idle memory %d connections", n), kind+"-"+transport,
						sample{value: float64(after-before) / float64(n) / 1024, note: fmt.Sprintf("RSS %d -> %d KiB", before>>10, after>>10)})
					fmt.Fprintf(os.Stderr, "idle %d %s-%s: %.1f KiB/conn\n", n, kind, transport, float64(after-before)/float64(n)/1024)
				}
				for _, c := range clients {
					c.Conn.Close()
				}
				p.stop()
				if err != nil {
					return fmt.Errorf("idle %d via %s-%s: %w", n, kind, transport, err)
				}
			}
		}
	}
	return nil
}

// maxIdle is the largest idle test.
const maxIdle = 20000

// idleCounts are the idle tests' connection counts: 5,000 and 20,000, or,
// where the open-file limit is lower, the most that fit, in thousands
// (each proxy holds two descriptors per connection, the load generator
// one).
func idleCounts(limit int) []int {
	most := min(maxIdle, limit/2-200)
	switch {
	case most >= 6000:
		return []int{5000, most / 1000 * 1000}
	case most >= 1000:
		return []int{most / 1000 * 1000}
	}
	return []int{max(most/100*100, 100)}
}

type stringList []string

func (s *stringList) String() string     { return fmt.Sprint(*s) }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }
