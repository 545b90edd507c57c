// Package auth establishes who a client is: from a verified client
// certificate, a password file or (later) a token, in a configured order,
// with anonymous access off unless enabled. It knows CONNECT's credential
// fields and the TLS state, nothing else of MQTT.
package auth

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Methods.
const (
	Anonymous   = "anonymous"
	Password    = "password"
	Certificate = "certificate"
)

// Certificate identity sources.
const (
	FromCommonName  = "common_name"
	FromDNSSAN      = "dns_san"
	FromURISAN      = "uri_san"
	FromFingerprint = "fingerprint"
)

// Errors. ErrBadCredentials is a wrong secret (MQTT 5 0x86, 3.x return
// code 4); ErrNotAuthorized is no acceptable credential at all (0x87 / 5).
var (
	ErrBadCredentials = errors.New("bad username or password")
	ErrNotAuthorized  = errors.New("no credentials and anonymous access is off")
)

// Identity is who a client proved to be.
type Identity struct {
	Method   string         // Anonymous, Password, JWTMethod or Certificate
	Name     string         // the verified name: the username, the token's subject, or the certificate's configured field
	Username string         // set by the password and token methods only
	Claims   map[string]any // a verified token's claims
	Expires  time.Time      // when a token stops being valid (plus leeway); zero: never
}

// Credentials are what a client presents: CONNECT's fields and the leaf
// certificate the TLS handshake verified (nil if none).
type Credentials struct {
	Username    string
	HasUsername bool
	Password    []byte
	HasPassword bool
	Cert        *x509.Certificate
}

// Config selects the methods.
type Config struct {
	// Methods in the order tried; the first one whose credential the
	// client presented decides. Empty: certificate, then password (those
	// configured).
	Methods []string
	// Anonymous admits clients that present no credential a method takes.
	Anonymous bool
	// Passwords is the loaded password file, nil if none.
	Passwords *Passwords
	// JWT verifies tokens in the password field, nil if not used.
	JWT *JWT
	// CertIdentity is the certificate field that names the client.
	CertIdentity string
	// BindClientID ties client ids to identities: BindNone, BindIdentity or
	// BindPrefix.
	BindClientID string
}

// Client id bindings.
const (
	BindNone     = "none"
	BindIdentity = "identity" // the client id is the identity
	BindPrefix   = "prefix"   // the identity, or the identity, "-" and anything
)

// ErrClientID is a client id the identity may not use.
var ErrClientID = errors.New("client id not allowed for this identity")

// Authenticator checks credentials. Safe for concurrent use.
type Authenticator struct {
	cfg Config
}

// New validates the configuration.
func New(cfg Config) (*Authenticator, error) {
	if cfg.CertIdentity == "" {
		cfg.CertIdentity = FromCommonName
	}
	switch cfg.CertIdentity {
	case FromCommonName, FromDNSSAN, FromURISAN, FromFingerprint:
	default:
		return nil, fmt.Errorf("certificate identity %q: use common_name, dns_san, uri_san or fingerprint", cfg.CertIdentity)
	}
	switch cfg.BindClientID {
	case "":
		cfg.BindClientID = BindNone
	case BindNone, BindIdentity, BindPrefix:
	default:
		return nil, fmt.Errorf("client id binding %q: use none, identity or prefix", cfg.BindClientID)
	}
	if cfg.JWT != nil {
		if err := cfg.JWT.init(); err != nil {
			return nil, err
		}
	}
	if len(cfg.Methods) == 0 {
		cfg.Methods = []string{Certificate}
		if cfg.JWT != nil {
			cfg.Methods = append(cfg.Methods, JWTMethod)
		}
		if cfg.Passwords != nil {
			cfg.Methods = append(cfg.Methods, Password)
		}
	}
	for _, m := range cfg.Methods {
		switch m {
		case JWTMethod:
			if cfg.JWT == nil {
				return nil, errors.New("method jwt needs a jwt section (jwks_file or jwks_url, issuer, audience)")
			}
		case Certificate:
		case Password:
			if cfg.Passwords == nil {
				return nil, errors.New("method password needs a password file")
			}
		default:
			return nil, fmt.Errorf("method %q: use certificate, jwt or password", m)
		}
	}
	return &Authenticator{cfg: cfg}, nil
}

// Authenticate decides who the client is. The first method, in the
// configured order, whose credential the client presented decides: a
// wrong password is refused even if a certificate would have done, so a
// credential is never silently ignored.
func (a *Authenticator) Authenticate(c *Credentials) (Identity, error) {
	for _, m := range a.cfg.Methods {
		switch m {
		case Certificate:
			if c.Cert == nil {
				continue
			}
			name := certName(c.Cert, a.cfg.CertIdentity)
			if name == "" {
				return Identity{}, fmt.Errorf("certificate: %w: it has no %s", ErrNotAuthorized, a.cfg.CertIdentity)
			}
			return Identity{Method: Certificate, Name: name}, nil
		case JWTMethod:
			if !c.HasPassword || !looksLikeJWT(c.Password) {
				continue
			}
			id, claims, exp, err := a.cfg.JWT.verify(c.Password, c)
			if err != nil {
				return Identity{}, fmt.Errorf("jwt: %w", err)
			}
			id.Claims, id.Expires = claims, exp
			return id, nil
		case Password:
			if !c.HasUsername || !c.HasPassword {
				continue
			}
			if !a.cfg.Passwords.Check(c.Username, c.Password) {
				return Identity{}, fmt.Errorf("password: %w", ErrBadCredentials)
			}
			return Identity{Method: Password, Name: c.Username, Username: c.Username}, nil
		}
	}
	if a.cfg.Anonymous {
		return Identity{Method: Anonymous}, nil
	}
	return Identity{}, ErrNotAuthorized
}

// ClientID checks the client id a client asked for against its identity,
// so that one principal cannot take over another's session by using its
// client id. An empty id with clean start is assigned the identity
// (returned as assigned); without clean start it is refused. Anonymous
// clients have no identity to bind to and are not checked.
func (a *Authenticator) ClientID(id Identity, clientID string, cleanStart bool) (assigned string, err error) {
	if a.cfg.BindClientID == BindNone || id.Method == Anonymous {
		return "", nil
	}
	switch {
	case clientID == "" && cleanStart:
		return id.Name, nil
	case clientID == id.Name:
		return "", nil
	case a.cfg.BindClientID == BindPrefix && strings.HasPrefix(clientID, id.Name+"-"):
		return "", nil
	}
	return "", fmt.Errorf("%w: %q may not use client id %q", ErrClientID, id.Name, clientID)
}

// certName is the configured identity field of a certificate: the first
// DNS or URI SAN (a SPIFFE id is a URI SAN), the subject CN, or the
// SHA-256 fingerprint of the DER.
func certName(c *x509.Certificate, from string) string {
	switch from {
	case FromDNSSAN:
		if len(c.DNSNames) > 0 {
			return c.DNSNames[0]
		}
	case FromURISAN:
		if len(c.URIs) > 0 {
			return c.URIs[0].String()
		}
	case FromFingerprint:
		sum := sha256.Sum256(c.Raw)
		return hex.EncodeToString(sum[:])
	default:
		return c.Subject.CommonName
	}
	return ""
}
