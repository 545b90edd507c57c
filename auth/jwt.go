package auth

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// JWT is the token method: a JWT in CONNECT's password field, verified
// against a JWKS (a file, or an HTTPS URL fetched, cached and refreshed).
type JWT struct {
	// JWKSFile or JWKSURL (https://) hold the verification keys.
	JWKSFile string
	JWKSURL  string
	// HTTPClient fetches JWKSURL; nil uses one with a 10 s timeout.
	HTTPClient *http.Client
	// Refresh is how often the URL is fetched again (default 1h);
	// MinRefresh bounds the refetches an unknown "kid" triggers (default
	// 30s), so tokens with made-up key ids cannot hammer the key server.
	Refresh, MinRefresh time.Duration
	// Issuer and Audience must match "iss" and one of "aud". Required.
	Issuer, Audience string
	// Algorithms accepted: RS256, ES256, EdDSA (default all three); HS256
	// only with HMACSecret set.
	Algorithms []string
	HMACSecret []byte
	// Leeway for exp, nbf and iat (default 30s).
	Leeway time.Duration
	// UsernameClaim names the claim that is the identity (default "sub").
	// With MatchUsername, CONNECT's username must equal it; otherwise the
	// username may be absent or anything.
	UsernameClaim string
	MatchUsername bool

	now func() time.Time

	mu        sync.Mutex
	keys      *jose.JSONWebKeySet
	fetched   time.Time // last fetch attempt
	refreshed time.Time // last successful fetch
}

// Token methods.
const JWTMethod = "jwt"

func (j *JWT) init() error {
	if (j.JWKSFile == "") == (j.JWKSURL == "") && j.HMACSecret == nil {
		return errors.New("jwt: set one of jwks_file or jwks_url (or an HS256 secret)")
	}
	if j.JWKSURL != "" && !strings.HasPrefix(j.JWKSURL, "https://") {
		return errors.New("jwt: jwks_url must be https://")
	}
	if j.Issuer == "" || j.Audience == "" {
		return errors.New("jwt: issuer and audience are required: a token for another service must not open this one")
	}
	if len(j.Algorithms) == 0 {
		j.Algorithms = []string{"RS256", "ES256", "EdDSA"}
	}
	for _, a := range j.Algorithms {
		switch a {
		case "RS256", "ES256", "EdDSA":
		case "HS256":
			if len(j.HMACSecret) < 32 {
				return errors.New("jwt: HS256 needs a secret of at least 32 bytes")
			}
		default:
			return fmt.Errorf("jwt: algorithm %q: use RS256, ES256, EdDSA (or HS256 with a secret)", a)
		}
	}
	if j.Refresh <= 0 {
		j.Refresh = time.Hour
	}
	if j.MinRefresh <= 0 {
		j.MinRefresh = 30 * time.Second
	}
	if j.Leeway <= 0 {
		j.Leeway = 30 * time.Second
	}
	if j.UsernameClaim == "" {
		j.UsernameClaim = "sub"
	}
	if j.now == nil {
		j.now = time.Now
	}
	if j.HTTPClient == nil {
		j.HTTPClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}}}
	}
	if j.JWKSFile != "" || j.JWKSURL != "" {
		if err := j.load(context.Background()); err != nil {
			return err
		}
	}
	return nil
}

// looksLikeJWT reports whether a password is a compact JWS.
func looksLikeJWT(p []byte) bool {
	return len(p) > 20 && strings.Count(string(p), ".") == 2 && !strings.ContainsAny(string(p), " \t\n")
}

// load reads or fetches the key set.
func (j *JWT) load(ctx context.Context) error {
	var data []byte
	var err error
	if j.JWKSFile != "" {
		data, err = os.ReadFile(j.JWKSFile)
	} else {
		data, err = j.fetch(ctx)
	}
	if err != nil {
		return fmt.Errorf("jwt: loading the JWKS: %w", err)
	}
	var ks jose.JSONWebKeySet
	if err := json.Unmarshal(data, &ks); err != nil {
		return fmt.Errorf("jwt: the JWKS is not valid: %w", err)
	}
	j.keys = &ks
	j.refreshed = j.now()
	return nil
}

func (j *JWT) fetch(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.JWKSURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := j.HTTPClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", j.JWKSURL, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
}

// key finds the key for kid, refetching the URL when it is due, or when
// kid is unknown and the last attempt is older than MinRefresh.
func (j *JWT) key(kid string) (any, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.JWKSURL != "" {
		now := j.now()
		due := now.Sub(j.refreshed) >= j.Refresh
		unknown := j.keys == nil || len(j.keys.Key(kid)) == 0
		if (due || unknown) && now.Sub(j.fetched) >= j.MinRefresh {
			j.fetched = now
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := j.load(ctx)
			cancel()
			if err != nil && j.keys == nil {
				return nil, err
			}
			// On a failed refresh the keys already held stay in use.
		}
	}
	if j.keys == nil {
		return nil, errors.New("no key set")
	}
	ks := j.keys.Key(kid)
	if kid == "" && len(j.keys.Keys) == 1 {
		ks = j.keys.Keys
	}
	if len(ks) == 0 {
		return nil, fmt.Errorf("unknown key id %q", kid)
	}
	return ks[0].Key, nil
}

// verify checks a token and returns the identity and its claims.
func (j *JWT) verify(token []byte, c *Credentials) (Identity, map[string]any, time.Time, error) {
	algs := make([]jose.SignatureAlgorithm, len(j.Algorithms))
	for i, a := range j.Algorithms {
		algs[i] = jose.SignatureAlgorithm(a)
	}
	tok, err := jwt.ParseSigned(string(token), algs)
	if err != nil {
		return Identity{}, nil, time.Time{}, fmt.Errorf("%w: token: %v", ErrBadCredentials, err)
	}
	if len(tok.Headers) != 1 {
		return Identity{}, nil, time.Time{}, fmt.Errorf("%w: token has %d signatures", ErrBadCredentials, len(tok.Headers))
	}
	h := tok.Headers[0]
	var key any
	if h.Algorithm == "HS256" {
		key = j.HMACSecret
	} else if key, err = j.key(h.KeyID); err != nil {
		return Identity{}, nil, time.Time{}, fmt.Errorf("%w: %v", ErrBadCredentials, err)
	}
	var std jwt.Claims
	all := map[string]any{}
	if err := tok.Claims(key, &std, &all); err != nil {
		return Identity{}, nil, time.Time{}, fmt.Errorf("%w: signature: %v", ErrBadCredentials, err)
	}
	if err := std.ValidateWithLeeway(jwt.Expected{Issuer: j.Issuer, AnyAudience: jwt.Audience{j.Audience}, Time: j.now()}, j.Leeway); err != nil {
		return Identity{}, nil, time.Time{}, fmt.Errorf("%w: claims: %v", ErrBadCredentials, err)
	}
	if std.Expiry == nil {
		return Identity{}, nil, time.Time{}, fmt.Errorf("%w: token has no exp", ErrBadCredentials)
	}
	name, _ := all[j.UsernameClaim].(string)
	if name == "" {
		return Identity{}, nil, time.Time{}, fmt.Errorf("%w: token has no %q claim", ErrBadCredentials, j.UsernameClaim)
	}
	if j.MatchUsername && (!c.HasUsername || c.Username != name) {
		return Identity{}, nil, time.Time{}, fmt.Errorf("%w: username does not match the token's %q", ErrBadCredentials, j.UsernameClaim)
	}
	return Identity{Method: JWTMethod, Name: name, Username: name}, all, std.Expiry.Time().Add(j.Leeway), nil
}
