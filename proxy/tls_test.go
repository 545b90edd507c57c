package proxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-mqtt/moat/internal/devpki"
)

func TestLoadCRLs(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, d := range []string{a, b} {
		if _, err := devpki.Ensure(d, "c1"); err != nil {
			t.Fatal(err)
		}
	}
	crl, err := devpki.Revoke(b, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := loadCRLs(crl, filepath.Join(b, devpki.CACert)); err != nil {
		t.Fatalf("own CA's CRL: %v", err)
	}
	// Signed by another CA: refused, it could revoke anyone or no one.
	if _, err := loadCRLs(crl, filepath.Join(a, devpki.CACert)); err == nil || !strings.Contains(err.Error(), "not signed") {
		t.Fatalf("foreign CRL: %v", err)
	}
	junk := filepath.Join(a, "junk.crl")
	os.WriteFile(junk, []byte("not a crl"), 0o600)
	if _, err := loadCRLs(junk, filepath.Join(a, devpki.CACert)); err == nil {
		t.Fatal("junk accepted")
	}
}
