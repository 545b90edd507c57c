package e2e

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// The client address a trusted balancer names in its PROXY header is the
// one policy, bans and the admin API see.
func TestProxyProtocol(t *testing.T) {
	dir := t.TempDir()
	rules := `package moat.authz
allow if { input.action == "connect"; input.client.address != "127.0.0.78" }
allow if { input.action == "publish"; startswith(input.topic, "ok/") }
`
	if err := os.WriteFile(filepath.Join(dir, "pp.rego"), []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *config.Config) {
		c.Policy = &config.Policy{Mode: config.ModeEnforce, Paths: []string{dir}, WatchInterval: config.OptDuration{Set: true}}
		c.Bans.Denials = 2
		c.Listeners = append(c.Listeners, config.Listener{Name: "lb", Address: "127.0.0.1:0", Transport: "tcp",
			ProxyProtocol: &config.ProxyProtocol{Trusted: []string{"127.0.0.1"}}})
	})
	lb := e.srv.Addr("lb").String()
	dst := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1883}
	// via connects from the balancer (127.0.0.1), sending a header naming ip.
	via := func(version byte, ip string) *mqtttest.Raw {
		c := mqtttest.DialRawFrom(t, "127.0.0.1", lb)
		h := proxyproto.HeaderProxyFromAddrs(version, &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}, dst)
		b, err := h.Format()
		if err != nil {
			t.Fatal(err)
		}
		c.Send(b)
		return c
	}
	connack := func(c *mqtttest.Raw, v codec.Version, id string) byte {
		t.Helper()
		c.V = v
		c.SendPacket(&codec.Connect{Version: v, ClientID: id, CleanStart: true, KeepAlive: 30})
		p, err := c.Read(5 * time.Second)
		if err != nil {
			return 0xFF
		}
		a, _ := p.(*codec.Connack)
		return a.ReasonCode
	}
	for _, v := range []byte{1, 2} {
		if code := connack(via(v, "127.0.0.77"), codec.V5, "pp"+string('0'+v)); code != 0 {
			t.Fatalf("PROXY v%d from 127.0.0.77: CONNACK 0x%02X", v, code)
		}
		// The policy refuses 127.0.0.78: the header's address is the one it saw.
		if code := connack(via(v, "127.0.0.78"), codec.V5, "pp-denied"); code != byte(codec.NotAuthorized) {
			t.Fatalf("PROXY v%d from 127.0.0.78: CONNACK 0x%02X, want 0x87", v, code)
		}
	}
	found := false
	for _, c := range e.srv.Connections() {
		if c.Address == "127.0.0.77:40000" {
			found = true
		}
	}
	if !found {
		t.Fatalf("admin API does not show the proxied address: %+v", e.srv.Connections())
	}
	// A trusted balancer that sends no header, and a client that bypasses
	// the balancer, are both closed.
	noHeader := mqtttest.DialRawFrom(t, "127.0.0.1", lb)
	if code := connack(noHeader, codec.V311, "nohdr"); code != 0xFF {
		t.Fatalf("no PROXY header: CONNACK %d", code)
	}
	direct := mqtttest.DialRawFrom(t, "127.0.0.2", lb)
	if code := connack(direct, codec.V311, "direct"); code != 0xFF {
		t.Fatalf("direct client: CONNACK %d", code)
	}
	// Denials ban the proxied address, not the balancer's.
	c := via(2, "127.0.0.79")
	if code := connack(c, codec.V311, "banme"); code != 0 {
		t.Fatalf("CONNACK %d", code)
	}
	for range 2 {
		c.SendPacket(&codec.Publish{Topic: []byte("no/x"), Payload: []byte("v")})
	}
	c.ExpectClosed(5 * time.Second)
	bans := e.srv.Bans()
	if len(bans) != 1 || bans[0].Key != "127.0.0.79" {
		t.Fatalf("bans %+v", bans)
	}
	if code := connack(via(1, "127.0.0.79"), codec.V311, "banned"); code != 0xFF {
		t.Fatalf("banned address through the balancer: CONNACK %d", code)
	}
	if code := connack(via(1, "127.0.0.80"), codec.V311, "other"); code != 0 {
		t.Fatalf("another client through the balancer: CONNACK %d", code)
	}
}
