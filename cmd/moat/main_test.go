package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/internal/devpki"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

func runCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb, nil)
	return code, out.String(), errb.String()
}

func TestVersionAndUsage(t *testing.T) {
	if code, out, _ := runCmd("version"); code != 0 || !strings.HasPrefix(out, "moat ") {
		t.Fatalf("version: %d %q", code, out)
	}
	if code, _, errs := runCmd("frobnicate"); code != 2 || !strings.Contains(errs, "unknown command") {
		t.Fatalf("unknown command: %d %q", code, errs)
	}
	if code, _, _ := runCmd(); code != 2 {
		t.Fatalf("no command: %d", code)
	}
}

func TestCerts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	code, out, errs := runCmd("certs", "--dir", dir, "--client", "sensor-1")
	if code != 0 {
		t.Fatalf("certs: %d %s", code, errs)
	}
	for _, f := range []string{devpki.CACert, devpki.CAKey, devpki.ServerCert, devpki.ServerKey, "client-sensor-1.crt", "client-sensor-1.key"} {
		if !strings.Contains(out, f) {
			t.Errorf("output does not mention %s", f)
		}
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, ".key") && st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	if code, out, _ := runCmd("certs", "--dir", dir); code != 0 || !strings.Contains(out, "already present") {
		t.Fatalf("second run: %d %q", code, out)
	}
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("listeners: [{name: a, address: \"127.0.0.1:1883\"}]\nupstream: {address: \"127.0.0.1:1884\"}\nauth: {anonymous: true}\npolicy: {mode: allow_all}\n"), 0o644)
	if code, out, errs := runCmd("check-config", "--config", good); code != 0 || !strings.Contains(out, "OK") {
		t.Fatalf("good config: %d %q %q", code, out, errs)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("listeners: [{name: a, address: \"127.0.0.1:1883\"}]\nupstream: {address: \"127.0.0.1:1884\"}\n"), 0o644)
	if code, _, errs := runCmd("check-config", "--config", bad); code != 1 || !strings.Contains(errs, "policy: missing") {
		t.Fatalf("bad config: %d %q", code, errs)
	}
	// A certificate file that exists but is not a certificate.
	junk := filepath.Join(dir, "junk.pem")
	os.WriteFile(junk, []byte("not a certificate"), 0o600)
	tlsCfg := filepath.Join(dir, "tls.yaml")
	os.WriteFile(tlsCfg, []byte("listeners: [{name: a, address: \"127.0.0.1:8883\", transport: tls, tls: {cert_file: "+junk+", key_file: "+junk+"}}]\nupstream: {address: \"127.0.0.1:1884\"}\nauth: {anonymous: true}\npolicy: {mode: allow_all}\n"), 0o644)
	if code, _, errs := runCmd("check-config", "--config", tlsCfg); code != 1 || !strings.Contains(errs, "listener \"a\"") {
		t.Fatalf("junk certificate: %d %q", code, errs)
	}
	if code, _, errs := runCmd("run", "--config", bad); code != 1 || !strings.Contains(errs, "policy: missing") {
		t.Fatalf("run with bad config: %d %q", code, errs)
	}
}

