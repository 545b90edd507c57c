package e2e

import (
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/auth"
	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/loadgen"
)

// The end-to-end load comparison: QoS 1 PUBLISH acknowledged by Mosquitto,
// straight to the broker and through moat's TCP and TLS listeners, in the
// same run. Each publisher keeps a window of messages in flight.
//
//	go test -run '^$' -bench QoS1Publish -benchtime 200000x -count 5 ./test
const (
	loadPublishers = 4
	loadWindow     = 64
	loadPayload    = 64
)

func BenchmarkQoS1Publish(b *testing.B) {
	e := newEnv(b, nil)
	paths := []struct {
		name string
		addr string
		tls  *tls.Config
	}{
		{"direct", e.broker.Addr, nil},
		{"moat-tcp", e.plain, nil},
		{"moat-tls", e.tls, e.tlsConfig("")},
	}
	for _, p := range paths {
		b.Run(p.name, func(b *testing.B) {
			per := max(b.N/loadPublishers, 1)
			clients := make([]*loadgen.Client, loadPublishers)
			for i := range clients {
				c, err := loadgen.Dial(p.addr, p.tls, fmt.Sprintf("load-%s-%d", p.name, i), codec.V311)
				if err != nil {
					b.Fatal(err)
				}
				defer c.Disconnect()
				clients[i] = c
			}
			b.SetBytes(loadPayload)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for _, c := range clients {
				wg.Add(1)
				go func(c *loadgen.Client) {
					defer wg.Done()
					if err := loadgen.PublishLoop(c, loadgen.Load{QoS: 1, Size: loadPayload, N: per, Window: loadWindow}); err != nil {
						b.Error(err)
					}
				}(c)
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(per*loadPublishers)/elapsed.Seconds(), "msg/s")
		})
	}
}

// BenchmarkConnect is one client's CONNECT/CONNACK/DISCONNECT through
// moat to Mosquitto, one at a time, per authentication method: anonymous
// (without and with the plant policy), a password checked against a
// mosquitto_passwd ($7$) and an argon2id hash, an ES256 JWT, and a client
// certificate; over plain TCP, and over TLS with a full handshake each.
//
//	go test -run '^$' -bench Connect -benchtime 300x ./test
func BenchmarkConnect(b *testing.B) {
	for _, mode := range []string{"anonymous", "plant", "mosquitto-pbkdf2", "argon2id", "jwt", "certificate"} {
		for _, transport := range []string{"tcp", "tls"} {
			if mode == "certificate" && transport == "tcp" {
				continue
			}
			b.Run(mode+"/"+transport, func(b *testing.B) {
				benchConnect(b, mode, transport)
			})
		}
	}
}

func benchConnect(b *testing.B, mode, transport string) {
	var (
		user, pass string
		tok        []byte
		is         *issuer
	)
	e := newEnv(b, func(c *config.Config) {
		switch mode {
		case "plant":
			c.Policy = plantForAnonymous(b)
		case "argon2id", "mosquitto-pbkdf2":
			path := filepath.Join(b.TempDir(), "passwd")
			user, pass = "u", "bench-pw"
			var err error
			if mode == "argon2id" {
				var h string
				if h, err = auth.HashPassword([]byte(pass), auth.Argon2id); err == nil {
					err = auth.SetPassword(path, user, h)
				}
			} else {
				_, err = exec.Command("mosquitto_passwd", "-c", "-b", path, user, pass).CombinedOutput()
			}
			if err != nil {
				b.Fatal(err)
			}
			c.Auth = config.Auth{PasswordFile: path}
		case "jwt":
			is = newIssuer(b)
			c.Auth = config.Auth{JWT: &config.JWTAuth{JWKSFile: is.jwks, Issuer: "https://idp.test", Audience: "moat"}}
		case "certificate":
			c.Auth = config.Auth{}
		}
	})
	if is != nil {
		tok = is.token(b, "u", "acme", "moat", time.Hour)
	}
	addr, tc := e.plain, (*tls.Config)(nil)
	if transport == "tls" {
		addr, tc = e.tls, e.tlsConfig("")
		tc.ClientSessionCache = nil
	}
	if mode == "certificate" {
		addr, tc = e.mtls, e.tlsConfig("alice")
		tc.ClientSessionCache = nil
	}
	for i := 0; b.Loop(); i++ {
		con := &codec.Connect{Version: codec.V311, CleanStart: true, ClientID: fmt.Sprintf("sensor-c-%d", i), KeepAlive: 30}
		if user != "" {
			con.HasUsername, con.Username, con.HasPassword, con.Password = true, user, true, []byte(pass)
		}
		if tok != nil {
			con.HasUsername, con.Username, con.HasPassword, con.Password = true, "u", true, tok
		}
		c, err := loadgen.DialConnect(addr, tc, con)
		if err != nil {
			b.Fatal(err)
		}
		c.Disconnect()
	}
}

// plantForAnonymous is the plant policy with anonymous clients taking
// their client id as identity, as the load harness runs it.
func plantForAnonymous(t testing.TB) *config.Policy {
	dir := t.TempDir()
	id := "package moat.authz\nimport rego.v1\nidentity := input.client.id if input.client.auth_method == \"anonymous\"\n"
	if err := os.WriteFile(filepath.Join(dir, "identity.rego"), []byte(id), 0o600); err != nil {
		t.Fatal(err)
	}
	return &config.Policy{Mode: config.ModeEnforce, Paths: []string{"../policies/plant/plant.rego", dir},
		WatchInterval: config.OptDuration{Set: true}, DecisionLog: config.DecisionLog{File: "off"}}
}
