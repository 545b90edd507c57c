package e2e

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/devpki"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// TestUpstreamTLS: moat speaks TLS to a broker that requires a client
// certificate, verifying the broker against a CA and a server name.
func TestUpstreamTLS(t *testing.T) {
	pki := t.TempDir()
	if _, err := devpki.Ensure(pki, "moat"); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(pki, devpki.CACert)
	broker := mqtttest.Start(t, fmt.Sprintf("cafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\n",
		ca, filepath.Join(pki, devpki.ServerCert), filepath.Join(pki, devpki.ServerKey)))
	cert, key := devpki.ClientFiles(pki, "moat")
	e := newEnvWithBroker(t, broker, func(c *config.Config) {
		c.Upstream.TLS = &config.ClientTLS{CAFile: ca, CertFile: cert, KeyFile: key, ServerName: "localhost"}
	})
	rec := newReceived()
	c := paho5(t, e.plain, nil, "via-tls-upstream", rec)
	sub5(t, c, "secure/#", 1)
	pub5(t, c, "secure/x", "over tls both ways", 1, false)
	if got := rec.wait(t, 1, 10*time.Second)[0]; got.Payload != "over tls both ways" {
		t.Fatalf("got %+v", got)
	}

	// A broker whose certificate does not match server_name is not trusted:
	// the client is told the server is unavailable.
	bad := newEnvWithBroker(t, broker, func(c *config.Config) {
		c.Upstream.TLS = &config.ClientTLS{CAFile: ca, CertFile: cert, KeyFile: key, ServerName: "broker.elsewhere"}
	})
	raw := mqtttest.DialRaw(t, bad.plain, nil)
	raw.V = codec.V5
	raw.SendPacket(&codec.Connect{Version: codec.V5, CleanStart: true, ClientID: "x", KeepAlive: 10})
	if ack, ok := raw.Expect(10 * time.Second).(*codec.Connack); !ok || ack.ReasonCode != byte(codec.ServerUnavailable) {
		t.Fatalf("got %+v, want CONNACK 0x88", ack)
	}
}
