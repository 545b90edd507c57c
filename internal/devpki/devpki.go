// Package devpki writes a development PKI: a CA, a server certificate for
// localhost and loopback addresses, and client certificates. Keys are
// generated on the machine that uses them and written with mode 0600; none
// is ever shipped. Not for production: a real deployment brings its own.
package devpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// File names inside the folder.
const (
	CACert     = "ca.crt"
	CAKey      = "ca.key"
	ServerCert = "server.crt"
	ServerKey  = "server.key"
)

// ClientFiles returns the certificate and key paths of a client certificate.
func ClientFiles(dir, name string) (cert, key string) {
	return filepath.Join(dir, "client-"+name+".crt"), filepath.Join(dir, "client-"+name+".key")
}

// Ensure creates dir and, if missing, the CA and server certificate, then a
// client certificate for each name that has none. It returns the files it
// wrote.
func Ensure(dir string, clients ...string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var wrote []string
	caCertPath, caKeyPath := filepath.Join(dir, CACert), filepath.Join(dir, CAKey)
	if !exists(caCertPath) || !exists(caKeyPath) {
		if err := writeCA(caCertPath, caKeyPath); err != nil {
			return nil, err
		}
		wrote = append(wrote, caCertPath, caKeyPath)
	}
	ca, err := tls.LoadX509KeyPair(caCertPath, caKeyPath)
	if err != nil {
		return nil, fmt.Errorf("loading dev CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return nil, err
	}
	srvCert, srvKey := filepath.Join(dir, ServerCert), filepath.Join(dir, ServerKey)
	if !exists(srvCert) || !exists(srvKey) {
		tmpl := leafTemplate("moat dev server")
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
		if err := writeLeaf(tmpl, caCert, ca.PrivateKey, srvCert, srvKey); err != nil {
			return nil, err
		}
		wrote = append(wrote, srvCert, srvKey)
	}
	for _, name := range clients {
		if name == "" {
			return nil, errors.New("client certificate name is empty")
		}
		cert, key := ClientFiles(dir, name)
		if exists(cert) && exists(key) {
			continue
		}
		tmpl := leafTemplate(name)
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		if err := writeLeaf(tmpl, caCert, ca.PrivateKey, cert, key); err != nil {
			return nil, err
		}
		wrote = append(wrote, cert, key)
	}
	return wrote, nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n
}

func writeCA(certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "moat dev CA", Organization: []string{"moat development"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	return writePair(der, key, certPath, keyPath)
}

func leafTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"moat development"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(90 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
}

func writeLeaf(tmpl, ca *x509.Certificate, caKey crypto.PrivateKey, certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	return writePair(der, key, certPath, keyPath)
}

func writePair(der []byte, key *ecdsa.PrivateKey, certPath, keyPath string) error {
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// CRL is the revocation list Revoke writes.
const CRL = "crl.pem"

// Revoke writes dir/crl.pem, signed by the dev CA, revoking the client
// certificates of names (which must exist), and returns its path.
func Revoke(dir string, names ...string) (string, error) {
	ca, err := tls.LoadX509KeyPair(filepath.Join(dir, CACert), filepath.Join(dir, CAKey))
	if err != nil {
		return "", fmt.Errorf("loading dev CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return "", err
	}
	tmpl := &x509.RevocationList{Number: serial(), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(7 * 24 * time.Hour)}
	for _, n := range names {
		certPath, _ := ClientFiles(dir, n)
		data, err := os.ReadFile(certPath)
		if err != nil {
			return "", err
		}
		b, _ := pem.Decode(data)
		if b == nil {
			return "", fmt.Errorf("%s: not PEM", certPath)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return "", err
		}
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: time.Now()})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, caCert, ca.PrivateKey.(crypto.Signer))
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, CRL)
	return path, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644)
}
