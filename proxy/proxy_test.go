package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/devpki"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

func newTestServer(t *testing.T, upstream string, mutate func(*config.Config)) *Server {
	t.Helper()
	cfg := &config.Config{
		Listeners: []config.Listener{{Name: "mqtt", Address: "127.0.0.1:0"}},
		Upstream:  config.Upstream{Address: upstream, DialTimeout: time.Second},
		Auth:      config.Auth{Anonymous: true},
		Policy:    &config.Policy{Mode: config.ModeAllowAll},
		Limits:    config.Limits{ConnectTimeout: 2 * time.Second},
		Shutdown:  config.Shutdown{DrainTimeout: 3 * time.Second},
	}
	if mutate != nil {
		mutate(cfg)
	}
	return startTestServer(t, cfg, nil)
}

// startTestServer starts cfg; dial, when not nil, replaces the broker dial.
func startTestServer(t *testing.T, cfg *config.Config, dial func(context.Context, string, string) (net.Conn, error)) *Server {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	srv, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv.dial = dial
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return srv
}

func waitSessions(t *testing.T, srv *Server, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for srv.Sessions() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions open, want %d", srv.Sessions(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNoGoroutineLeft runs connections that end in every way a session can
// end and checks that nothing of them stays behind.
func TestNoGoroutineLeft(t *testing.T) {
	broker := mqtttest.Start(t, "")
	// Snapshot after the broker's helpers are running.
	opts := goleak.IgnoreCurrent()
	srv := newTestServer(t, broker.Addr, nil)
	addr := srv.Addr("mqtt").String()

	// Normal: connect, publish, DISCONNECT.
	c := mqtttest.DialRaw(t, addr, nil)
	c.Connect(codec.V5, "normal", 30)
	c.SendPacket(&codec.Publish{QoS: 1, PacketID: 1, Topic: []byte("a/b"), Payload: []byte("x")})
	if p := c.Expect(5 * time.Second); p.Type() != codec.PUBACK {
		t.Fatalf("got %s, want PUBACK", p.Type())
	}
	c.SendPacket(&codec.Disconnect{})
	c.ExpectClosed(5 * time.Second)

	// Client vanishes without DISCONNECT.
	c = mqtttest.DialRaw(t, addr, nil)
	c.Connect(codec.V311, "vanish", 30)
	c.Conn.Close()

	// Protocol error after CONNECT.
	c = mqtttest.DialRaw(t, addr, nil)
	c.Connect(codec.V5, "broken", 30)
	c.Send([]byte{0x20, 2, 0, 0}) // CONNACK from a client
	c.ExpectDisconnect(codec.ProtocolError, 5*time.Second)

	// Never sends CONNECT.
	c = mqtttest.DialRaw(t, addr, nil)
	c.ExpectClosed(5 * time.Second)

	waitSessions(t, srv, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	goleak.VerifyNone(t, opts)
}

func TestShutdownTellsV5Clients(t *testing.T) {
	broker := mqtttest.Start(t, "")
	srv := newTestServer(t, broker.Addr, nil)
	addr := srv.Addr("mqtt").String()
	c5 := mqtttest.DialRaw(t, addr, nil)
	c5.Connect(codec.V5, "v5", 30)
	c3 := mqtttest.DialRaw(t, addr, nil)
	c3.Connect(codec.V311, "v3", 30)
	// A QoS 1 publish in flight when the shutdown starts is still acknowledged.
	c5.SendPacket(&codec.Publish{QoS: 1, PacketID: 7, Topic: []byte("t"), Payload: []byte("last")})
	if p := c5.Expect(5 * time.Second); p.Type() != codec.PUBACK {
		t.Fatalf("got %s, want PUBACK", p.Type())
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- srv.Shutdown(ctx)
	}()
	c5.ExpectDisconnect(codec.ServerShuttingDown, 5*time.Second)
	c3.ExpectClosed(5 * time.Second)
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	// Listeners are closed.
	if _, err := mqtttest.DialRawErr(addr); err == nil {
		t.Fatal("listener still accepts after shutdown")
	}
}

func TestUpstreamDown(t *testing.T) {
	srv := newTestServer(t, mqtttest.FreePort(t), nil)
	addr := srv.Addr("mqtt").String()
	for _, v := range []codec.Version{codec.V31, codec.V311, codec.V5} {
		c := mqtttest.DialRaw(t, addr, nil)
		c.V = v
		c.SendPacket(&codec.Connect{Version: v, CleanStart: true, ClientID: "c", KeepAlive: 10})
		p := c.Expect(5 * time.Second)
		ack, ok := p.(*codec.Connack)
		want := byte(codec.ConnRefusedServerUnavailable)
		if v == codec.V5 {
			want = byte(codec.ServerUnavailable)
		}
		if !ok || ack.ReasonCode != want {
			t.Fatalf("%s: got %#v, want CONNACK 0x%02X", v, p, want)
		}
		c.ExpectClosed(5 * time.Second)
	}
}

func TestKeepAliveTimeout(t *testing.T) {
	broker := mqtttest.Start(t, "")
	srv := newTestServer(t, broker.Addr, nil)
	c := mqtttest.DialRaw(t, srv.Addr("mqtt").String(), nil)
	start := time.Now()
	c.Connect(codec.V5, "sleepy", 1)
	c.ExpectDisconnect(codec.KeepAliveTimeout, 5*time.Second)
	// [MQTT-3.1.2-24] not before 1.5 x keep alive.
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Fatalf("cut after %v, before 1.5 x keep alive", d)
	}
}

// Each packet moves the keep alive deadline, also when it arrives in a
// wake-up that armed the deadline before reading it: pings 0.6 s apart,
// then one 1.2 s after the last, keep a 1 s keep alive (cut at 1.5 s)
// alive, in the netpoller and from the parker, under TLS and plain.
func TestKeepAliveMovesWithPackets(t *testing.T) {
	broker := mqtttest.Start(t, "")
	cfg, dir := tlsTestConfig(t, broker.Addr)
	srv := startTestServer(t, cfg, nil)
	pem, err := os.ReadFile(filepath.Join(dir, devpki.CACert))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	for _, ln := range []string{"mqtt", "mqtts"} {
		t.Run(ln, func(t *testing.T) {
			t.Parallel()
			var tc *tls.Config
			if ln == "mqtts" {
				tc = &tls.Config{RootCAs: pool, ServerName: "localhost"}
			}
			c := mqtttest.DialRaw(t, srv.Addr(ln).String(), tc)
			c.Connect(codec.V5, "pinger-"+ln, 1)
			for i, gap := range []time.Duration{600, 600, 600, 600, 1200} {
				time.Sleep(gap * time.Millisecond)
				c.SendPacket(&codec.Ping{PacketType: codec.PINGREQ})
				p, err := c.Read(time.Second)
				if pr, ok := p.(*codec.Ping); err != nil || !ok || pr.PacketType != codec.PINGRESP {
					t.Fatalf("ping %d (%v after the last): got %#v, %v; want PINGRESP", i+1, gap*time.Millisecond, p, err)
				}
			}
		})
	}
}
