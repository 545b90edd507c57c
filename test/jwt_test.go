package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// issuer signs test tokens with an ES256 key published in a JWKS file.
type issuer struct {
	key  *ecdsa.PrivateKey
	jwks string
}

func newIssuer(t testing.TB) *issuer {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return &issuer{key: key, jwks: path}
}

func (is *issuer) token(t testing.TB, sub, tenant, aud string, exp time.Duration) []byte {
	now := time.Now()
	return is.sign(t, "k1", map[string]any{"iss": "https://idp.test", "aud": aud, "sub": sub, "tenant": tenant,
		"exp": now.Add(exp).Unix(), "nbf": now.Add(-time.Minute).Unix()})
}

func (is *issuer) sign(t testing.TB, kid string, claims map[string]any) []byte {
	sg, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: is.key}, (&jose.SignerOptions{}).WithHeader("kid", kid))
	tok, err := jwt.Signed(sg).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return []byte(tok)
}

// Tokens from the password field, verified against a JWKS; their claims
// reach the policy (the multi-tenant example reads the tenant claim); the
// connection ends when the token expires.
func TestJWTAuthentication(t *testing.T) {
	is := newIssuer(t)
	e := newEnv(t, func(c *config.Config) {
		c.Auth = config.Auth{JWT: &config.JWTAuth{JWKSFile: is.jwks, Issuer: "https://idp.test", Audience: "moat", Leeway: time.Second}}
		c.Policy = &config.Policy{Mode: config.ModeEnforce, Paths: []string{"../policies/multitenant"},
			WatchInterval: config.OptDuration{Set: true}, DecisionLog: config.DecisionLog{File: "off"}}
	})
	connectTok := func(id string, tok []byte) byte {
		return connect5(t, e.plain, nil, &paho.Connect{ClientID: id, CleanStart: true, PasswordFlag: true, Password: tok})
	}
	if got := connectTok("acme-1", is.token(t, "alice", "acme", "moat", time.Hour)); got != 0 {
		t.Fatalf("valid token: 0x%02X", got)
	}
	now := time.Now()
	valid := func(mod map[string]any) map[string]any {
		c := map[string]any{"iss": "https://idp.test", "aud": "moat", "sub": "alice", "tenant": "acme", "exp": now.Add(time.Hour).Unix()}
		for k, v := range mod {
			c[k] = v
		}
		return c
	}
	for name, tok := range map[string][]byte{
		"wrong audience": is.token(t, "alice", "acme", "other", time.Hour),
		"expired":        is.token(t, "alice", "acme", "moat", -time.Hour),
		"another key":    newIssuer(t).token(t, "alice", "acme", "moat", time.Hour),
		"not yet valid":  is.sign(t, "k1", valid(map[string]any{"nbf": now.Add(time.Hour).Unix()})),
		"wrong issuer":   is.sign(t, "k1", valid(map[string]any{"iss": "https://elsewhere"})),
		"unknown kid":    is.sign(t, "k9", valid(nil)),
	} {
		if got := connectTok("acme-2", tok); got != byte(codec.BadUsernameOrPassword) {
			t.Errorf("%s: CONNACK 0x%02X, want 0x86", name, got)
		}
	}
	// The tenant claim decides: acme may not use globex's client ids or topics.
	if got := connectTok("globex-1", is.token(t, "alice", "acme", "moat", time.Hour)); got != byte(codec.NotAuthorized) {
		t.Errorf("foreign client id: 0x%02X", got)
	}
	cl := paho5Client(t, e.plain, nil, "acme-7", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ack, err := cl.Connect(ctx, &paho.Connect{ClientID: "acme-7", CleanStart: true, PasswordFlag: true,
		Password: is.token(t, "bob", "acme", "moat", time.Hour)}); err != nil || ack.ReasonCode != 0 {
		t.Fatalf("connect: %+v %v", ack, err)
	}
	defer cl.Disconnect(&paho.Disconnect{})
	if r, err := cl.Publish(ctx, &paho.Publish{Topic: "tenants/acme/line1", QoS: 1, Payload: []byte("1")}); err != nil || r.ReasonCode >= 0x80 {
		t.Fatalf("own tenant: %+v %v", r, err)
	}
	if r, _ := cl.Publish(ctx, &paho.Publish{Topic: "tenants/globex/line1", QoS: 1, Payload: []byte("1")}); r == nil || r.ReasonCode != byte(codec.NotAuthorized) {
		t.Fatalf("another tenant: %+v", r)
	}
}

func TestJWTExpiryDisconnects(t *testing.T) {
	is := newIssuer(t)
	e := newEnv(t, func(c *config.Config) {
		c.Auth = config.Auth{JWT: &config.JWTAuth{JWKSFile: is.jwks, Issuer: "https://idp.test", Audience: "moat", Leeway: time.Second}}
	})
	raw := mqtttest.DialRaw(t, e.plain, nil)
	raw.V = codec.V5
	raw.SendPacket(&codec.Connect{Version: codec.V5, CleanStart: true, ClientID: "short", KeepAlive: 60,
		HasPassword: true, Password: is.token(t, "short", "acme", "moat", time.Second)})
	if ack, ok := raw.Expect(5 * time.Second).(*codec.Connack); !ok || ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %+v", ack)
	}
	start := time.Now()
	raw.ExpectDisconnect(codec.NotAuthorized, 10*time.Second)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("disconnected after %v", d)
	}
}
