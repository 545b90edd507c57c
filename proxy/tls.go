package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"

	"github.com/moat-mqtt/moat/config"
)

// serverTLS builds the TLS configuration of a listener from its files.
func serverTLS(c *config.ServerTLS) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("loading certificate %q and key %q: %w", c.CertFile, c.KeyFile, err)
	}
	tc := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"mqtt"},
	}
	if c.MinVersion == "1.3" {
		tc.MinVersion = tls.VersionTLS13
	}
	if c.ClientCAFile != "" {
		pool, err := loadPool(c.ClientCAFile)
		if err != nil {
			return nil, err
		}
		tc.ClientCAs = pool
	}
	if c.CRLFile != "" {
		revoked, err := loadCRLs(c.CRLFile, c.ClientCAFile)
		if err != nil {
			return nil, err
		}
		tc.VerifyConnection = revoked.check
	}
	switch c.ClientAuth {
	case "request":
		tc.ClientAuth = tls.RequestClientCert
	case "verify_if_given":
		tc.ClientAuth = tls.VerifyClientCertIfGiven
	case "require":
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	default:
		tc.ClientAuth = tls.NoClientCert
	}
	return tc, nil
}

// upstreamTLS builds the TLS configuration moat uses toward the broker.
func upstreamTLS(c *config.ClientTLS) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	if c.CAFile != "" {
		pool, err := loadPool(c.CAFile)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("loading upstream client certificate %q and key %q: %w", c.CertFile, c.KeyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	tc.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	return tc, nil
}

// revoked holds the serials revoked by each issuer's CRL.
type revoked map[string]map[string]bool // raw issuer -> serial (decimal) -> revoked

// loadCRLs reads PEM (or DER) certificate revocation lists and checks each
// is signed by a CA of the client CA bundle: a CRL nobody signed could
// revoke anyone, or be a typo that revokes no one.
func loadCRLs(path, caFile string) (revoked, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading CRL file: %w", err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading CA bundle: %w", err)
	}
	var cas []*x509.Certificate
	for rest := caPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			cas = append(cas, c)
		}
	}
	var ders [][]byte
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type == "X509 CRL" {
			ders = append(ders, b.Bytes)
		}
	}
	if len(ders) == 0 {
		ders = [][]byte{data} // DER
	}
	out := revoked{}
	for i, der := range ders {
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			return nil, fmt.Errorf("CRL file %q, list %d: %w", path, i+1, err)
		}
		signed := false
		for _, ca := range cas {
			if crl.CheckSignatureFrom(ca) == nil {
				signed = true
				break
			}
		}
		if !signed {
			return nil, fmt.Errorf("CRL file %q, list %d: not signed by a CA of %q", path, i+1, caFile)
		}
		set := out[string(crl.RawIssuer)]
		if set == nil {
			set = map[string]bool{}
			out[string(crl.RawIssuer)] = set
		}
		for _, e := range crl.RevokedCertificateEntries {
			set[e.SerialNumber.String()] = true
		}
	}
	return out, nil
}

// check refuses a handshake whose verified chain holds a revoked
// certificate.
func (r revoked) check(cs tls.ConnectionState) error {
	for _, chain := range cs.VerifiedChains {
		for _, c := range chain {
			if r[string(c.RawIssuer)][c.SerialNumber.String()] {
				return fmt.Errorf("certificate %q (serial %s) is revoked", c.Subject.CommonName, c.SerialNumber)
			}
		}
	}
	return nil
}

func loadPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA bundle %q holds no PEM certificates", path)
	}
	return pool, nil
}
