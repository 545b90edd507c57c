package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-mqtt/moat/auth"
)

func TestPasswd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	for _, c := range []struct{ user, pw, algo string }{{"alice", "a secret", "argon2id"}, {"bob", "b secret", "bcrypt"}} {
		stdin = strings.NewReader(c.pw + "\n")
		if code, out, errs := runCmd("passwd", "--hash", c.algo, path, c.user); code != 0 || !strings.Contains(out, c.user) {
			t.Fatalf("passwd %s: %d %s %s", c.user, code, out, errs)
		}
	}
	p, err := auth.LoadPasswords(path)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Check("alice", []byte("a secret")) || !p.Check("bob", []byte("b secret")) || p.Check("alice", []byte("b secret")) {
		t.Fatal("passwords not as set")
	}
	if code, _, _ := runCmd("passwd", "-D", path, "bob"); code != 0 {
		t.Fatal("delete failed")
	}
	stdin = strings.NewReader("")
	if code, _, errs := runCmd("passwd", path, "carol"); code != 1 || !strings.Contains(errs, "no password") {
		t.Fatalf("no password: %d %s", code, errs)
	}
	if code, _, errs := runCmd("passwd", path); code != 1 || !strings.Contains(errs, "usage") {
		t.Fatalf("usage: %d %s", code, errs)
	}
}
