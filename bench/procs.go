package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// proc is a server process the harness started: Mosquitto, HAProxy or moat.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *mqtttest.SyncBuffer
	done chan struct{}
}

// moatEnv is extra environment for the moat process (-moat-env), e.g.
// GOMAXPROCS=1 or GOGC=50, to try runtime settings without rebuilding.
var moatEnv []string

// startProc runs bin with args and waits until addr accepts connections.
func startProc(name, bin string, args []string, addr string) (*proc, error) {
	return startProcEnv(name, bin, args, addr, nil)
}

func startProcEnv(name, bin string, args []string, addr string, env []string) (*proc, error) {
	p := &proc{name: name, out: &mqtttest.SyncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	if len(env) > 0 {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("%s exited at start:\n%s", name, p.out.String())
		default:
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("%s did not listen on %s:\n%s", name, addr, p.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// cpuTime is the user+system CPU time the process has used so far, all
// threads included (/proc/PID/stat fields 14 and 15).
func cpuTime(pid int) time.Duration {
	user, sys := cpuTimes(pid)
	return user + sys
}

// cpuTimes is a process's user and system CPU time.
func cpuTimes(pid int) (user, sys time.Duration) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0
	}
	s := string(b)
	// The command name may hold spaces; fields start after its ')'.
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime) * time.Second / clockTicks, time.Duration(stime) * time.Second / clockTicks
}

// clockTicks is USER_HZ, 100 on Linux.
const clockTicks = 100

// rss is the resident set size of a process in bytes.
func rss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func freePort() string { return freePorts(1)[0] }

// freePorts returns n distinct loopback addresses that were free a moment
// ago (all held open together, so the kernel cannot hand one out twice).
func freePorts(n int) []string {
	addrs := make([]string, n)
	for i := range addrs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		defer l.Close()
		addrs[i] = l.Addr().String()
	}
	return addrs
}

func lookBin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found: install it with apt-get install -y %s", name, name)
}

// startMosquitto runs the broker every path ends at.
func startMosquitto(dir string) (*proc, string, error) {
	bin, err := lookBin("mosquitto")
	if err != nil {
		return nil, "", err
	}
	addr := freePort()
	_, port, _ := net.SplitHostPort(addr)
	conf := fmt.Sprintf(`listener %s 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
max_queued_messages 1000000
max_inflight_messages 0
max_connections -1
log_dest none
`, port)
	if os.Geteuid() == 0 {
		conf += "user root\n"
	}
	path := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, "", err
	}
	p, err := startProc("mosquitto", bin, []string{"-c", path}, addr)
	return p, addr, err
}

// startHAProxy runs HAProxy in TCP mode terminating the same TLS as moat.
// It also has a plain TCP frontend, the baseline for moat's plain listener.
func startHAProxy(dir, certFile, keyFile, upstream, tlsAddr, plainAddr string) (*proc, error) {
	bin, err := lookBin("haproxy")
	if err != nil {
		return nil, err
	}
	cert, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	key, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	pem := filepath.Join(dir, "haproxy.pem")
	if err := os.WriteFile(pem, append(cert, key...), 0o600); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`global
    maxconn %d
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend mqtts
    bind %s ssl crt %s
    default_backend broker
frontend mqtt
    bind %s
    default_backend broker
backend broker
    server mosquitto %s
`, haproxyMaxConn(), tlsAddr, pem, plainAddr, upstream)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return startProc("haproxy", bin, []string{"-f", path, "-db"}, tlsAddr)
}

// startMoat runs the moat binary with a TLS and a plain listener.
func startMoat(dir, bin, certFile, keyFile, upstream, tlsAddr, plainAddr, policy string) (*proc, error) {
	conf := fmt.Sprintf(`listeners:
  - name: mqtts
    address: "%s"
    transport: tls
    tls: {cert_file: %s, key_file: %s}
  - name: mqtt
    address: "%s"
    transport: tcp
upstream: {address: "%s"}
auth: {anonymous: true}
# The deny-path scenario is a flood of denied publishes by design.
bans: {denials: -1}
limits:
  max_packet_size: 1MiB
  # Limits on, set high enough never to throttle: the harness measures their cost.
  rate: {publish_per_second: 100000000, bytes_per_second: 100GiB, subscribe_per_second: 1000000}
  connections: {per_address_per_second: 1000000, per_address: 1000000, per_second: 1000000, max: 1000000}
%s
shutdown: {drain_timeout: 2s}
admin: {address: "off"}
log: {level: warn, format: text}
`, tlsAddr, certFile, keyFile, plainAddr, upstream, policy)
	f, err := os.CreateTemp(dir, "moat-*.yaml") // one per moat: -compare runs two
	if err != nil {
		return nil, err
	}
	_, err = f.WriteString(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	p, err := startProcEnv("moat", bin, []string{"run", "--config", f.Name()}, tlsAddr, moatEnv)
	return p, err
}

// haproxyMaxConn fits HAProxy's connection limit (two descriptors per
// connection) under the open-file limit, which HAProxy refuses to exceed:
// enough for the largest idle test where the limit allows it.
func haproxyMaxConn() int {
	return min(fileLimit()/2-100, maxIdle+200)
}

// fileLimit is the hard open-file limit, which every process here may
// raise its own to (Go does so at start).
func fileLimit() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 1024
	}
	return int(min(rl.Max, 1<<24))
}

// selfCPU is the load generator's own CPU time.
func selfCPU() time.Duration { return cpuTime(os.Getpid()) }

// box is the whole machine's CPU time in ticks (/proc/stat's first line):
// the time this machine used or left idle, and the time the host took
// from it (steal: a virtual CPU that wanted to run and was not run).
type box struct{ idle, steal, total int64 }

// boxTimes reads box so far; zeros where it cannot be read.
func boxTimes() box {
	var b box
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return b
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return b
	}
	for i, s := range f[1:] {
		n, _ := strconv.ParseInt(s, 10, 64)
		if i == 7 { // steal; guest and guest_nice after it are counted in user
			b.steal = n
			break
		}
		b.total += n
		if i == 3 || i == 4 { // idle, iowait
			b.idle += n
		}
	}
	return b
}

func (b box) since(a box) box {
	return box{idle: b.idle - a.idle, steal: b.steal - a.steal, total: b.total - a.total}
}

// add sums two spans of box time.
func (b box) add(d box) box {
	return box{idle: b.idle + d.idle, steal: b.steal + d.steal, total: b.total + d.total}
}

// idlePct is the share of the machine's own time spent idle.
func (b box) idlePct() float64 { return pct(b.idle, b.total) }

// stealPct is the share of all CPU time the host took.
func (b box) stealPct() float64 { return pct(b.steal, b.total+b.steal) }

func pct(a, b int64) float64 {
	if b <= 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

// runWait is how long a process's threads have waited for a CPU so far
// (the run-queue delay in /proc/PID/task/*/schedstat). A thread that
// exited took its share with it: this undercounts a process that ends
// threads, which Go and HAProxy do not while they run.
func runWait(pid int) time.Duration {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0
	}
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) >= 2 {
			ns, _ := strconv.ParseInt(f[1], 10, 64)
			sum += time.Duration(ns)
		}
	}
	return sum
}
