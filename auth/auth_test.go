package auth

import (
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Hashes written by mosquitto_passwd 2.0.11 (-H sha512-pbkdf2 and -H sha512).
const (
	mosquitto7 = "alice:$7$101$TawdmeS3RqdBeMv/$siY1u2PFCSozUONSp2Zx6on5o2NRPbQJskyOh6Hl8T8BXoaSgeq/i//aF1xbr7oIO3aT5wS+8rQsscdmySMu8w=="
	mosquitto6 = "bob:$6$8bEblqLUwqcxAfL1$r9Ia/2HdiJPkUsnGTU5oeW7Tyaz0M1cmL4JBnZvQ/dYV78pLp3tVKg7xRl1SvjrxF9/Y55IQJvyWO67MkpvYkQ=="
)

func parse(t *testing.T, content string) *Passwords {
	t.Helper()
	p, err := ParsePasswords(strings.NewReader(content), "test")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMosquittoHashes(t *testing.T) {
	p := parse(t, "# a comment\n\n"+mosquitto7+"\n"+mosquitto6+"\n")
	if p.Len() != 2 {
		t.Fatalf("%d users", p.Len())
	}
	for _, c := range []struct {
		user, pw string
		ok       bool
	}{
		{"alice", "secret", true}, {"alice", "Secret", false}, {"alice", "", false},
		{"bob", "hunter2", true}, {"bob", "secret", false},
		{"carol", "secret", false},
	} {
		if got := p.Check(c.user, []byte(c.pw)); got != c.ok {
			t.Errorf("Check(%s, %q) = %v", c.user, c.pw, got)
		}
	}
}

// A file written by the mosquitto_passwd on this machine reads back.
func TestMosquittoPasswdFile(t *testing.T) {
	bin, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		t.Fatal("mosquitto_passwd not found: install mosquitto (`apt-get install -y mosquitto`; .ci/run does)")
	}
	path := filepath.Join(t.TempDir(), "pw")
	for _, args := range [][]string{{"-c", "-b", path, "u1", "pw one"}, {"-H", "sha512", "-b", path, "u2", "pw:two"}} {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd %v: %v %s", args, err, out)
		}
	}
	p, err := LoadPasswords(path)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Check("u1", []byte("pw one")) || !p.Check("u2", []byte("pw:two")) || p.Check("u1", []byte("pw:two")) {
		t.Fatal("mosquitto_passwd file not checked right")
	}
}

func TestMoatHashes(t *testing.T) {
	for _, algo := range []string{Argon2id, Bcrypt} {
		h, err := HashPassword([]byte("s3cret"), algo)
		if err != nil {
			t.Fatal(err)
		}
		p := parse(t, "dave:"+h+"\n")
		if !p.Check("dave", []byte("s3cret")) || p.Check("dave", []byte("s3cret ")) {
			t.Errorf("%s: %s", algo, h)
		}
	}
	if _, err := HashPassword(make([]byte, 73), Bcrypt); err == nil {
		t.Error("bcrypt accepted 73 bytes")
	}
}

func TestBadPasswordFiles(t *testing.T) {
	for name, content := range map[string]string{
		"plain text":      "alice:secret\n",
		"no colon":        "alice\n",
		"empty user":      ":$6$abc$def\n",
		"unknown hash":    "alice:$1$abc$def\n",
		"bad base64":      "alice:$7$101$!!!$abc\n",
		"huge iterations": "alice:$7$99999999999$c2FsdA==$c2FsdA==\n",
		"argon2 huge m":   "alice:$argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHQ$c2FsdHNhbHRzYWx0c2FsdA\n",
		"argon2 bad":      "alice:$argon2id$v=19$m=65536$c2FsdA$c2FsdA\n",
		"bcrypt bad":      "alice:$2b$99$abc\n",
		"duplicate":       mosquitto7 + "\n" + mosquitto7 + "\n",
	} {
		if _, err := ParsePasswords(strings.NewReader(content), "pw"); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !strings.Contains(err.Error(), "pw:") {
			t.Errorf("%s: error does not name file and line: %v", name, err)
		}
	}
}

func TestSetPassword(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pw")
	h1, _ := HashPassword([]byte("one"), Bcrypt)
	h2, _ := HashPassword([]byte("two"), Bcrypt)
	if err := SetPassword(path, "a", h1); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path, []byte("# keep me\n"+mosquitto6+"\na:"+h1+"\n"), 0o600)
	if err := SetPassword(path, "a", h2); err != nil {
		t.Fatal(err)
	}
	if err := SetPassword(path, "c", h1); err != nil {
		t.Fatal(err)
	}
	p, err := LoadPasswords(path)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Check("a", []byte("two")) || !p.Check("bob", []byte("hunter2")) || !p.Check("c", []byte("one")) || p.Len() != 3 {
		t.Fatal("update lost something")
	}
	data, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(data), "# keep me\n") {
		t.Errorf("comment lost:\n%s", data)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode().Perm())
	}
	if err := SetPassword(path, "a", ""); err != nil {
		t.Fatal(err)
	}
	if p, _ := LoadPasswords(path); p.Len() != 2 || p.Check("a", []byte("two")) {
		t.Fatal("delete failed")
	}
	if err := SetPassword(path, "nobody", ""); err == nil {
		t.Error("deleting a missing user succeeded")
	}
	if err := SetPassword(path, "x:y", h1); err == nil {
		t.Error("user with ':' accepted")
	}
}

