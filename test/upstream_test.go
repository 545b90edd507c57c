package e2e

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// With the first broker down, clients are served by the next one; moat
// listens and dials over IPv6 as well.
func TestUpstreamFailoverAndIPv6(t *testing.T) {
	v6 := mqtttest.FreePort(t)
	_, port, _ := net.SplitHostPort(v6)
	if l, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Fatalf("IPv6 loopback unavailable: %v", err)
	} else {
		l.Close()
	}
	broker := mqtttest.Start(t, "listener "+port+" ::1\n")
	dead := mqtttest.FreePort(t) // nothing listens here
	e := newEnvWithBroker(t, broker, func(c *config.Config) {
		c.Upstream.Address = dead
		c.Upstream.Fallbacks = []string{"[::1]:" + port}
		c.Upstream.DialTimeout = time.Second
		c.Listeners = append(c.Listeners, config.Listener{Name: "v6", Address: "[::1]:0", Transport: "tcp"})
	})
	// Ready: the primary is down, but a fallback takes sessions.
	if err := e.srv.Ready(); err != nil {
		t.Fatalf("not ready with a live fallback: %v", err)
	}
	addr := e.srv.Addr("v6").String()
	if !strings.HasPrefix(addr, "[::1]:") {
		t.Fatalf("v6 listener on %s", addr)
	}
	rec := newReceived()
	sub := paho5(t, addr, nil, "v6-sub", rec)
	sub5(t, sub, "fo/#", 1)
	pub := paho5(t, e.plain, nil, "v4-pub", nil)
	pub5(t, pub, "fo/x", "through the fallback", 1, false)
	if m := rec.wait(t, 1, 5*time.Second); m[0].Payload != "through the fallback" {
		t.Fatalf("got %+v", m)
	}
	// The IPv6 client's address reaches the policy input and the API.
	found := false
	for _, c := range e.srv.Connections() {
		found = found || strings.HasPrefix(c.Address, "[::1]:")
	}
	if !found {
		t.Fatalf("connections %+v", e.srv.Connections())
	}
}