// TestQuickStart runs `moat run` with no configuration, as the README
// says, and sends a message through its TLS listener with the mosquitto
// command-line clients.
func TestQuickStart(t *testing.T) {
	t.Chdir(t.TempDir())
	quickTLS, quickPlain, quickAdmin = mqtttest.FreePort(t), mqtttest.FreePort(t), mqtttest.FreePort(t)
	var out, errs mqtttest.SyncBuffer
	sigs := make(chan os.Signal, 1)
	done := make(chan int, 1)
	go func() { done <- run([]string{"run"}, &out, &errs, sigs) }()

	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", quickTLS); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("quick start did not listen: %s %s", out.String(), errs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "mosquitto_sub") {
		t.Fatalf("quick start does not say how to connect:\n%s", out.String())
	}
	host, port, _ := net.SplitHostPort(quickTLS)
	ca := filepath.Join("certs", devpki.CACert)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sub := exec.CommandContext(ctx, "mosquitto_sub", "-h", host, "-p", port, "--cafile", ca, "-t", "demo/#", "-C", "1", "-W", "10")
	var subOut bytes.Buffer
	sub.Stdout = &subOut
	if err := sub.Start(); err != nil {
		t.Fatalf("mosquitto_sub: %v (install mosquitto-clients)", err)
	}
	subDone := make(chan error, 1)
	go func() { subDone <- sub.Wait() }()
	for i := 0; ; i++ {
		pub := exec.CommandContext(ctx, "mosquitto_pub", "-h", host, "-p", port, "--cafile", ca, "-t", "demo/hello", "-m", "hello through moat")
		if b, err := pub.CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_pub: %v: %s", err, b)
		}
		select {
		case err := <-subDone:
			if err != nil || strings.TrimSpace(subOut.String()) != "hello through moat" {
				t.Fatalf("mosquitto_sub: %v %q", err, subOut.String())
			}
			// The quick start policy denies everything outside demo/.
			deny := exec.CommandContext(ctx, "mosquitto_sub", "-h", host, "-p", port, "--cafile", ca, "-t", "#", "-W", "5")
			if b, err := deny.CombinedOutput(); !strings.Contains(string(b), "denied") {
				t.Fatalf("subscribe to # through the quick start: %v %s", err, b)
			}
			if !strings.Contains(errs.String(), `"decision":"deny"`) {
				t.Fatalf("no denial in the decision log:\n%s", errs.String())
			}
			// SIGHUP reloads the policy; a broken one is refused.
			if err := os.WriteFile(filepath.Join(quickPol, "quickstart.rego"), []byte("package moat.authz\nallow if {"), 0o644); err != nil {
				t.Fatal(err)
			}
			sigs <- syscall.SIGHUP
			for deadline := time.Now().Add(5 * time.Second); !strings.Contains(errs.String(), "policy reload refused"); {
				if time.Now().After(deadline) {
					t.Fatalf("SIGHUP with a broken policy:\n%s", errs.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			sigs <- syscall.SIGTERM
			if code := <-done; code != 0 {
				t.Fatalf("moat exited %d: %s", code, errs.String())
			}
			return
		case <-time.After(200 * time.Millisecond):
		}
		if i > 50 {
			t.Fatalf("no message through the quick start: %s", errs.String())
		}
	}
}

// `moat bans` lists and lifts the bans of a running moat through its
// admin API.
func TestBansCommand(t *testing.T) {
	dir := t.TempDir()
	listen, adminAddr := mqtttest.FreePort(t), mqtttest.FreePort(t)
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "moat.yaml")
	cfg := fmt.Sprintf(`listeners: [{name: mqtt, address: %q}]
upstream: {address: "127.0.0.1:1"}
auth: {anonymous: true}
policy: {mode: allow_all}
decoys: {usernames: [canary]}
admin: {address: %q, token_file: %q}
`, listen, adminAddr, tok)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errs mqtttest.SyncBuffer
	sigs := make(chan os.Signal, 1)
	done := make(chan int, 1)
	go func() { done <- run([]string{"run", "--config", cfgFile}, &out, &errs, sigs) }()
	defer func() {
		sigs <- syscall.SIGTERM
		<-done
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", adminAddr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("admin interface did not listen: %s", errs.String())
		}
	}
	if code, stdout, stderr := runCmd("bans", "--config", cfgFile); code != 0 || !strings.Contains(stdout, "no active bans") {
		t.Fatalf("bans: %d %q %q", code, stdout, stderr)
	}
	// A canary login bans the address at once.
	c := mqtttest.DialRaw(t, listen, nil)
	c.SendPacket(&codec.Connect{Version: codec.V311, ClientID: "x", CleanStart: true, HasUsername: true, Username: "canary"})
	c.ExpectClosed(5 * time.Second)
	if code, stdout, stderr := runCmd("bans", "--config", cfgFile, "list"); code != 0 || !strings.Contains(stdout, "127.0.0.1") || !strings.Contains(stdout, "decoy") {
		t.Fatalf("bans list: %d %q %q", code, stdout, stderr)
	}
	if code, stdout, stderr := runCmd("bans", "--config", cfgFile, "lift", "127.0.0.1"); code != 0 || !strings.Contains(stdout, "lifted") {
		t.Fatalf("bans lift: %d %q %q", code, stdout, stderr)
	}
	if code, _, stderr := runCmd("bans", "--config", cfgFile, "lift", "127.0.0.1"); code != 1 || !strings.Contains(stderr, "no active ban") {
		t.Fatalf("lifting twice: %d %q", code, stderr)
	}
}