func TestAuthenticate(t *testing.T) {
	pw := parse(t, mosquitto7+"\n")
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: "sensor-7"}, DNSNames: []string{"s7.plant"},
		URIs: []*url.URL{{Scheme: "spiffe", Host: "plant", Path: "/sensor/7"}}, Raw: []byte("der")}
	a, err := New(Config{Passwords: pw})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		c    Credentials
		want Identity
		err  error
	}{
		{"certificate", Credentials{Cert: cert}, Identity{Method: Certificate, Name: "sensor-7"}, nil},
		{"password", Credentials{Username: "alice", HasUsername: true, Password: []byte("secret"), HasPassword: true}, Identity{Method: Password, Name: "alice", Username: "alice"}, nil},
		{"wrong password", Credentials{Username: "alice", HasUsername: true, Password: []byte("nope"), HasPassword: true}, Identity{}, ErrBadCredentials},
		{"unknown user", Credentials{Username: "mallory", HasUsername: true, Password: []byte("secret"), HasPassword: true}, Identity{}, ErrBadCredentials},
		{"username only", Credentials{Username: "alice", HasUsername: true}, Identity{}, ErrNotAuthorized},
		{"nothing", Credentials{}, Identity{}, ErrNotAuthorized},
		{"certificate first", Credentials{Cert: cert, Username: "alice", HasUsername: true, Password: []byte("nope"), HasPassword: true}, Identity{Method: Certificate, Name: "sensor-7"}, nil},
	}
	for _, c := range cases {
		got, err := a.Authenticate(&c.c)
		if !errors.Is(err, c.err) || got.Method != c.want.Method || got.Name != c.want.Name || got.Username != c.want.Username {
			t.Errorf("%s: %+v, %v", c.name, got, err)
		}
	}
	// Password first: a wrong password is refused even with a certificate.
	a, _ = New(Config{Passwords: pw, Methods: []string{Password, Certificate}})
	if _, err := a.Authenticate(&Credentials{Cert: cert, Username: "alice", HasUsername: true, Password: []byte("nope"), HasPassword: true}); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("password first: %v", err)
	}
	a, _ = New(Config{Anonymous: true})
	if id, err := a.Authenticate(&Credentials{}); err != nil || id.Method != Anonymous {
		t.Errorf("anonymous: %+v %v", id, err)
	}
	sum := sha256.Sum256(cert.Raw)
	for from, want := range map[string]string{FromDNSSAN: "s7.plant", FromURISAN: "spiffe://plant/sensor/7", FromFingerprint: hex.EncodeToString(sum[:])} {
		a, _ := New(Config{CertIdentity: from})
		id, err := a.Authenticate(&Credentials{Cert: cert})
		if err != nil || id.Name != want {
			t.Errorf("%s: %+v %v", from, id, err)
		}
	}
	if _, err := New(Config{Methods: []string{Password}}); err == nil {
		t.Error("password method without a file accepted")
	}
	if _, err := New(Config{CertIdentity: "email"}); err == nil {
		t.Error("unknown certificate identity accepted")
	}
}

func FuzzParsePasswords(f *testing.F) {
	f.Add(mosquitto7 + "\n" + mosquitto6)
	f.Add("a:$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$c2FsdHNhbHRzYWx0c2FsdA\n")
	f.Add("a:$2b$04$abcdefghijklmnopqrstuu0123456789012345678901234567890\n")
	f.Fuzz(func(t *testing.T, content string) {
		// Parsing only: verifying a fuzzed argon2id hash may cost up to
		// 256 MiB by design; verification is covered above.
		p, err := ParsePasswords(strings.NewReader(content), "fuzz")
		if err != nil {
			return
		}
		lines := 0
		for l := range strings.SplitSeq(content, "\n") {
			if l = strings.TrimRight(l, "\r"); strings.TrimSpace(l) != "" && !strings.HasPrefix(l, "#") {
				lines++
			}
		}
		if p.Len() != lines {
			t.Fatalf("%d users from %d lines: %q", p.Len(), lines, content)
		}
	})
}

func TestClientIDBinding(t *testing.T) {
	sensor := Identity{Method: Certificate, Name: "sensor-1"}
	for _, c := range []struct {
		bind, id string
		clean    bool
		assigned string
		ok       bool
	}{
		{BindNone, "anything", false, "", true},
		{BindIdentity, "sensor-1", false, "", true},
		{BindIdentity, "sensor-10", true, "", false}, // another device's id: takeover
		{BindIdentity, "", true, "sensor-1", true},
		{BindIdentity, "", false, "", false},
		{BindPrefix, "sensor-1-backup", false, "", true},
		{BindPrefix, "sensor-10", false, "", false},
		{BindPrefix, "sensor-1", false, "", true},
	} {
		a, err := New(Config{BindClientID: c.bind})
		if err != nil {
			t.Fatal(err)
		}
		assigned, err := a.ClientID(sensor, c.id, c.clean)
		if (err == nil) != c.ok || assigned != c.assigned || (err != nil && !errors.Is(err, ErrClientID)) {
			t.Errorf("%s %q clean=%v: %q %v", c.bind, c.id, c.clean, assigned, err)
		}
	}
	a, _ := New(Config{BindClientID: BindIdentity, Anonymous: true})
	if _, err := a.ClientID(Identity{Method: Anonymous}, "whatever", false); err != nil {
		t.Errorf("anonymous: %v", err)
	}
	if _, err := New(Config{BindClientID: "loose"}); err == nil {
		t.Error("unknown binding accepted")
	}
}
