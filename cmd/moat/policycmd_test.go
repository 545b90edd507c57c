package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPolicyTestCommand(t *testing.T) {
	if code, out, errs := runCmd("policy", "test", "../../policies/plant"); code != 0 || !strings.Contains(out, "0 failed") {
		t.Fatalf("plant tests: %d %s %s", code, out, errs)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "p.rego"), []byte("package moat.authz\nimport rego.v1\nallow if input.action == \"connect\"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "p_test.rego"), []byte("package moat.authz_test\nimport rego.v1\nimport data.moat.authz\ntest_publish_allowed if authz.allow with input as {\"action\": \"publish\"}\n"), 0o600)
	code, out, _ := runCmd("policy", "test", dir)
	if code != 1 || !strings.Contains(out, "FAIL") || !strings.Contains(out, "test_publish_allowed") {
		t.Fatalf("failing test: %d %s", code, out)
	}
	empty := t.TempDir()
	os.WriteFile(filepath.Join(empty, "p.rego"), []byte("package moat.authz\nallow := false\n"), 0o600)
	if code, _, errs := runCmd("policy", "test", empty); code != 1 || !strings.Contains(errs, "no tests") {
		t.Fatalf("no tests: %d %s", code, errs)
	}
	if code, _, errs := runCmd("policy", "test"); code != 1 || !strings.Contains(errs, "needs") {
		t.Fatalf("no paths: %d %s", code, errs)
	}
}

func TestPolicyEvalCommand(t *testing.T) {
	plant := "../../policies/plant"
	code, out, _ := runCmd("policy", "eval", "--policy", plant, "--action", "publish", "--topic", "sensors/sensor-7/temp", "--cn", "sensor-7", "--client-id", "sensor-7")
	if code != 0 || !strings.Contains(out, "decision: allow") {
		t.Fatalf("allowed: %d %s", code, out)
	}
	code, out, _ = runCmd("policy", "eval", "--policy", plant, "--action", "subscribe", "--topic", "$share/g/#", "--cn", "dashboard-1")
	if code != 1 || !strings.Contains(out, "decision: deny") || !strings.Contains(out, "reason: dashboard-1 may not subscribe #") {
		t.Fatalf("denied: %d %s", code, out)
	}
	in := filepath.Join(t.TempDir(), "in.json")
	os.WriteFile(in, []byte(`{"version": 1, "action": "connect", "client": {"id": "controller", "auth_method": "certificate", "cert": {"subject": {"common_name": "controller"}}}}`), 0o600)
	if code, out, _ := runCmd("policy", "eval", "--policy", plant, "--input", in); code != 0 || !strings.Contains(out, "decision: allow") {
		t.Fatalf("--input: %d %s", code, out)
	}
	if code, _, errs := runCmd("policy", "eval", "--policy", plant, "--action", "dance"); code != 1 || !strings.Contains(errs, "--action") {
		t.Fatalf("bad action: %d %s", code, errs)
	}
}

// --explain shows the specialised rules, and why a policy falls back.
func TestPolicyEvalExplain(t *testing.T) {
	plant := "../../policies/plant"
	code, out, _ := runCmd("policy", "eval", "--policy", plant, "--action", "publish", "--topic", "sensors/sensor-7/t", "--cn", "sensor-7", "--client-id", "sensor-7", "--explain")
	if code != 0 || !strings.Contains(out, "specialised rules (publish): evaluated by moat natively") ||
		!strings.Contains(out, `allow if moat.topic_matches_with("sensors/{id}/#", {"id": "sensor-7"}, input.topic)`) {
		t.Fatalf("plant sensor: %d %s", code, out)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "p.rego"), []byte("package moat.authz\nimport rego.v1\ndefault allow := false\nallow if count(input.topic_levels) < 3\n"), 0o600)
	code, out, _ = runCmd("policy", "eval", "--policy", dir, "--action", "receive", "--topic", "a/b", "--explain")
	if code != 0 || !strings.Contains(out, "every request evaluated in full: moat cannot evaluate") {
		t.Fatalf("count(): %d %s", code, out)
	}
	os.WriteFile(filepath.Join(dir, "p.rego"), []byte("package moat.authz\nimport rego.v1\ndefault allow := true\nallow := false if input.topic == \"x\"\n"), 0o600)
	if _, out, _ = runCmd("policy", "eval", "--policy", dir, "--action", "receive", "--topic", "a/b", "--explain"); !strings.Contains(out, "the allow rules must all be") {
		t.Fatalf("default true: %s", out)
	}
}
