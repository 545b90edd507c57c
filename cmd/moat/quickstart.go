package main

import (
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/devpki"
	"github.com/moat-mqtt/moat/policies"
)

// Quick start addresses: loopback only, so nothing is exposed by accident.
// Variables so tests can move them to free ports.
var (
	quickTLS   = "127.0.0.1:8883"
	quickPlain = "127.0.0.1:1883"
	quickAdmin = config.DefaultAdminAddress
	quickCerts = "certs"
	quickPol   = "quickstart-policy"
)

// writeQuickPolicy writes the embedded quick start policy to dir unless a
// policy is already there (the user may have edited it).
func writeQuickPolicy(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	entries, err := fs.ReadDir(policies.Quickstart, "quickstart")
	if err != nil {
		return nil, err
	}
	var wrote []string
	for _, e := range entries {
		dst := filepath.Join(dir, e.Name())
		if _, err := os.Stat(dst); err == nil {
			continue
		}
		data, err := fs.ReadFile(policies.Quickstart, "quickstart/"+e.Name())
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			return nil, err
		}
		wrote = append(wrote, dst)
	}
	return wrote, nil
}

// quickStart writes dev certificates if missing, starts an embedded broker
// on a free loopback port and returns a configuration that fronts it.
func quickStart(stdout io.Writer) (*config.Config, func(), error) {
	wrote, err := devpki.Ensure(quickCerts)
	if err != nil {
		return nil, nil, fmt.Errorf("writing dev certificates to %s/: %w", quickCerts, err)
	}
	pw, err := writeQuickPolicy(quickPol)
	if err != nil {
		return nil, nil, fmt.Errorf("writing the quick start policy to %s/: %w", quickPol, err)
	}
	for _, f := range append(wrote, pw...) {
		fmt.Fprintln(stdout, "wrote", f)
	}

	// Reserve a free loopback port for the embedded broker.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	brokerAddr := l.Addr().String()
	l.Close()
	broker := mqtt.New(&mqtt.Options{
		InlineClient: false,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	// The embedded broker trusts moat, which sits in front of it.
	if err := broker.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, nil, err
	}
	if err := broker.AddListener(listeners.NewTCP(listeners.Config{ID: "upstream", Address: brokerAddr})); err != nil {
		return nil, nil, fmt.Errorf("embedded broker: %w", err)
	}
	go broker.Serve()

	cfg := &config.Config{
		Listeners: []config.Listener{
			{Name: "mqtts", Address: quickTLS, Transport: "tls", TLS: &config.ServerTLS{
				CertFile: filepath.Join(quickCerts, devpki.ServerCert),
				KeyFile:  filepath.Join(quickCerts, devpki.ServerKey),
			}},
			{Name: "mqtt", Address: quickPlain, Transport: "tcp"},
		},
		Upstream: config.Upstream{Address: brokerAddr},
		// The quick start listens on loopback only and has no accounts
		// yet: anonymous clients, confined by the quick start policy.
		Auth:   config.Auth{Anonymous: true},
		Policy: &config.Policy{Mode: config.ModeEnforce, Paths: []string{quickPol}},
		Log:    config.Log{Format: "text"},
		Admin:  config.Admin{Address: quickAdmin},
	}
	if err := cfg.Validate(); err != nil {
		broker.Close()
		return nil, nil, err
	}
	ca := filepath.Join(quickCerts, devpki.CACert)
	fmt.Fprintf(stdout, `
moat quick start: an embedded broker on %s behind moat.
  TLS:   %s   plain: %s
  policy: %s/ (loopback clients, topics under demo/ only; edit it and moat reloads it)
  metrics: http://%s/metrics   health: /healthz /readyz

Try it (Debian package mosquitto-clients):
  mosquitto_sub -h 127.0.0.1 -p 8883 --cafile %s -t 'demo/#' -v &
  mosquitto_pub -h 127.0.0.1 -p 8883 --cafile %s -t demo/hello -m 'hello through moat'
And see a denial in the decision log:
  mosquitto_sub -h 127.0.0.1 -p 8883 --cafile %s -t '#'

Stop with Ctrl-C. For a real broker, write a config (see moat.example.yaml) and run
  moat run --config moat.yaml

`, brokerAddr, quickTLS, quickPlain, quickPol, quickAdmin, ca, ca, ca)
	return cfg, func() { broker.Close() }, nil
}
