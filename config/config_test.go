package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// inDirWithCerts runs the test in a temporary folder holding empty files
// where the example configuration expects certificates.
func inDirWithCerts(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "certs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "policies", "plant"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"server.crt", "server.key", "ca.crt"} {
		if err := os.WriteFile(filepath.Join(dir, "certs", f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(dir)
}

func TestExampleConfig(t *testing.T) {
	data, err := os.ReadFile("../moat.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	inDirWithCerts(t)
	cfg, err := Parse(data)
	if err != nil {
		t.Fatalf("moat.example.yaml is invalid: %v", err)
	}
	if len(cfg.Listeners) != 2 || cfg.Listeners[0].TLS.ClientAuth != "verify_if_given" {
		t.Fatalf("unexpected listeners: %+v", cfg.Listeners)
	}
	if cfg.Limits.MaxPacketSize != 1<<20 || cfg.Limits.ConnectTimeout != 10*time.Second {
		t.Fatalf("limits: %+v", cfg.Limits)
	}
	p := cfg.Policy
	if p.Mode != ModeEnforce || p.Cache.Size != DefaultCacheSize || p.Cache.TTL != time.Minute || p.WatchInterval.D != 2*time.Second ||
		p.OnPublishDeny != "ack" || p.DecisionLog.File != "stderr" || p.EvalTimeout != DefaultEvalTimeout {
		t.Fatalf("policy defaults: %+v", p)
	}
}

func TestWatchOff(t *testing.T) {
	cfg, err := Parse([]byte("listeners: [{name: a, address: \"127.0.0.1:1883\"}]\nupstream: {address: \"127.0.0.1:1884\"}\nauth: {anonymous: true}\npolicy: {mode: allow_all, watch_interval: off}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Policy.WatchInterval.Set || cfg.Policy.WatchInterval.D != 0 {
		t.Fatalf("watch_interval off: %+v", cfg.Policy.WatchInterval)
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Parse([]byte(`
listeners: [{name: a, address: "127.0.0.1:1883"}]
upstream: {address: "127.0.0.1:1884"}
auth: {anonymous: true}
policy: {mode: allow_all}
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listeners[0].Transport != "tcp" || cfg.Limits.MaxPacketSize != DefaultMaxPacketSize ||
		cfg.Limits.ConnectTimeout != DefaultConnectTimeout || cfg.Limits.WriteTimeout != DefaultWriteTimeout ||
		cfg.Upstream.DialTimeout != DefaultDialTimeout || cfg.Shutdown.DrainTimeout != DefaultDrainTimeout ||
		cfg.Log.Level != "info" || cfg.Log.Format != "json" || cfg.Runtime.Procs != ProcsAuto || cfg.Runtime.FixedProcs() != 0 {
		t.Fatalf("defaults not filled: %+v", cfg)
	}
}

func TestRuntimeProcs(t *testing.T) {
	base := "listeners: [{name: a, address: \"127.0.0.1:1883\"}]\nupstream: {address: \"127.0.0.1:1884\"}\nauth: {anonymous: true}\npolicy: {mode: allow_all}\n"
	for in, want := range map[string]int{"auto": 0, "1": 1, "\"3\"": 3} {
		cfg, err := Parse([]byte(base + "runtime: {procs: " + in + "}\n"))
		if err != nil {
			t.Fatalf("procs %s: %v", in, err)
		}
		if got := cfg.Runtime.FixedProcs(); got != want {
			t.Fatalf("procs %s: FixedProcs() = %d, want %d", in, got, want)
		}
	}
}

func TestRuntimeGCFloor(t *testing.T) {
	base := "listeners: [{name: a, address: \"127.0.0.1:1883\"}]\nupstream: {address: \"127.0.0.1:1884\"}\nauth: {anonymous: true}\npolicy: {mode: allow_all}\n"
	for in, want := range map[string]ByteSize{"": DefaultGCFloor, "runtime: {gc_floor: 8MiB}\n": 8 << 20, "runtime: {gc_floor: -1}\n": -1} {
		cfg, err := Parse([]byte(base + in))
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if cfg.Runtime.GCFloor != want {
			t.Fatalf("%q: gc_floor %d, want %d", in, cfg.Runtime.GCFloor, want)
		}
	}
	if _, err := Parse([]byte(base + "runtime: {gc_floor: -2}\n")); err == nil || !strings.Contains(err.Error(), "not a size") {
		t.Fatalf("gc_floor -2: %v, want an error", err)
	}
}

func TestErrorsNameTheField(t *testing.T) {
	base := "upstream: {address: \"127.0.0.1:1884\"}\npolicy: {mode: allow_all}\n"
	listener := "listeners: [{name: a, address: \"127.0.0.1:1883\"}]\n"
	cases := []struct{ name, yaml, want string }{
		{"unknown key", listener + base + "limits: {max_packet_sise: 10}\n", "max_packet_sise"},
		{"unknown top key", listener + base + "polcy: {}\n", "polcy"},
		{"no listeners", base, "listeners: at least one listener"},
		{"no policy", listener + "upstream: {address: \"127.0.0.1:1884\"}\n", "policy: missing"},
		{"unknown mode", listener + "upstream: {address: \"127.0.0.1:1884\"}\npolicy: {mode: allow_everything}\n", "policy.mode"},
		{"no upstream", listener + "policy: {mode: allow_all}\n", "upstream.address: required"},
		{"bad address", "listeners: [{name: a, address: \"localhost\"}]\n" + base, "listeners[0].address"},
		{"bad port", "listeners: [{name: a, address: \"127.0.0.1:99999\"}]\n" + base, "port"},
		{"duplicate name", "listeners: [{name: a, address: \"127.0.0.1:1\"}, {name: a, address: \"127.0.0.1:2\"}]\n" + base, "listeners[1].name"},
		{"duplicate address", "listeners: [{name: a, address: \"127.0.0.1:1\"}, {name: b, address: \"127.0.0.1:1\"}]\n" + base, "listeners[1].address"},
		{"bad transport", "listeners: [{name: a, address: \"127.0.0.1:1\", transport: quic}]\n" + base, "listeners[0].transport"},
		{"tls without files", "listeners: [{name: a, address: \"127.0.0.1:1\", transport: tls}]\n" + base, "listeners[0].tls"},
		{"tls missing cert", "listeners: [{name: a, address: \"127.0.0.1:1\", transport: tls, tls: {key_file: k}}]\n" + base, "listeners[0].tls.cert_file: required"},
		{"cert file missing on disk", "listeners: [{name: a, address: \"127.0.0.1:1\", transport: tls, tls: {cert_file: /nonexistent.crt, key_file: /nonexistent.key}}]\n" + base, "cannot read \"/nonexistent.crt\""},
		{"bad client auth", "listeners: [{name: a, address: \"127.0.0.1:1\", tls: {cert_file: /dev/null, key_file: /dev/null, client_auth: always}}]\n" + base, "client_auth"},
		{"require without CA", "listeners: [{name: a, address: \"127.0.0.1:1\", tls: {cert_file: /dev/null, key_file: /dev/null, client_auth: require}}]\n" + base, "client_ca_file: required"},
		{"old TLS", "listeners: [{name: a, address: \"127.0.0.1:1\", tls: {cert_file: /dev/null, key_file: /dev/null, min_version: \"1.0\"}}]\n" + base, "min_version"},
		{"tiny packet size", listener + base + "limits: {max_packet_size: 10}\n", "limits.max_packet_size"},
		{"huge packet size", listener + base + "limits: {max_packet_size: 1GiB}\n", "exceeds MQTT's maximum"},
		{"bad size unit", listener + base + "limits: {max_packet_size: 10 parsecs}\n", "unknown unit"},
		{"negative timeout", listener + base + "limits: {connect_timeout: -1s}\n", "limits.connect_timeout"},
		{"bad duration", listener + base + "limits: {connect_timeout: soon}\n", "soon"},
		{"upstream cert without key", listener + "upstream: {address: \"127.0.0.1:1884\", tls: {cert_file: /dev/null}}\npolicy: {mode: allow_all}\n", "upstream.tls"},
		{"bad log level", listener + base + "log: {level: loud}\n", "log.level"},
		{"enforce without paths", listener + "upstream: {address: \"127.0.0.1:1884\"}\npolicy: {mode: enforce}\n", "policy.paths: required"},
		{"policy path missing", listener + "upstream: {address: \"127.0.0.1:1884\"}\npolicy: {mode: shadow, paths: [/nonexistent]}\n", "policy.paths[0]"},
		{"allow_all with paths", listener + "upstream: {address: \"127.0.0.1:1884\"}\npolicy: {mode: allow_all, paths: [/tmp]}\n", "ignores them"},
		{"bad deny action", listener + "upstream: {address: \"127.0.0.1:1884\"}\npolicy: {mode: allow_all, on_publish_deny: shrug}\n", "policy.on_publish_deny"},
		{"bad watch interval", listener + "upstream: {address: \"127.0.0.1:1884\"}\npolicy: {mode: allow_all, watch_interval: sometimes}\n", "sometimes"},
		{"bad cache size", listener + "upstream: {address: \"127.0.0.1:1884\"}\npolicy: {mode: allow_all, cache: {size: -5}}\n", "policy.cache.size"},
		{"no way in", listener + base, "auth: no client can get in"},
		{"password method without file", listener + base + "auth: {methods: [password]}\n", "auth.methods[0]: password needs"},
		{"unknown method", listener + base + "auth: {anonymous: true, methods: [retina]}\n", "auth.methods[0]"},
		{"password file missing", listener + base + "auth: {password_file: /nonexistent}\n", "auth.password_file"},
		{"bad cert identity", listener + base + "auth: {anonymous: true, certificate: {identity: email}}\n", "auth.certificate.identity"},
		{"replace without username", listener + "auth: {anonymous: true}\nupstream: {address: \"127.0.0.1:1884\", credentials: {mode: replace}}\npolicy: {mode: allow_all}\n", "upstream.credentials.username"},
		{"strip with username", listener + "auth: {anonymous: true}\nupstream: {address: \"127.0.0.1:1884\", credentials: {mode: strip, username: x}}\npolicy: {mode: allow_all}\n", "only used with mode replace"},
		{"bad credentials mode", listener + "auth: {anonymous: true}\nupstream: {address: \"127.0.0.1:1884\", credentials: {mode: forge}}\npolicy: {mode: allow_all}\n", "upstream.credentials.mode"},
		{"bad client id binding", listener + base + "auth: {anonymous: true, client_id: {bind: loose}}\n", "auth.client_id.bind"},
		{"bad brute force", listener + base + "auth: {anonymous: true, brute_force: {max_failures: -5}}\n", "auth.brute_force.max_failures"},
		{"jwt without keys", listener + base + "auth: {jwt: {issuer: i, audience: a}}\n", "auth.jwt: set one of"},
		{"jwt without audience", listener + base + "auth: {jwt: {jwks_url: \"https://idp/jwks\", issuer: i}}\n", "auth.jwt.audience: required"},
		{"jwt over http", listener + base + "auth: {jwt: {jwks_url: \"http://idp/jwks\", issuer: i, audience: a}}\n", "must be https"},
		{"jwt bad expiry action", listener + base + "auth: {jwt: {jwks_url: \"https://idp/jwks\", issuer: i, audience: a, on_expiry: shrug}}\n", "auth.jwt.on_expiry"},
		{"bad max qos", "listeners: [{name: a, address: \"127.0.0.1:1\", max_qos: 3}]\n" + base + "auth: {anonymous: true}\n", "listeners[0].max_qos"},
		{"huge keep alive", listener + base + "auth: {anonymous: true}\nlimits: {max_keep_alive: 48h}\n", "limits.max_keep_alive"},
		{"bad ban threshold", listener + base + "auth: {anonymous: true}\nbans: {denials: -7}\n", "bans.denials"},
		{"unknown decoy key", listener + base + "auth: {anonymous: true}\ndecoys: {topic: [x]}\n", "decoys"},
		{"bad decoy topic", listener + base + "auth: {anonymous: true}\ndecoys: {topics: [ok/#, a/#/b]}\n", "decoys.topics[1]"},
		{"huge inflight", listener + base + "auth: {anonymous: true}\nlimits: {max_inflight: 70000}\n", "limits.max_inflight"},
		{"bad subscription limit", listener + base + "auth: {anonymous: true}\nlimits: {max_subscriptions: -3}\n", "limits.max_subscriptions"},
		{"topic rate without rate", listener + base + "auth: {anonymous: true}\nlimits: {topic_rates: [{topics: [a/+]}]}\n", "limits.topic_rates[0].publish_per_second"},
		{"topic rate bad filter", listener + base + "auth: {anonymous: true}\nlimits: {topic_rates: [{topics: [a/#/b], publish_per_second: 1}]}\n", "limits.topic_rates[0].topics"},
		{"cap without max qos", listener + base + "auth: {anonymous: true}\npayload: {rules: [{topics: [a], max_qos_action: cap}]}\n", "payload.rules[0].max_qos_action: needs max_qos"},
		{"bad qos action", listener + base + "auth: {anonymous: true}\npayload: {rules: [{topics: [a], max_qos: 1, max_qos_action: lower}]}\n", "payload.rules[0].max_qos_action"},
		{"bad admin address", listener + base + "auth: {anonymous: true}\nadmin: {address: localhost}\n", "admin.address"},
		{"pprof without token", listener + base + "auth: {anonymous: true}\nadmin: {pprof: true}\n", "admin.pprof: needs admin.token_file"},
		{"proxy protocol without trusted", "listeners: [{name: a, address: \"127.0.0.1:1\", proxy_protocol: {allow_direct: true}}]\n" + base + "auth: {anonymous: true}\n", "proxy_protocol.trusted: required"},
		{"proxy protocol bad range", "listeners: [{name: a, address: \"127.0.0.1:1\", proxy_protocol: {trusted: [lb.example]}}]\n" + base + "auth: {anonymous: true}\n", "not an address or CIDR"},
		{"websocket on tcp", "listeners: [{name: a, address: \"127.0.0.1:1\", websocket: {path: /x}}]\n" + base + "auth: {anonymous: true}\n", "listeners[0].websocket"},
		{"wss without tls", "listeners: [{name: a, address: \"127.0.0.1:1\", transport: wss}]\n" + base + "auth: {anonymous: true}\n", "listeners[0].tls"},
		{"zero procs", listener + base + "auth: {anonymous: true}\nruntime: {procs: 0}\n", "runtime.procs"},
		{"word procs", listener + base + "auth: {anonymous: true}\nruntime: {procs: many}\n", "use auto, or a number"},
		{"unknown runtime key", listener + base + "auth: {anonymous: true}\nruntime: {gogc: 50}\n", "is not a key of runtime"},
		{"unknown policy key", listener + "upstream: {address: \"127.0.0.1:1884\"}\npolicy: {mode: allow_all, cache: {sise: 5}}\n", "policy.cache"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

func TestAllErrorsReported(t *testing.T) {
	_, err := Parse([]byte("listeners: [{address: nowhere}]\n"))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"listeners[0].name", "listeners[0].address", "upstream.address", "policy"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s:\n%v", want, err)
		}
	}
}

func TestByteSize(t *testing.T) {
	cases := map[string]ByteSize{"1024": 1024, "1KiB": 1024, "1 MiB": 1 << 20, "2MB": 2e6, "5B": 5, "1GiB": 1 << 30}
	for in, want := range cases {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1.5MiB", "12 furlongs", "99999999999999999999"} {
		if _, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) accepted", in)
		}
	}
}

// Validate fills defaults; validating the result again must change
// nothing and find nothing (a reload validates a copy of a validated
// configuration).
func TestValidateTwice(t *testing.T) {
	inDirWithCerts(t)
	cfg, err := Parse([]byte(`listeners: [{name: a, address: "127.0.0.1:1"}]
upstream: {address: "127.0.0.1:2", fallbacks: ["[::1]:3"]}
auth: {anonymous: true}
policy: {mode: allow_all}
payload: {rules: [{topics: [a/#], max_qos: 1, max_qos_action: cap}, {topics: [b/#], utf8: true}]}
limits: {topic_rates: [{topics: [t/+], publish_per_second: 1}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("second validation: %v", err)
	}
}
