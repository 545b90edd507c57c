// Package e2e runs moat in front of a real Mosquitto with real clients:
// paho.golang (MQTT 5), paho.mqtt.golang (3.1.1) and mosquitto_pub /
// mosquitto_sub (3.1, 3.1.1, 5).
package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	mqtt3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/devpki"
	"github.com/moat-mqtt/moat/internal/mqtttest"
	"github.com/moat-mqtt/moat/proxy"
)

// env is Mosquitto with moat in front of it: a plain listener, a TLS one
// and a mutual-TLS one, and a dev PKI with client "alice".
type env struct {
	t      testing.TB
	broker *mqtttest.Broker
	srv    *proxy.Server
	cfg    *config.Config
	plain  string
	tls    string
	mtls   string
	certs  string
	pool   *x509.CertPool
	log    *mqtttest.SyncBuffer // moat's log, JSON lines
}

func newEnv(t testing.TB, mutate func(*config.Config)) *env {
	t.Helper()
	broker := mqtttest.Start(t, "")
	return newEnvWithBroker(t, broker, mutate)
}

func newEnvWithBroker(t testing.TB, broker *mqtttest.Broker, mutate func(*config.Config)) *env {
	t.Helper()
	dir := t.TempDir()
	if _, err := devpki.Ensure(dir, "alice"); err != nil {
		t.Fatal(err)
	}
	srvTLS := func(auth string) *config.ServerTLS {
		st := &config.ServerTLS{CertFile: filepath.Join(dir, devpki.ServerCert), KeyFile: filepath.Join(dir, devpki.ServerKey), ClientAuth: auth}
		if auth != "none" {
			st.ClientCAFile = filepath.Join(dir, devpki.CACert)
		}
		return st
	}
	cfg := &config.Config{
		Listeners: []config.Listener{
			{Name: "mqtt", Address: "127.0.0.1:0", Transport: "tcp"},
			{Name: "mqtts", Address: "127.0.0.1:0", Transport: "tls", TLS: srvTLS("none")},
			{Name: "mtls", Address: "127.0.0.1:0", Transport: "tls", TLS: srvTLS("require")},
		},
		Upstream: config.Upstream{Address: broker.Addr},
		Auth:     config.Auth{Anonymous: true},
		Policy:   &config.Policy{Mode: config.ModeAllowAll},
		// Tests open connections and publish far faster than the default
		// limits allow; the limit tests set their own.
		Limits:   config.Limits{ConnectTimeout: 2 * time.Second, Rate: noRates, Connections: noConnLimits},
		Shutdown: config.Shutdown{DrainTimeout: 2 * time.Second},
	}
	if mutate != nil {
		mutate(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	log, logBuf := testLog(t)
	srv, err := proxy.New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	pem, err := os.ReadFile(filepath.Join(dir, devpki.CACert))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &env{t: t, broker: broker, srv: srv, cfg: cfg, certs: dir, pool: pool, log: logBuf,
		plain: srv.Addr("mqtt").String(), tls: srv.Addr("mqtts").String(), mtls: srv.Addr("mtls").String()}
}

var (
	noRates      = config.ClientRate{PublishPerSecond: -1, BytesPerSecond: -1, SubscribePerSecond: -1}
	noConnLimits = config.ConnectionLimits{PerAddressPerSecond: -1, PerAddress: -1, PerSecond: -1, Max: -1}
)

// tlsConfig is a client TLS configuration trusting the dev CA, with the
// client certificate of name when name is not empty.
func (e *env) tlsConfig(name string) *tls.Config {
	tc := &tls.Config{RootCAs: e.pool, ServerName: "localhost"}
	if name != "" {
		cert, key := devpki.ClientFiles(e.certs, name)
		kp, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			e.t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	return tc
}

// received collects messages from a subscriber.
type received struct {
	mu   sync.Mutex
	msgs []msg
	ch   chan struct{}
}

type msg struct {
	Topic   string
	Payload string
	QoS     byte
	Retain  bool
}

func newReceived() *received { return &received{ch: make(chan struct{}, 1)} }

func (r *received) add(m msg) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
	select {
	case r.ch <- struct{}{}:
	default:
	}
}

// wait returns once n messages have arrived, or fails after timeout.
func (r *received) wait(t testing.TB, n int, timeout time.Duration) []msg {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		if len(r.msgs) >= n {
			out := append([]msg(nil), r.msgs...)
			r.mu.Unlock()
			return out
		}
		got := len(r.msgs)
		r.mu.Unlock()
		select {
		case <-r.ch:
		case <-deadline:
			t.Fatalf("received %d messages, want %d", got, n)
		}
	}
}

func (r *received) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

func dial(t testing.TB, addr string, tc *tls.Config) net.Conn { return mqtttest.Dial(t, addr, tc) }

// paho5 connects an MQTT 5 client (paho.golang) whose messages go to rec.
func paho5(t testing.TB, addr string, tc *tls.Config, id string, rec *received) *paho.Client {
	t.Helper()
	c := paho5Client(t, addr, tc, id, rec)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := c.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30})
	if err != nil {
		t.Fatalf("paho5 connect %s via %s: %v", id, addr, err)
	}
	if ack.ReasonCode != 0 {
		t.Fatalf("paho5 connect %s: reason 0x%02X", id, ack.ReasonCode)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c
}

