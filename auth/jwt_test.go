package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

type signer struct {
	kid string
	alg jose.SignatureAlgorithm
	key any // private
	pub any
}

func newSigners(t *testing.T) []signer {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rs, _ := rsa.GenerateKey(rand.Reader, 2048)
	edPub, ed, _ := ed25519.GenerateKey(rand.Reader)
	return []signer{
		{"ec1", jose.ES256, ec, &ec.PublicKey},
		{"rsa1", jose.RS256, rs, &rs.PublicKey},
		{"ed1", jose.EdDSA, ed, edPub},
	}
}

func jwks(ss ...signer) []byte {
	var ks jose.JSONWebKeySet
	for _, s := range ss {
		ks.Keys = append(ks.Keys, jose.JSONWebKey{Key: s.pub, KeyID: s.kid, Algorithm: string(s.alg), Use: "sig"})
	}
	b, _ := json.Marshal(ks)
	return b
}

func sign(t *testing.T, s signer, claims map[string]any) []byte {
	t.Helper()
	sg, err := jose.NewSigner(jose.SigningKey{Algorithm: s.alg, Key: s.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", s.kid))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(sg).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return []byte(tok)
}

func claims(mod map[string]any) map[string]any {
	now := time.Now()
	c := map[string]any{"iss": "https://idp.plant", "aud": "moat", "sub": "sensor-4", "exp": now.Add(time.Hour).Unix(),
		"nbf": now.Add(-time.Minute).Unix(), "iat": now.Unix(), "tenant": "acme"}
	for k, v := range mod {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

func TestJWT(t *testing.T) {
	ss := newSigners(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "jwks.json")
	os.WriteFile(file, jwks(ss...), 0o600)
	a, err := New(Config{JWT: &JWT{JWKSFile: file, Issuer: "https://idp.plant", Audience: "moat"}})
	if err != nil {
		t.Fatal(err)
	}
	try := func(tok []byte, user string) (Identity, error) {
		return a.Authenticate(&Credentials{Password: tok, HasPassword: true, Username: user, HasUsername: user != ""})
	}
	for _, s := range ss {
		id, err := try(sign(t, s, claims(nil)), "")
		if err != nil || id.Method != JWTMethod || id.Name != "sensor-4" || id.Claims["tenant"] != "acme" || id.Expires.IsZero() {
			t.Errorf("%s: %+v %v", s.alg, id, err)
		}
	}
	other := newSigners(t)[0] // same kid, another key
	for name, tok := range map[string][]byte{
		"expired":         sign(t, ss[0], claims(map[string]any{"exp": time.Now().Add(-time.Hour).Unix()})),
		"not yet valid":   sign(t, ss[0], claims(map[string]any{"nbf": time.Now().Add(time.Hour).Unix()})),
		"wrong audience":  sign(t, ss[0], claims(map[string]any{"aud": "another-service"})),
		"wrong issuer":    sign(t, ss[0], claims(map[string]any{"iss": "https://evil"})),
		"no exp":          sign(t, ss[0], claims(map[string]any{"exp": nil})),
		"no sub":          sign(t, ss[0], claims(map[string]any{"sub": nil})),
		"unknown kid":     sign(t, signer{"nope", ss[0].alg, ss[0].key, nil}, claims(nil)),
		"forged":          sign(t, other, claims(nil)),
		"alg none":        []byte("eyJhbGciOiJub25lIn0.eyJzdWIiOiJzZW5zb3ItNCJ9.c2lnbmF0dXJlc2lnbmF0dXJl"),
		"hs256 not on":    hs256(t, []byte(strings.Repeat("k", 32)), claims(nil)),
		"tampered claims": tamper(sign(t, ss[0], claims(nil))),
	} {
		if id, err := try(tok, ""); !errors.Is(err, ErrBadCredentials) {
			t.Errorf("%s: accepted as %+v (%v)", name, id, err)
		}
	}
	// Username required to match the subject.
	a, _ = New(Config{JWT: &JWT{JWKSFile: file, Issuer: "https://idp.plant", Audience: "moat", MatchUsername: true}})
	if _, err := a.Authenticate(&Credentials{Password: sign(t, ss[0], claims(nil)), HasPassword: true, Username: "sensor-5", HasUsername: true}); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("username mismatch: %v", err)
	}
	if _, err := a.Authenticate(&Credentials{Password: sign(t, ss[0], claims(nil)), HasPassword: true, Username: "sensor-4", HasUsername: true}); err != nil {
		t.Errorf("username match: %v", err)
	}
	for name, j := range map[string]*JWT{
		"no audience": {JWKSFile: file, Issuer: "x"},
		"http url":    {JWKSURL: "http://127.0.0.1/jwks", Issuer: "x", Audience: "y"},
		"bad alg":     {JWKSFile: file, Issuer: "x", Audience: "y", Algorithms: []string{"none"}},
		"short hmac":  {Issuer: "x", Audience: "y", Algorithms: []string{"HS256"}, HMACSecret: []byte("short")},
	} {
		if _, err := New(Config{JWT: j}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func hs256(t *testing.T, key []byte, c map[string]any) []byte {
	sg, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: key}, nil)
	tok, err := jwt.Signed(sg).Claims(c).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return []byte(tok)
}

func tamper(tok []byte) []byte {
	parts := strings.Split(string(tok), ".")
	parts[1] = strings.TrimRight(parts[1], "=") + "A"
	return []byte(strings.Join(parts, "."))
}

func TestJWTHS256WhenEnabled(t *testing.T) {
	key := []byte(strings.Repeat("k", 32))
	a, err := New(Config{JWT: &JWT{Issuer: "https://idp.plant", Audience: "moat", Algorithms: []string{"HS256"}, HMACSecret: key}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Authenticate(&Credentials{Password: hs256(t, key, claims(nil)), HasPassword: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Authenticate(&Credentials{Password: hs256(t, []byte(strings.Repeat("x", 32)), claims(nil)), HasPassword: true}); err == nil {
		t.Fatal("wrong HMAC key accepted")
	}
}

// A JWKS URL is fetched once, refetched for an unknown kid at most every
// MinRefresh, and a new key is picked up.
func TestJWKSURL(t *testing.T) {
	ss := newSigners(t)
	var served atomic.Value
	served.Store(jwks(ss[0]))
	var fetches atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		w.Write(served.Load().([]byte))
	}))
	defer srv.Close()
	now := time.Now()
	j := &JWT{JWKSURL: srv.URL + "/jwks", HTTPClient: srv.Client(), Issuer: "https://idp.plant", Audience: "moat", MinRefresh: time.Minute}
	j.now = func() time.Time { return now }
	a, err := New(Config{JWT: j})
	if err != nil {
		t.Fatal(err)
	}
	check := func(s signer) error {
		_, err := a.Authenticate(&Credentials{Password: sign(t, s, claims(nil)), HasPassword: true})
		return err
	}
	if err := check(ss[0]); err != nil || fetches.Load() != 1 {
		t.Fatalf("known key: %v, %d fetches", err, fetches.Load())
	}
	// A new key is published; the first token with its kid triggers a
	// refetch, a flood of unknown kids does not.
	served.Store(jwks(ss[0], ss[1]))
	now = now.Add(2 * time.Minute)
	if err := check(ss[1]); err != nil || fetches.Load() != 2 {
		t.Fatalf("new key: %v, %d fetches", err, fetches.Load())
	}
	for range 20 {
		check(signer{"made-up", ss[0].alg, ss[0].key, nil})
	}
	if n := fetches.Load(); n != 2 {
		t.Fatalf("%d fetches after a flood of unknown kids", n)
	}
}
