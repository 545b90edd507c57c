// Package mqtttest holds test helpers: a real Mosquitto (Debian's package,
// found on PATH or in /usr/sbin) started on a free loopback port and
// stopped when the test ends, and a raw MQTT client that sends exactly the
// bytes a test gives it.
package mqtttest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Broker is a running Mosquitto.
type Broker struct {
	Addr string // 127.0.0.1:port
	cmd  *exec.Cmd
	log  *SyncBuffer
	done chan struct{}
	bin  string
	conf string
}

// Binary returns the mosquitto executable or fails the test with how to
// install it.
func Binary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatal("mosquitto not found: install it with `apt-get install -y mosquitto mosquitto-clients` (.ci/run does)")
	return ""
}

// FreePort returns a loopback address with a port that was free a moment ago.
func FreePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Start runs Mosquitto with anonymous access on a free loopback port; extra
// is appended to its configuration.
func Start(t testing.TB, extra string) *Broker {
	t.Helper()
	bin := Binary(t)
	for attempt := 0; ; attempt++ {
		b, err := start(t, bin, extra)
		if err == nil {
			return b
		}
		if attempt == 3 {
			t.Fatalf("starting mosquitto: %v", err)
		}
	}
}

func start(t testing.TB, bin, extra string) (*Broker, error) {
	addr := FreePort(t)
	_, port, _ := net.SplitHostPort(addr)
	dir := t.TempDir()
	conf := fmt.Sprintf(`listener %s 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
max_queued_messages 100000
max_inflight_messages 20
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
%s
`, port, extra)
	if os.Geteuid() == 0 {
		// Mosquitto started as root drops to user "mosquitto", which cannot
		// read the test's key files; a test broker has nothing to protect.
		conf += "user root\n"
	}
	path := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	b := &Broker{Addr: addr, log: &SyncBuffer{}, bin: bin, conf: path}
	if err := b.run(); err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		b.Stop()
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", b.log.String())
		}
	})
	return b, nil
}

// run starts the process and waits until it listens.
func (b *Broker) run() error {
	b.done = make(chan struct{})
	b.cmd = exec.Command(b.bin, "-c", b.conf)
	b.cmd.Stdout, b.cmd.Stderr = b.log, b.log
	if err := b.cmd.Start(); err != nil {
		return err
	}
	done := b.done
	cmd := b.cmd
	go func() { cmd.Wait(); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", b.Addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("mosquitto exited: %s", b.log.String())
		default:
		}
		if time.Now().After(deadline) {
			b.Stop()
			return fmt.Errorf("mosquitto did not listen on %s: %s", b.Addr, b.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Restart stops the broker as a service stop would (SIGTERM: it saves
// its persistence file, if configured) and starts it again on the same
// port with the same configuration.
func (b *Broker) Restart() error {
	if b.cmd.Process != nil {
		b.cmd.Process.Signal(os.Interrupt)
	}
	<-b.done
	for attempt := 0; ; attempt++ {
		err := b.run()
		if err == nil {
			return nil
		}
		if attempt == 20 {
			return fmt.Errorf("restarting mosquitto: %w", err)
		}
		time.Sleep(100 * time.Millisecond) // the port may still be held
	}
}

// Stop kills the broker (as a crash would) and waits for it to exit.
func (b *Broker) Stop() {
	if b.cmd.Process != nil {
		b.cmd.Process.Kill()
	}
	<-b.done
}

// Log returns what the broker logged so far.
func (b *Broker) Log() string { return b.log.String() }

// SyncBuffer is a bytes.Buffer safe for concurrent writers, for logs.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Pause stops the broker process (SIGSTOP): it holds its connections and
// reads nothing, as a stalled broker would. Resume continues it.
func (b *Broker) Pause() error { return b.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused broker.
func (b *Broker) Resume() error { return b.cmd.Process.Signal(syscall.SIGCONT) }
