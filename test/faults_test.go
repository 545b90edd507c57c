package e2e

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/mqtttest"
	"github.com/moat-mqtt/moat/proxy"
)

// faultClient is a raw MQTT 5 client that reconnects by itself, for
// runs where the broker goes away under it. It never calls t.Fatal off
// the test goroutine: errors come back as values.
type faultClient struct {
	addr, id string
	conn     net.Conn
	r        *codec.Reader
	present  bool // the last CONNACK's Session Present
	told     codec.ReasonCode
}

// connect dials until moat and the broker accept a session that lives on
// (Clean Start 0, an hour of Session Expiry).
func (c *faultClient) connect(deadline time.Time) error {
	for {
		conn, err := net.DialTimeout("tcp", c.addr, time.Second)
		if err == nil {
			con := &codec.Connect{Version: codec.V5, ClientID: c.id, KeepAlive: 30}
			con.Properties.Set(codec.PropSessionExpiry)
			con.Properties.SessionExpiry = 3600
			b, _ := con.Append(nil, codec.V5)
			conn.SetDeadline(time.Now().Add(3 * time.Second))
			r := codec.NewReader(conn, 0)
			if _, err = conn.Write(b); err == nil {
				var f codec.Frame
				if f, err = r.ReadPacket(); err == nil {
					var p codec.Packet
					if p, err = codec.Decode(f, codec.V5); err == nil {
						if a, ok := p.(*codec.Connack); ok && a.ReasonCode == 0 {
							conn.SetDeadline(time.Time{})
							c.conn, c.r, c.present = conn, r, a.SessionPresent
							return nil
						}
						err = errors.New("refused")
					}
				}
			}
			conn.Close()
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *faultClient) send(p codec.Packet) error {
	b, err := p.Append(nil, codec.V5)
	if err != nil {
		return err
	}
	c.conn.SetWriteDeadline(time.Now().Add(3 * time.Second))
	_, err = c.conn.Write(b)
	return err
}

func (c *faultClient) read(timeout time.Duration) (codec.Packet, error) {
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	f, err := c.r.ReadPacket()
	if err != nil {
		return nil, err
	}
	p, err := codec.Decode(f, codec.V5)
	if d, ok := p.(*codec.Disconnect); ok {
		c.told = d.ReasonCode
		return nil, errors.New("DISCONNECT " + d.ReasonCode.String())
	}
	return p, err
}

// A broker restart under traffic: clients are told, reconnect, persistent
// sessions resume, and no QoS 1 message the publisher had acknowledged
// is lost.
func TestBrokerRestartUnderTraffic(t *testing.T) {
	broker := mqtttest.Start(t, "persistence true\npersistence_location "+t.TempDir()+"/\n")
	e := newEnvWithBroker(t, broker, nil)
	deadline := time.Now().Add(60 * time.Second)

	sub := &faultClient{addr: e.plain, id: "restart-sub"}
	if err := sub.connect(deadline); err != nil {
		t.Fatal(err)
	}
	if err := sub.send(&codec.Subscribe{PacketID: 1, Subscriptions: []codec.Subscription{{Filter: "ok/restart", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.read(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		received = map[int]bool{}
		resumed  = true
		subTold  []codec.ReasonCode
	)
	stop := make(chan struct{})
	subDone := make(chan struct{})
	go func() {
		defer close(subDone)
		for {
			p, err := sub.read(200 * time.Millisecond)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					select {
					case <-stop:
						return
					default:
						continue
					}
				}
				mu.Lock()
				subTold = append(subTold, sub.told)
				mu.Unlock()
				sub.conn.Close()
				if sub.connect(deadline) != nil {
					return
				}
				mu.Lock()
				resumed = resumed && sub.present
				mu.Unlock()
				continue
			}
			if pub, ok := p.(*codec.Publish); ok {
				n, _ := strconv.Atoi(string(pub.Payload))
				mu.Lock()
				received[n] = true
				mu.Unlock()
				if pub.QoS == 1 {
					sub.send(&codec.Ack{PacketType: codec.PUBACK, PacketID: pub.PacketID})
				}
			}
		}
	}()

	pub := &faultClient{addr: e.plain, id: "restart-pub"}
	if err := pub.connect(deadline); err != nil {
		t.Fatal(err)
	}
	const n = 300
	acked := 0
	restarted := false
	restartErr := make(chan error, 1)
	for seq := 0; seq < n; {
		if seq == n/2 && !restarted {
			restarted = true
			go func() { restartErr <- broker.Restart() }()
		}
		id := uint16(seq%60000 + 1)
		err := pub.send(&codec.Publish{Topic: []byte("ok/restart"), QoS: 1, PacketID: id, Payload: []byte(strconv.Itoa(seq))})
		var p codec.Packet
		if err == nil {
			p, err = pub.read(5 * time.Second)
		}
		if err == nil {
			if a, ok := p.(*codec.Ack); ok && a.PacketType == codec.PUBACK && a.PacketID == id && a.ReasonCode < 0x80 {
				acked++
				seq++
				continue
			}
		}
		// The broker went away (or refused): reconnect and send the same
		// message again, as a QoS 1 publisher must.
		pub.conn.Close()
		if err := pub.connect(deadline); err != nil {
			t.Fatalf("publisher could not reconnect: %v", err)
		}
	}
	if err := <-restartErr; err != nil {
		t.Fatal(err)
	}
	// Every acknowledged message reaches the subscriber.
	for wait := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		got := len(received)
		mu.Unlock()
		if got == n || time.Now().After(wait) {
			break
		}
	}
	close(stop)
	<-subDone
	mu.Lock()
	defer mu.Unlock()
	var missing []int
	for seq := range n {
		if !received[seq] {
			missing = append(missing, seq)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d acknowledged messages lost across the restart, e.g. %v", len(missing), acked, missing[:min(len(missing), 10)])
	}
	if !resumed {
		t.Fatal("the subscriber's session did not resume after the restart")
	}
	if !restarted || len(subTold) == 0 {
		t.Fatal("the subscriber never noticed the restart")
	}
	for _, code := range subTold {
		if code == 0 {
			t.Fatalf("the subscriber was cut without a DISCONNECT reason: %v", subTold)
		}
	}
}

// Files missing or corrupted: a clear error naming the file at start,
// and at reload the last good state stays (never fail open).
func TestCorruptFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := passwordFile(t)
	schema := write("schema.json", `{"type":"object"}`)
	// At start.
	for _, c := range []struct {
		name, want string
		mutate     func(*config.Config)
	}{
		{"password file", "auth.password_file", func(c *config.Config) { c.Auth.PasswordFile = write("bad-passwd", "sensor-9\nno colon here\n") }},
		{"JWKS file", "jwt", func(c *config.Config) {
			c.Auth.JWT = &config.JWTAuth{JWKSFile: write("bad-jwks.json", "{not json"), Issuer: "i", Audience: "a"}
		}},
		{"payload schema", "payload.rules[0].schema_file", func(c *config.Config) {
			c.Payload.Rules = []config.PayloadRule{{Topics: []string{"x/#"}, SchemaFile: write("bad-schema.json", "{")}}
		}},
		{"listener certificate", `listener "mqtts"`, func(c *config.Config) {
			c.Listeners[1].TLS.CertFile = write("bad.crt", "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
		}},
		{"policy", "policy", func(c *config.Config) {
			c.Policy = &config.Policy{Mode: config.ModeEnforce, Paths: []string{write("bad.rego", "package moat.authz\nallow if {\n")}}
		}},
	} {
		t.Run("start with a broken "+c.name, func(t *testing.T) {
			cfg := reloaded(t, newEnv(t, nil), c.mutate)
			if _, err := proxy.New(cfg, nil); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one naming %q", err, c.want)
			}
		})
	}
	// At reload.
	t.Run("reload with a broken password file or schema", func(t *testing.T) {
		pw := write("passwd", mustRead(t, good))
		e := newEnv(t, func(c *config.Config) {
			c.Auth = config.Auth{PasswordFile: pw}
			c.Payload.Rules = []config.PayloadRule{{Topics: []string{"x/#"}, SchemaFile: schema}}
		})
		write("passwd", "garbage without a colon\n")
		if _, err := e.srv.Reload(reloaded(t, e, nil)); err == nil {
			t.Fatal("a corrupted password file was accepted")
		}
		write("passwd", mustRead(t, good))
		write("schema.json", "{")
		if _, err := e.srv.Reload(reloaded(t, e, nil)); err == nil {
			t.Fatal("a corrupted schema was accepted")
		}
		// The last good password file is still the one in force.
		if code := connect5(t, e.plain, nil, &paho.Connect{ClientID: "sensor-9", UsernameFlag: true, Username: "sensor-9",
			PasswordFlag: true, Password: []byte("nine")}); code != 0 {
			t.Fatalf("CONNACK 0x%02X after refused reloads", code)
		}
		if code := connect5(t, e.plain, nil, &paho.Connect{ClientID: "anon"}); code != byte(codec.NotAuthorized) && code != byte(codec.BadUsernameOrPassword) {
			t.Fatalf("anonymous CONNACK 0x%02X: the refused reload opened the door", code)
		}
	})
}

func mustRead(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A stalled broker: moat's memory stays bounded and the publisher feels
// backpressure; after write_timeout the session is ended, not queued for.
func TestBrokerStalled(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Limits.WriteTimeout = 2 * time.Second })
	c := mqtttest.DialRaw(t, e.plain, nil)
	c.Connect(codec.V5, "stalled-pub", 30)
	if err := e.broker.Pause(); err != nil {
		t.Fatal(err)
	}
	defer e.broker.Resume()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	msg, _ := (&codec.Publish{Topic: []byte("ok/stall"), Payload: make([]byte, 64<<10)}).Append(nil, codec.V5)
	sent := 0
	start := time.Now()
	for sent < 40<<20 && time.Since(start) < 15*time.Second {
		if c.TrySend(msg) != nil {
			break // moat ended the session
		}
		sent += len(msg)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if sent >= 40<<20 {
		t.Fatalf("40 MiB accepted with the broker stalled: no backpressure")
	}
	if grown := int64(after.HeapInuse) - int64(before.HeapInuse); grown > 16<<20 {
		t.Fatalf("moat's heap grew %d MiB while the broker stalled", grown>>20)
	}
	got := c.ExpectClosed(15 * time.Second)
	told := false
	for _, p := range got {
		told = told || p.Type() == codec.DISCONNECT
	}
	if !told {
		t.Fatal("the MQTT 5 publisher was cut without a DISCONNECT")
	}
	t.Logf("the publisher got %d MiB through before backpressure; cut after %v", sent>>20, time.Since(start).Round(time.Millisecond))
}
