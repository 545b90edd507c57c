package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/devpki"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// reloaded is a copy of the running configuration with mutate applied,
// validated as a reload would be.
func reloaded(t *testing.T, e *env, mutate func(*config.Config)) *config.Config {
	t.Helper()
	c := *e.cfg
	c.Listeners = append([]config.Listener(nil), e.cfg.Listeners...)
	for i := range c.Listeners {
		if tl := c.Listeners[i].TLS; tl != nil {
			cp := *tl
			c.Listeners[i].TLS = &cp
		}
	}
	if mutate != nil {
		mutate(&c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return &c
}

// A rotated certificate is what new clients see, while a client
// connected under the old one carries on.
func TestCertificateRotation(t *testing.T) {
	e := newEnv(t, nil)
	rec := newReceived()
	old := paho5(t, e.tls, e.tlsConfig(""), "old-cert", rec)
	sub5(t, old, "rot/#", 1)

	dir := t.TempDir()
	if _, err := devpki.Ensure(dir); err != nil {
		t.Fatal(err)
	}
	cfg := reloaded(t, e, func(c *config.Config) {
		for i := range c.Listeners {
			if c.Listeners[i].Name == "mqtts" {
				c.Listeners[i].TLS.CertFile = filepath.Join(dir, devpki.ServerCert)
				c.Listeners[i].TLS.KeyFile = filepath.Join(dir, devpki.ServerKey)
			}
		}
	})
	restart, err := e.srv.Reload(cfg)
	if err != nil || len(restart) != 0 {
		t.Fatalf("reload: %v, restart %v", err, restart)
	}
	pem, err := os.ReadFile(filepath.Join(dir, devpki.CACert))
	if err != nil {
		t.Fatal(err)
	}
	newCA := x509.NewCertPool()
	newCA.AppendCertsFromPEM(pem)
	// The old CA no longer verifies the listener; the new one does.
	if c, err := tls.Dial("tcp", e.tls, e.tlsConfig("")); err == nil {
		c.Close()
		t.Fatal("a client trusting only the old CA completed a handshake after the rotation")
	}
	fresh := paho5(t, e.tls, &tls.Config{RootCAs: newCA, ServerName: "localhost"}, "new-cert", nil)
	pub5(t, fresh, "rot/x", "after rotation", 1, false)
	if m := rec.wait(t, 1, 5*time.Second); m[0].Payload != "after rotation" {
		t.Fatalf("old client got %+v", m)
	}
}

// A reload that fails to build changes nothing.
func TestReloadRefused(t *testing.T) {
	e := newEnv(t, nil)
	cfg := reloaded(t, e, nil)
	for i := range cfg.Listeners {
		if cfg.Listeners[i].Name == "mqtts" {
			cfg.Listeners[i].TLS.KeyFile = cfg.Listeners[i].TLS.CertFile // not a key
		}
	}
	if _, err := e.srv.Reload(cfg); err == nil {
		t.Fatal("a listener with a certificate as its key was accepted")
	}
	c := paho5(t, e.tls, e.tlsConfig(""), "still-old", nil)
	pub5(t, c, "x", "v", 1, false)
}

// A connection under traffic survives 100 configuration and policy
// reloads with nothing lost or reordered.
func TestReloadUnderTraffic(t *testing.T) {
	e, _ := policyEnv(t, nil)
	rec := newReceived()
	sub := paho5(t, e.plain, nil, "reload-sub", rec)
	sub5(t, sub, "ok/reload", 1)
	pub := paho5(t, e.plain, nil, "reload-pub", nil)
	const n = 2000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 100 {
			cfg := reloaded(t, e, func(c *config.Config) {
				c.Limits.Rate.PublishPerSecond = float64(-1 + 2*(i%2)*1e6) // alternate: off, 1e6/s
			})
			if _, err := e.srv.Reload(cfg); err != nil {
				t.Error(err)
				return
			}
			if err := e.srv.Policy().Reload(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range n {
		if _, err := pub.Publish(ctx, &paho.Publish{Topic: "ok/reload", QoS: 1, Payload: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	got := rec.wait(t, n, 30*time.Second)
	for i, m := range got {
		if m.Payload != strconv.Itoa(i) {
			t.Fatalf("message %d is %q: lost or reordered across reloads", i, m.Payload)
		}
	}
	if st := e.srv.Policy().Stats(); st.Reloads < 100 {
		t.Fatalf("%d policy reloads", st.Reloads)
	}
}

// Limits reload too: a lower subscription quota applies to the next
// SUBSCRIBE, a connection limit to the next connection.
func TestLimitsReload(t *testing.T) {
	e := newEnv(t, nil)
	c := paho5(t, e.plain, nil, "limits-reload", nil)
	sub5(t, c, "a/1", 1)
	cfg := reloaded(t, e, func(c *config.Config) {
		c.Limits.MaxSubscriptions = 1
		c.Limits.Connections.Max = 1
	})
	if restart, err := e.srv.Reload(cfg); err != nil || len(restart) != 0 {
		t.Fatalf("reload: %v %v", err, restart)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "a/2", QoS: 1}}})
	if sa == nil || len(sa.Reasons) != 1 || sa.Reasons[0] != 0x97 {
		t.Fatalf("second subscription after the quota went to 1: %+v %v", sa, err)
	}
	if conn, err := net.Dial("tcp", e.plain); err == nil {
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
			t.Fatalf("a second connection was not closed with limits.connections.max 1: %v", err)
		}
		conn.Close()
	}
}

// Decoys reload: a topic added as a decoy trips the next client that
// touches it, without a restart, and one taken out no longer does.
func TestDecoysReload(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Decoys = config.Decoys{Topics: []string{"old/decoy/#"}}
	})
	cfg := reloaded(t, e, func(c *config.Config) {
		c.Decoys = config.Decoys{Topics: []string{"plant1/safety/override/#"}, Usernames: []string{"admin"}}
	})
	if restart, err := e.srv.Reload(cfg); err != nil || len(restart) != 0 {
		t.Fatalf("reload: %v, restart needed for %v", err, restart)
	}
	attacker := mqtttest.DialRawFrom(t, "127.0.0.31", e.plain)
	attacker.Connect(codec.V5, "scanner", 30)
	attacker.SendPacket(&codec.Subscribe{PacketID: 1, Subscriptions: []codec.Subscription{{Filter: "plant1/#"}}})
	attacker.ExpectDisconnect(codec.AdministrativeAction, 5*time.Second)

	canaryLogin(t, e, "127.0.0.32")

	// The old decoy is gone: touching it is an ordinary publish.
	ok := mqtttest.DialRawFrom(t, "127.0.0.33", e.plain)
	ok.Connect(codec.V311, "fine", 30)
	ok.SendPacket(&codec.Publish{Topic: []byte("old/decoy/x"), QoS: 1, PacketID: 1, Payload: []byte("1")})
	if _, isAck := ok.Expect(5 * time.Second).(*codec.Ack); !isAck {
		t.Fatal("a publish to a decoy removed by the reload was not acknowledged")
	}

	// A decoy topic that is not a valid filter refuses the whole reload
	// (check-config reports it first; the server checks again).
	bad := reloaded(t, e, nil)
	bad.Decoys.Topics = []string{"a/#/b"}
	if _, err := e.srv.Reload(bad); err == nil {
		t.Fatal("a reload with an invalid decoy topic was accepted")
	}
}