func paho5Client(t testing.TB, addr string, tc *tls.Config, id string, rec *received) *paho.Client {
	conn := packets.NewThreadSafeConn(dial(t, addr, tc))
	cfg := paho.ClientConfig{ClientID: id, Conn: conn}
	if rec != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) {
				rec.add(msg{Topic: pr.Packet.Topic, Payload: string(pr.Packet.Payload), QoS: pr.Packet.QoS, Retain: pr.Packet.Retain})
				return true, nil
			},
		}
	}
	return paho.NewClient(cfg)
}

func sub5(t testing.TB, c *paho.Client, filter string, qos byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if err != nil {
		t.Fatalf("subscribe %q: %v", filter, err)
	}
	if len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80 {
		t.Fatalf("subscribe %q refused: %v", filter, sa.Reasons)
	}
}

func pub5(t testing.TB, c *paho.Client, topic, payload string, qos byte, retain bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Publish(ctx, &paho.Publish{Topic: topic, Payload: []byte(payload), QoS: qos, Retain: retain}); err != nil {
		t.Fatalf("publish %q: %v", topic, err)
	}
}

// paho3 connects an MQTT 3.1.1 client (paho.mqtt.golang).
func paho3(t testing.TB, addr string, tc *tls.Config, id string, clean bool) mqtt3.Client {
	t.Helper()
	o := paho3Options(addr, id, clean)
	if tc != nil {
		o.Servers = nil
		o.AddBroker("ssl://" + addr).SetTLSConfig(tc)
	}
	c := newPaho3(t, o)
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func paho3Options(addr, id string, clean bool) *mqtt3.ClientOptions {
	return mqtt3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetProtocolVersion(4).
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).SetKeepAlive(30 * time.Second).
		SetConnectTimeout(10 * time.Second).SetOrderMatters(true)
}

func newPaho3(t testing.TB, o *mqtt3.ClientOptions) mqtt3.Client {
	t.Helper()
	c := mqtt3.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("paho3 connect %s: %v", o.ClientID, tok.Error())
	}
	return c
}

func wait3(t testing.TB, tok mqtt3.Token, what string) {
	t.Helper()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: %v", what, tok.Error())
	}
}

func sub3(t testing.TB, c mqtt3.Client, filter string, qos byte, rec *received) {
	t.Helper()
	wait3(t, c.Subscribe(filter, qos, func(_ mqtt3.Client, m mqtt3.Message) {
		rec.add(msg{Topic: m.Topic(), Payload: string(m.Payload()), QoS: m.Qos(), Retain: m.Retained()})
	}), "subscribe "+filter)
}

// mosquittoTool runs mosquitto_pub or mosquitto_sub with a timeout.
func mosquittoTool(t testing.TB, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s not found: install mosquitto-clients (`apt-get install -y mosquitto-clients`; .ci/run does)", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// testLogger keeps moat's log in memory and prints it if the test fails.
func testLogger(t testing.TB) *slog.Logger {
	l, _ := testLog(t)
	return l
}

// testLog is testLogger with its output, for tests that read the log.
func testLog(t testing.TB) (*slog.Logger, *mqtttest.SyncBuffer) {
	buf := &mqtttest.SyncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("moat log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

func hostPort(t testing.TB, addr string) (string, string) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}
