package e2e

import (
	"context"
	"crypto/tls"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/moat-mqtt/moat/auth"
	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/devpki"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// passwordFile writes a password file with mosquitto_passwd (Mosquitto's
// own tool, $7$ hashes) and adds an argon2id user with moat's code.
func passwordFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "passwd")
	if out, err := exec.Command("mosquitto_passwd", "-c", "-b", path, "sensor-9", "nine").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd (Debian package mosquitto): %v %s", err, out)
	}
	h, err := auth.HashPassword([]byte("plant-pw"), auth.Argon2id)
	if err != nil {
		t.Fatal(err)
	}
	if err := auth.SetPassword(path, "dashboard-2", h); err != nil {
		t.Fatal(err)
	}
	return path
}

func connect5(t *testing.T, addr string, tc *tls.Config, c *paho.Connect) byte {
	t.Helper()
	cl := paho5Client(t, addr, tc, c.ClientID, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := cl.Connect(ctx, c)
	if ack == nil {
		t.Fatalf("connect %s: %v", c.ClientID, err)
	}
	if ack.ReasonCode == 0 {
		t.Cleanup(func() { cl.Disconnect(&paho.Disconnect{}) })
	}
	return ack.ReasonCode
}

func TestAuthentication(t *testing.T) {
	pw := passwordFile(t)
	e := newEnv(t, func(c *config.Config) {
		c.Auth = config.Auth{PasswordFile: pw}
		c.Policy = &config.Policy{Mode: config.ModeEnforce, Paths: []string{"../policies/plant"},
			WatchInterval: config.OptDuration{Set: true}, DecisionLog: config.DecisionLog{File: "off"}}
	})
	t.Run("v5", func(t *testing.T) {
		for _, c := range []struct {
			name string
			p    paho.Connect
			want byte
		}{
			{"mosquitto_passwd hash", paho.Connect{ClientID: "sensor-9", UsernameFlag: true, Username: "sensor-9", PasswordFlag: true, Password: []byte("nine")}, 0},
			{"argon2id hash", paho.Connect{ClientID: "dashboard-2", UsernameFlag: true, Username: "dashboard-2", PasswordFlag: true, Password: []byte("plant-pw")}, 0},
			{"wrong password", paho.Connect{ClientID: "sensor-9b", UsernameFlag: true, Username: "sensor-9", PasswordFlag: true, Password: []byte("ten")}, byte(codec.BadUsernameOrPassword)},
			{"unknown user", paho.Connect{ClientID: "x", UsernameFlag: true, Username: "mallory", PasswordFlag: true, Password: []byte("nine")}, byte(codec.BadUsernameOrPassword)},
			{"anonymous", paho.Connect{ClientID: "anon"}, byte(codec.NotAuthorized)},
			// Authenticated, but the plant policy binds the client id to the user.
			{"client id of another", paho.Connect{ClientID: "dashboard-2", UsernameFlag: true, Username: "sensor-9", PasswordFlag: true, Password: []byte("nine")}, byte(codec.NotAuthorized)},
		} {
			c.p.CleanStart = true
			if got := connect5(t, e.plain, nil, &c.p); got != c.want {
				t.Errorf("%s: CONNACK 0x%02X, want 0x%02X", c.name, got, c.want)
			}
		}
	})
	t.Run("v311 and v31", func(t *testing.T) {
		h, p := hostPort(t, e.plain)
		for _, c := range []struct {
			v, user, pass, want string
		}{
			{"mqttv311", "sensor-9", "ten", "bad user name or password"},
			{"mqttv31", "sensor-9", "ten", "bad user name or password"},
			{"mqttv311", "", "", "not authori"},
		} {
			args := []string{"-h", h, "-p", p, "-V", c.v, "-i", "sensor-9", "-t", "sensors/sensor-9/t", "-m", "m"}
			if c.user != "" {
				args = append(args, "-u", c.user, "-P", c.pass)
			}
			out, err := mosquittoTool(t, 10*time.Second, "mosquitto_pub", args...)
			if err == nil || !strings.Contains(strings.ToLower(out), c.want) {
				t.Errorf("%s %q: %v %s", c.v, c.user, err, out)
			}
		}
		out, err := mosquittoTool(t, 10*time.Second, "mosquitto_pub", "-h", h, "-p", p, "-V", "mqttv31", "-i", "sensor-9",
			"-u", "sensor-9", "-P", "nine", "-t", "sensors/sensor-9/t", "-m", "m", "-q", "1")
		if err != nil {
			t.Errorf("3.1 with the right password: %v %s", err, out)
		}
	})
	t.Run("the policy sees the verified user", func(t *testing.T) {
		c := paho5Client(t, e.plain, nil, "sensor-9", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if ack, err := c.Connect(ctx, &paho.Connect{ClientID: "sensor-9", CleanStart: true, UsernameFlag: true, Username: "sensor-9", PasswordFlag: true, Password: []byte("nine")}); err != nil || ack.ReasonCode != 0 {
			t.Fatalf("connect: %+v %v", ack, err)
		}
		defer c.Disconnect(&paho.Disconnect{})
		if r, err := c.Publish(ctx, &paho.Publish{Topic: "sensors/sensor-9/temp", QoS: 1, Payload: []byte("1")}); err != nil || r.ReasonCode >= 0x80 {
			t.Fatalf("own topic: %+v %v", r, err)
		}
		if r, _ := c.Publish(ctx, &paho.Publish{Topic: "sensors/sensor-1/temp", QoS: 1, Payload: []byte("1")}); r == nil || r.ReasonCode != byte(codec.NotAuthorized) {
			t.Fatalf("another sensor's topic: %+v", r)
		}
	})
	t.Run("certificates", func(t *testing.T) {
		if _, err := devpki.Ensure(e.certs, "sensor-3"); err != nil {
			t.Fatal(err)
		}
		if got := connect5(t, e.mtls, e.tlsConfig("sensor-3"), &paho.Connect{ClientID: "sensor-3", CleanStart: true}); got != 0 {
			t.Errorf("certificate sensor-3: 0x%02X", got)
		}
		// A certificate from another CA fails the handshake.
		other := t.TempDir()
		if _, err := devpki.Ensure(other, "sensor-3"); err != nil {
			t.Fatal(err)
		}
		cert, key := devpki.ClientFiles(other, "sensor-3")
		kp, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		tc := &tls.Config{RootCAs: e.pool, ServerName: "localhost", Certificates: []tls.Certificate{kp}}
		conn, err := tls.Dial("tcp", e.mtls, tc)
		if err == nil {
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Read(make([]byte, 1)) // TLS 1.3: the server's verdict arrives after the client's Finished
			conn.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("certificate from another CA: %v", err)
		}
	})
}

// Principal B connecting with A's client id would kick A off and take its
// session: refused before the broker sees it, and A stays connected.
func TestClientIDTakeover(t *testing.T) {
	pw := passwordFile(t)
	e := newEnv(t, func(c *config.Config) {
		c.Auth = config.Auth{PasswordFile: pw, ClientID: config.ClientIDAuth{Bind: "identity"}}
	})
	victimRec := newReceived()
	victim := paho5Client(t, e.plain, nil, "sensor-9", victimRec)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ack, err := victim.Connect(ctx, &paho.Connect{ClientID: "sensor-9", CleanStart: true, KeepAlive: 30,
		UsernameFlag: true, Username: "sensor-9", PasswordFlag: true, Password: []byte("nine")}); err != nil || ack.ReasonCode != 0 {
		t.Fatalf("victim: %+v %v", ack, err)
	}
	defer victim.Disconnect(&paho.Disconnect{})
	sub5(t, victim, "ok/#", 1)

	got := connect5(t, e.plain, nil, &paho.Connect{ClientID: "sensor-9", CleanStart: true,
		UsernameFlag: true, Username: "dashboard-2", PasswordFlag: true, Password: []byte("plant-pw")})
	if got != byte(codec.NotAuthorized) {
		t.Fatalf("takeover: CONNACK 0x%02X, want 0x87", got)
	}
	// The victim's session is untouched: it still receives.
	direct := paho5(t, e.broker.Addr, nil, "inside", nil)
	pub5(t, direct, "ok/still-here", "yes", 1, false)
	if m := victimRec.wait(t, 1, 10*time.Second); m[0].Topic != "ok/still-here" {
		t.Fatalf("victim got %+v", m)
	}
	if strings.Contains(e.broker.Log(), "dashboard-2") {
		t.Error("the broker saw the takeover attempt")
	}

	// An empty client id with clean start is given the identity.
	c := paho5Client(t, e.plain, nil, "", nil)
	ack, err := c.Connect(ctx, &paho.Connect{CleanStart: true, UsernameFlag: true, Username: "dashboard-2", PasswordFlag: true, Password: []byte("plant-pw")})
	if err != nil || ack.ReasonCode != 0 || ack.Properties == nil || ack.Properties.AssignedClientID != "dashboard-2" {
		t.Fatalf("assigned id: %+v %v", ack, err)
	}
	c.Disconnect(&paho.Disconnect{})
}

// What the broker sees of credentials: replaced by moat's service account,
// stripped, or the client's own. Checked on the broker side, with a
// Mosquitto password file that only knows the service account.
func TestUpstreamCredentials(t *testing.T) {
	dir := t.TempDir()
	brokerPW := filepath.Join(dir, "broker-passwd")
	for _, args := range [][]string{{"-c", "-b", brokerPW, "svc", "svc-secret"}, {"-b", brokerPW, "sensor-9", "svc-secret"}} {
		if out, err := exec.Command("mosquitto_passwd", args...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd: %v %s", err, out)
		}
	}
	svcFile := filepath.Join(dir, "svc.pw")
	if err := os.WriteFile(svcFile, []byte("svc-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clientPW := passwordFile(t)
	for _, c := range []struct {
		mode     string
		identity bool
		want     byte
		logged   string
	}{
		{"replace", false, 0, "u'svc'"},
		{"strip", false, byte(codec.NotAuthorized), ""},
		{"passthrough", false, byte(codec.NotAuthorized), ""}, // the broker does not know sensor-9
		{"passthrough", true, byte(codec.NotAuthorized), ""},  // nor as the identity
	} {
		t.Run(c.mode, func(t *testing.T) {
			broker := mqtttest.Start(t, "allow_anonymous false\npassword_file "+brokerPW+"\n")
			e := newEnvWithBroker(t, broker, func(cfg *config.Config) {
				cfg.Auth = config.Auth{PasswordFile: clientPW}
				cfg.Upstream.Credentials = config.Credentials{Mode: c.mode, IdentityAsUsername: c.identity}
				if c.mode == "replace" {
					cfg.Upstream.Credentials.Username, cfg.Upstream.Credentials.PasswordFile = "svc", svcFile
				}
			})
			got := connect5(t, e.plain, nil, &paho.Connect{ClientID: "sensor-9", CleanStart: true,
				UsernameFlag: true, Username: "sensor-9", PasswordFlag: true, Password: []byte("nine")})
			if got != c.want {
				t.Fatalf("CONNACK 0x%02X, want 0x%02X", got, c.want)
			}
			if c.logged != "" {
				deadline := time.Now().Add(5 * time.Second)
				for !strings.Contains(broker.Log(), c.logged) {
					if time.Now().After(deadline) {
						t.Fatalf("broker log does not show %s:\n%s", c.logged, broker.Log())
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
		})
	}
}

// Repeated failed logins ban the source address (refused before any
// MQTT or TLS) and the username; bans expire.
func TestBruteForceBans(t *testing.T) {
	pw := passwordFile(t)
	e := newEnv(t, func(c *config.Config) {
		c.Auth = config.Auth{PasswordFile: pw, BruteForce: config.BruteForce{MaxFailures: 3, Window: time.Minute, Ban: 2 * time.Second}}
	})
	login := func(from, user, pass string) codec.Packet {
		t.Helper()
		c := mqtttest.DialRawFrom(t, from, e.plain)
		c.V = codec.V5
		c.SendPacket(&codec.Connect{Version: codec.V5, CleanStart: true, ClientID: user, KeepAlive: 30,
			HasUsername: true, Username: user, HasPassword: true, Password: []byte(pass)})
		p, err := c.Read(5 * time.Second)
		if err != nil {
			return nil // closed without an answer
		}
		return p
	}
	code := func(p codec.Packet) int {
		if a, ok := p.(*codec.Connack); ok {
			return int(a.ReasonCode)
		}
		return -1
	}
	// One username guessed from three addresses: the username is banned,
	// even for its own right password, the addresses are not.
	for _, from := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
		if got := code(login(from, "sensor-9", "guess")); got != int(codec.BadUsernameOrPassword) {
			t.Fatalf("wrong password from %s: %d", from, got)
		}
	}
	if got := code(login("127.0.0.5", "sensor-9", "nine")); got != int(codec.Banned) {
		t.Fatalf("banned username: %d, want 0x8A", got)
	}
	if got := code(login("127.0.0.2", "dashboard-2", "plant-pw")); got != 0 {
		t.Fatalf("another user from a guessing address: %d", got)
	}
	// One address guessing three usernames: the address is banned and
	// its connections are closed before CONNACK; others still get in.
	for _, user := range []string{"u1", "u2", "u3"} {
		login("127.0.0.6", user, "guess")
	}
	if p := login("127.0.0.6", "dashboard-2", "plant-pw"); p != nil {
		t.Fatalf("banned address got %#v", p)
	}
	if got := code(login("127.0.0.7", "dashboard-2", "plant-pw")); got != 0 {
		t.Fatalf("an innocent address: %d", got)
	}
	// Bans expire.
	time.Sleep(2100 * time.Millisecond)
	if got := code(login("127.0.0.6", "dashboard-2", "plant-pw")); got != 0 {
		t.Fatalf("after the address ban: %d", got)
	}
	if got := code(login("127.0.0.8", "sensor-9", "nine")); got != 0 {
		t.Fatalf("after the username ban: %d", got)
	}
}

// A revoked client certificate fails the TLS handshake; others still pass.
func TestRevokedCertificate(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		for i := range c.Listeners {
			if l := &c.Listeners[i]; l.Name == "mtls" {
				dir := filepath.Dir(l.TLS.ClientCAFile) // the env's dev PKI
				if _, err := devpki.Ensure(dir, "sensor-1", "sensor-2"); err != nil {
					t.Fatal(err)
				}
				crl, err := devpki.Revoke(dir, "sensor-2")
				if err != nil {
					t.Fatal(err)
				}
				l.TLS.CRLFile = crl
			}
		}
	})
	handshake := func(name string) error {
		conn, err := tls.Dial("tcp", e.mtls, e.tlsConfig(name))
		if err != nil {
			return err
		}
		defer conn.Close()
		// TLS 1.3: the server's verdict on the client certificate arrives
		// after the client's Finished; send CONNECT and read the answer.
		b, _ := (&codec.Connect{Version: codec.V311, CleanStart: true, ClientID: name, KeepAlive: 30}).Append(nil, codec.V311)
		conn.Write(b)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 4))
		return err
	}
	if err := handshake("sensor-1"); err != nil {
		t.Fatalf("valid certificate: %v", err)
	}
	if err := handshake("sensor-2"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("revoked certificate: %v", err)
	}
}
