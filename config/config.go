// Package config loads moat's YAML configuration into a validated Config
// with defaults filled in. Every field is documented here and in
// docs/config.md; unknown keys and bad values are errors that name the
// field and say how to fix it.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/moat-mqtt/moat/codec"
)

// Config is the whole configuration file.
type Config struct {
	// Listeners are the addresses moat accepts MQTT clients on. At least one.
	Listeners []Listener `yaml:"listeners"`
	// Upstream is the broker moat forwards permitted traffic to.
	Upstream Upstream `yaml:"upstream"`
	// Limits bound what one client may cost.
	Limits Limits `yaml:"limits"`
	// Auth decides who clients are. Anonymous clients are refused unless
	// allowed here.
	Auth Auth `yaml:"auth"`
	// Policy decides what clients may do. Required: moat denies by default.
	Policy *Policy `yaml:"policy"`
	// Payload checks what publishes to given topics carry.
	Payload Payload `yaml:"payload"`
	// Bans cut and refuse an address that keeps being denied.
	Bans Bans `yaml:"bans"`
	// Decoys are topics and usernames no legitimate client uses.
	Decoys Decoys `yaml:"decoys"`
	// Shutdown controls graceful shutdown on SIGTERM and SIGINT.
	Shutdown Shutdown `yaml:"shutdown"`
	// Log controls the log output.
	Log Log `yaml:"log"`
	// Admin is the operators' HTTP interface: metrics, health, JSON API.
	Admin Admin `yaml:"admin"`
	// Runtime sizes the Go runtime moat runs on.
	Runtime Runtime `yaml:"runtime"`
}

// Runtime sizes the Go runtime.
type Runtime struct {
	// Procs is how many threads run Go code at once (GOMAXPROCS): auto
	// (default) uses as few as keep up with the load, up to every core
	// moat may use, because each idle one costs thread wake-ups on every
	// packet; a number fixes it. The GOMAXPROCS environment variable, when
	// set, wins over both. Read at start.
	Procs string `yaml:"procs"`
	// GCFloor is the heap size Go's collector waits for while moat
	// allocates fast (a connection storm): the next collection runs at
	// this size or at twice the live heap, whichever is larger (Go's own
	// rule, GOGC=100, is the second). Default 32 MiB; -1 is Go's rule
	// alone. The GOGC environment variable, when set, wins. Read at start.
	GCFloor ByteSize `yaml:"gc_floor"`
}

// DefaultGCFloor is Runtime.GCFloor's default: a connection storm leaves
// about 50 KiB of garbage per TLS handshake, and with a live heap of a few
// MiB Go's rule alone collected 20 times a second.
const DefaultGCFloor = 32 << 20

// ProcsAuto is Runtime.Procs's default.
const ProcsAuto = "auto"

// FixedProcs returns the fixed thread count, or 0 for auto.
func (r Runtime) FixedProcs() int {
	n, _ := strconv.Atoi(r.Procs)
	return n
}

// Admin is the operators' HTTP interface. /metrics, /healthz and /readyz
// need no credentials (keep the address on loopback or a management
// network); /api/... needs the bearer token in TokenFile.
type Admin struct {
	// Address is host:port. Default 127.0.0.1:9180; "off" disables it.
	Address string `yaml:"address"`
	// TokenFile holds the token /api/... requires (Authorization:
	// Bearer TOKEN). Without it the API answers 403.
	TokenFile string `yaml:"token_file"`
	// Pprof serves Go's profiler under /debug/pprof/, behind the token.
	Pprof bool `yaml:"pprof"`
}

// DefaultAdminAddress is where the admin interface listens by default.
const DefaultAdminAddress = "127.0.0.1:9180"

// Listener is one address moat accepts clients on.
type Listener struct {
	// Name identifies the listener in logs and, later, in policy input. Unique.
	Name string `yaml:"name"`
	// Address is host:port to listen on, e.g. "0.0.0.0:8883".
	Address string `yaml:"address"`
	// Transport is "tcp" (plain MQTT), "tls" (MQTT over TLS), "ws" (MQTT
	// over WebSocket) or "wss" (over secure WebSocket).
	Transport string `yaml:"transport"`
	// TLS is required when Transport is "tls" or "wss".
	TLS *ServerTLS `yaml:"tls"`
	// WebSocket configures a ws or wss listener.
	WebSocket WebSocket `yaml:"websocket"`
	// ProxyProtocol accepts PROXY protocol v1/v2 headers from trusted
	// load balancers (tcp and tls listeners). Off when absent.
	ProxyProtocol *ProxyProtocol `yaml:"proxy_protocol"`
	// MaxQoS is the highest QoS clients of this listener may publish with
	// (0, 1 or 2; default 2). MQTT 5 clients are told in CONNACK; a
	// publish above it ends the connection (MQTT 5: DISCONNECT 0x9B).
	MaxQoS *int `yaml:"max_qos"`
	// RetainAvailable false forbids retained publishes on this listener:
	// MQTT 5 clients are told in CONNACK and cut with 0x9A if they retain
	// anyway; 3.x clients have the retain flag stripped. Default true.
	RetainAvailable *bool `yaml:"retain_available"`
}

// ServerTLS configures TLS termination on a listener.
type ServerTLS struct {
	// CertFile is the PEM server certificate chain.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the PEM private key of CertFile.
	KeyFile string `yaml:"key_file"`
	// ClientCAFile is a PEM bundle of CAs that sign client certificates.
	// Required when ClientAuth is verify_if_given or require.
	ClientCAFile string `yaml:"client_ca_file"`
	// ClientAuth is none (default), request, verify_if_given or require.
	ClientAuth string `yaml:"client_auth"`
	// CRLFile holds certificate revocation lists (PEM or DER), each
	// signed by a CA of ClientCAFile; a revoked client certificate fails
	// the handshake. Read at start.
	CRLFile string `yaml:"crl_file"`
	// MinVersion is "1.2" (default) or "1.3".
	MinVersion string `yaml:"min_version"`
	// HandshakeTimeout bounds the TLS handshake. Default 10s.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
}

// ProxyProtocol lets load balancers say who the client is.
type ProxyProtocol struct {
	// Trusted are the balancers' addresses or CIDR ranges. Connections
	// from them must start with a PROXY header. Required.
	Trusted []string `yaml:"trusted"`
	// AllowDirect also admits clients that connect straight from an
	// address not in Trusted (no header expected). Default false: every
	// client must come through a balancer.
	AllowDirect bool `yaml:"allow_direct"`
}

// TrustedPrefixes parses Trusted (validated by Validate).
func (p *ProxyProtocol) TrustedPrefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, t := range p.Trusted {
		if pr, err := parsePrefix(t); err == nil {
			out = append(out, pr)
		}
	}
	return out
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// WebSocket configures an MQTT over WebSocket listener.
type WebSocket struct {
	// Path is the HTTP path clients upgrade on. Default /mqtt.
	Path string `yaml:"path"`
	// Origins are the browser origins allowed ("https://dash.example",
	// or "*"). Requests without an Origin header (native clients) are
	// always allowed; a browser whose origin is not listed is refused.
	Origins []string `yaml:"origins"`
	// HandshakeTimeout bounds the HTTP upgrade. Default 10s.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
}

// Upstream is the broker behind moat.
type Upstream struct {
	// Address is the broker's host:port. Required (except in the quick start).
	Address string `yaml:"address"`
	// Fallbacks are further brokers (host:port) tried in order when the
	// one before is down, e.g. the members of a broker cluster. The same
	// TLS settings and credentials apply to all.
	Fallbacks []string `yaml:"fallbacks"`
	// DialTimeout bounds connecting to the broker (TCP and TLS). Default 5s.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// TLS, when set, makes moat speak TLS to the broker.
	TLS *ClientTLS `yaml:"tls"`
	// Credentials says what username and password the broker sees.
	Credentials Credentials `yaml:"credentials"`
}

// Credentials configures what CONNECT carries to the broker.
type Credentials struct {
	// Mode is passthrough (default: the client's own), strip (none) or
	// replace (moat's service account, so a broker with a single account
	// can be fronted by per-device identities).
	Mode string `yaml:"mode"`
	// Username and PasswordFile are the service account for replace. The
	// password is the file's first line, so it stays out of the config.
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	// IdentityAsUsername sends the verified identity (certificate name or
	// checked username) as the username, so the broker's logs and ACLs
	// see who the client really is.
	IdentityAsUsername bool `yaml:"identity_as_username"`
}

// ClientTLS configures TLS from moat to the broker.
type ClientTLS struct {
	// CAFile is a PEM bundle that verifies the broker's certificate. Empty
	// means the system roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are moat's client certificate, when the broker
	// asks for one.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is the name verified in the broker's certificate (all of
	// them, with fallbacks). Default: each address's own host part.
	ServerName string `yaml:"server_name"`
}

// Limits bound each connection.
type Limits struct {
	// MaxPacketSize is the largest packet accepted in either direction, in
	// bytes ("256KiB", "1MiB" and plain numbers work). Default 1MiB.
	// MQTT 5 clients are told in CONNACK.
	MaxPacketSize ByteSize `yaml:"max_packet_size"`
	// ConnectTimeout is how long a client has, after TCP accept (and the TLS
	// handshake), to send a complete CONNECT. Default 10s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// WriteTimeout is how long a write to a peer may block before the
	// connection is cut (a client that stops reading). Default 30s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// MaxTopicLength (bytes) and MaxTopicLevels bound topic names and
	// filters, wills included. Defaults 1024 and 32.
	MaxTopicLength int `yaml:"max_topic_length"`
	MaxTopicLevels int `yaml:"max_topic_levels"`
	// MaxClientIDLength bounds client ids (bytes). Default 128.
	MaxClientIDLength int `yaml:"max_client_id_length"`
	// MaxKeepAlive clamps keep alive: a client asking for 0 (none) or more
	// is held to this (MQTT 5: told in CONNACK's Server Keep Alive).
	// Default 1h.
	MaxKeepAlive time.Duration `yaml:"max_keep_alive"`
	// MaxSubscriptions bounds the distinct filters one connection holds
	// through moat. A filter over it is refused in SUBACK (MQTT 5 0x97
	// quota exceeded, 3.x 0x80). Default 1000.
	MaxSubscriptions int `yaml:"max_subscriptions"`
	// MaxInflight bounds unacknowledged QoS 1/2 publishes per direction.
	// MQTT 5: sent as Receive Maximum both ways, and a client that goes
	// over it is disconnected with 0x93; 3.x: moat stops reading from the
	// client until the broker acknowledges (backpressure). Default 100.
	MaxInflight int `yaml:"max_inflight"`
	// MaxUserProperties and MaxUserPropertyBytes bound the MQTT 5 user
	// properties of one client packet: how many, and their keys and
	// values together. Over either, moat answers 0x83. Defaults 32 and
	// 8KiB.
	MaxUserProperties    int      `yaml:"max_user_properties"`
	MaxUserPropertyBytes ByteSize `yaml:"max_user_property_bytes"`
	// TopicRates bound, per client, publishes to the topics a rule names:
	// every topic the rule matches shares one budget.
	TopicRates []TopicRate `yaml:"topic_rates"`
	// Rate limits each client's PUBLISH and SUBSCRIBE traffic.
	Rate ClientRate `yaml:"rate"`
	// Connections limits connections per source address and in all.
	Connections ConnectionLimits `yaml:"connections"`
}

// ClientRate is the per-client budget. For every rate, 0 takes the
// default and -1 turns the limit off.
type ClientRate struct {
	// Key is what a budget belongs to: identity (default: the verified
	// identity, or the client id of an anonymous client), client_id or
	// username.
	Key string `yaml:"key"`
	// PublishPerSecond and PublishBurst bound PUBLISH packets. Default
	// 1000/s, burst = the rate.
	PublishPerSecond float64 `yaml:"publish_per_second"`
	PublishBurst     int     `yaml:"publish_burst"`
	// BytesPerSecond and BytesBurst bound PUBLISH bytes. Default 16MiB/s,
	// burst = the rate.
	BytesPerSecond ByteSize `yaml:"bytes_per_second"`
	BytesBurst     ByteSize `yaml:"bytes_burst"`
	// SubscribePerSecond and SubscribeBurst bound SUBSCRIBE packets.
	// Default 100/s, burst = the rate.
	SubscribePerSecond float64 `yaml:"subscribe_per_second"`
	SubscribeBurst     int     `yaml:"subscribe_burst"`
	// Action over the budget: pace (default: moat stops reading from the
	// client until it is within budget, which is TCP backpressure),
	// reject (MQTT 5: PUBACK/PUBREC 0x97, QoS 0 dropped; 3.x clients are
	// paced, their protocol has no way to say it) or disconnect (MQTT 5
	// DISCONNECT 0x96).
	Action string `yaml:"action"`
	// Clients is the most budgets remembered (least recently used
	// forgotten first; a connected client keeps its own). Default 100000.
	Clients int `yaml:"clients"`
}

// TopicRate is a per-client budget for publishes to some topics ("each
// sensor at most 1 msg/s on its telemetry topic"). The first rule whose
// topics match a publish applies.
type TopicRate struct {
	// Topics are topic filters; identity placeholders are not expanded.
	Topics []string `yaml:"topics"`
	// PublishPerSecond and PublishBurst (default: the rate, at least 1).
	PublishPerSecond float64 `yaml:"publish_per_second"`
	PublishBurst     int     `yaml:"publish_burst"`
}

// ConnectionLimits bound connections. 0 takes the default, -1 is off.
// A connection over a limit is closed right after accept, before TLS.
type ConnectionLimits struct {
	// PerAddressPerSecond and PerAddressBurst bound new connections from
	// one source address. Default 50/s, burst 100.
	PerAddressPerSecond float64 `yaml:"per_address_per_second"`
	PerAddressBurst     int     `yaml:"per_address_burst"`
	// PerAddress bounds concurrent connections from one address. Default 1000.
	PerAddress int `yaml:"per_address"`
	// PerSecond and Burst bound new connections in all. Default 2000/s, burst 2000.
	PerSecond float64 `yaml:"per_second"`
	Burst     int     `yaml:"burst"`
	// Max bounds concurrent connections in all. Default 50000.
	Max int `yaml:"max"`
}

// Auth configures authentication.
type Auth struct {
	// Anonymous admits clients that present no credential a method takes
	// (policy input auth_method "anonymous"). Default false.
	Anonymous bool `yaml:"anonymous"`
	// Methods in the order they are tried: certificate, password. The
	// first one whose credential the client presented decides. Default:
	// certificate, then password when password_file is set.
	Methods []string `yaml:"methods"`
	// PasswordFile is a Mosquitto-format password file (mosquitto_passwd's
	// $7$ and $6$ hashes, or argon2id/bcrypt from `moat passwd`).
	PasswordFile string `yaml:"password_file"`
	// Certificate says which field of a verified client certificate names
	// the client.
	Certificate CertAuth `yaml:"certificate"`
	// JWT verifies a JWT given in CONNECT's password field.
	JWT *JWTAuth `yaml:"jwt"`
	// BruteForce bans source addresses and usernames after repeated
	// failed logins.
	BruteForce BruteForce `yaml:"brute_force"`
	// ClientID binds MQTT client ids to identities, against session
	// takeover: none (default), identity (the client id must be the
	// identity) or prefix (the identity, or the identity followed by "-").
	ClientID ClientIDAuth `yaml:"client_id"`
}

// BruteForce limits failed logins.
type BruteForce struct {
	// MaxFailures within Window bans the address (or username). Default
	// 10; -1 disables.
	MaxFailures int `yaml:"max_failures"`
	// Window is the counting window. Default 1m.
	Window time.Duration `yaml:"window"`
	// Ban is how long a ban lasts. Default 5m.
	Ban time.Duration `yaml:"ban"`
}

// JWTAuth configures token authentication.
type JWTAuth struct {
	// JWKSFile or JWKSURL (https://) hold the verification keys.
	JWKSFile string `yaml:"jwks_file"`
	JWKSURL  string `yaml:"jwks_url"`
	// JWKSCAFile verifies the JWKS server; default the system roots.
	JWKSCAFile string `yaml:"jwks_ca_file"`
	// Issuer and Audience must match "iss" and one of "aud". Required.
	Issuer   string `yaml:"issuer"`
	Audience string `yaml:"audience"`
	// Algorithms accepted; default RS256, ES256, EdDSA. HS256 only with
	// HS256SecretFile.
	Algorithms      []string `yaml:"algorithms"`
	HS256SecretFile string   `yaml:"hs256_secret_file"`
	// Leeway for exp, nbf and iat. Default 30s.
	Leeway time.Duration `yaml:"leeway"`
	// UsernameClaim is the claim that names the client. Default "sub".
	UsernameClaim string `yaml:"username_claim"`
	// MatchUsername requires CONNECT's username to equal that claim.
	MatchUsername bool `yaml:"match_username"`
	// Refresh and MinRefresh pace fetches of JWKSURL: every Refresh
	// (default 1h), and for an unknown key id at most every MinRefresh
	// (default 30s).
	Refresh    time.Duration `yaml:"refresh"`
	MinRefresh time.Duration `yaml:"min_refresh"`
	// OnExpiry is what happens when a connection's token expires:
	// disconnect (default; MQTT 5 DISCONNECT 0x87) or ignore.
	OnExpiry string `yaml:"on_expiry"`
}

// ClientIDAuth configures client id binding.
type ClientIDAuth struct {
	Bind string `yaml:"bind"`
}

// CertAuth configures certificate identities.
type CertAuth struct {
	// Identity is common_name (default), dns_san, uri_san (SPIFFE ids) or
	// fingerprint (SHA-256 of the certificate, hex).
	Identity string `yaml:"identity"`
}

// Bans ban a source address that collects Denials denials (policy,
// payload, rate rejects) within Window: its connection is cut and new
// ones are refused before TLS for Duration.
type Bans struct {
	// Denials is the threshold. Default 50; -1 disables.
	Denials  int           `yaml:"denials"`
	Window   time.Duration `yaml:"window"`   // default 1m
	Duration time.Duration `yaml:"duration"` // default 10m
}

// Decoys are tripwires: any publish or subscription touching Topics, or
// a login as one of Usernames, raises an alert (an ERROR log line with
// alert=true, counted) and, with Ban, bans the address at once.
type Decoys struct {
	Topics    []string `yaml:"topics"`
	Usernames []string `yaml:"usernames"`
	// Ban is true unless set to false.
	Ban *bool `yaml:"ban"`
}

// Payload holds per-topic payload rules; the first rule whose topics
// match a publish applies. Topics no rule names are not inspected.
type Payload struct {
	Rules []PayloadRule `yaml:"rules"`
}

// PayloadRule is what publishes to its topics must satisfy. A refused
// publish is answered as a denied one (policy.on_publish_deny), with
// MQTT 5 reason 0x99.
type PayloadRule struct {
	// Topics are topic filters ("commands/#").
	Topics []string `yaml:"topics"`
	// MaxSize bounds the payload.
	MaxSize ByteSize `yaml:"max_size"`
	// UTF8 requires valid UTF-8; JSON requires JSON (and UTF-8).
	UTF8 bool `yaml:"utf8"`
	JSON bool `yaml:"json"`
	// SchemaFile is a JSON Schema the payload must match (implies JSON).
	SchemaFile string `yaml:"schema_file"`
	// Retain is allow (default), forbid (refuse retained publishes) or
	// strip (forward them without the retain flag).
	Retain string `yaml:"retain"`
	// MaxQoS bounds the QoS of publishes (0 or 1; default: any).
	MaxQoS *int `yaml:"max_qos"`
	// MaxQoSAction is what happens above MaxQoS: refuse (default) or cap
	// (forward at MaxQoS; moat completes the client's flow itself).
	MaxQoSAction string `yaml:"max_qos_action"`
}

// Policy selects how decisions are made.
type Policy struct {
	// Mode is "enforce" (denials are enforced), "shadow" (every decision is
	// evaluated, would-be denials are logged and counted, traffic flows) or
	// "allow_all" (no policy: every well-formed packet is forwarded; for
	// testing, and moat warns while it runs this way).
	Mode string `yaml:"mode"`
	// Paths are .rego files, JSON/YAML data files, or directories of them.
	// Required for enforce and shadow. Files named *_test.rego are left out.
	Paths []string `yaml:"paths"`
	// Cache bounds the decision cache.
	Cache PolicyCache `yaml:"cache"`
	// EvalTimeout bounds one evaluation; one that takes longer is a denial.
	// Default 100ms.
	EvalTimeout time.Duration `yaml:"eval_timeout"`
	// WatchInterval is how often the policy files are checked for changes
	// (a changed policy is reloaded; a broken one is refused and the last
	// good one stays). Default 2s; "off" disables. SIGHUP always reloads.
	WatchInterval OptDuration `yaml:"watch_interval"`
	// OnPublishDeny is what a denied PUBLISH from a client does: "ack"
	// (default: QoS 0 dropped, QoS 1/2 acknowledged, in MQTT 5 with reason
	// 0x87, and not forwarded) or "disconnect" (the connection is closed, in
	// MQTT 5 with DISCONNECT 0x87).
	OnPublishDeny string `yaml:"on_publish_deny"`
	// DecisionLog is where the one-line-per-denial JSON log goes.
	DecisionLog DecisionLog `yaml:"decision_log"`
}

// PolicyCache bounds the decision cache.
type PolicyCache struct {
	// Size is the number of decisions kept. Default 100000; -1 disables
	// the cache.
	Size int `yaml:"size"`
	// TTL is how long a decision is reused. Default 1m.
	TTL time.Duration `yaml:"ttl"`
}

// DecisionLog configures the decision log.
type DecisionLog struct {
	// File is the path the JSON lines are appended to; "stderr" (default)
	// or "stdout" for those streams, "off" for none.
	File string `yaml:"file"`
	// Allows also logs permitted decisions (verbose; for audits and rollout).
	Allows bool `yaml:"allows"`
	// RateLimit is the most lines written per second (a burst of as many);
	// lines over it are counted in a "suppressed" line. Default 1000; -1
	// for no limit.
	RateLimit int `yaml:"rate_limit"`
}

// OptDuration is a duration that may also be "off" (zero, and Set).
type OptDuration struct {
	D   time.Duration
	Set bool
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (o *OptDuration) UnmarshalYAML(n *yaml.Node) error {
	o.Set = true
	if n.Value == "off" {
		o.D = 0
		return nil
	}
	d, err := time.ParseDuration(n.Value)
	if err != nil || d < 0 {
		return fmt.Errorf("line %d: %q is not a duration; write one like 500ms or 2s, or off", n.Line, n.Value)
	}
	o.D = d
	return nil
}

// Shutdown controls graceful shutdown.
type Shutdown struct {
	// DrainTimeout is how long moat waits, after it stops accepting, for
	// sessions to hand over what is in flight before it closes them. Default 10s.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
}

// Log controls the log output.
type Log struct {
	// Level is debug, info (default), warn or error. SIGHUP re-reads it.
	Level string `yaml:"level"`
	// File is where the log goes: stderr (default) or a path, appended
	// to and reopened on SIGHUP, so logrotate can move it away.
	File string `yaml:"file"`
	// Format is json (default) or text.
	Format string `yaml:"format"`
}

// Defaults.
const (
	DefaultMaxPacketSize    = 1 << 20
	DefaultConnectTimeout   = 10 * time.Second
	DefaultWriteTimeout     = 30 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultDialTimeout      = 5 * time.Second
	DefaultDrainTimeout     = 10 * time.Second
	maxPacketSizeLimit      = 268_435_460 // MQTT's own ceiling
)

// Policy modes.
const (
	ModeEnforce  = "enforce"
	ModeShadow   = "shadow"
	ModeAllowAll = "allow_all"
)

// Policy defaults.
const (
	DefaultPolicyWatch = 2 * time.Second
	DefaultEvalTimeout = time.Second
	DefaultCacheSize   = 100_000
	DefaultCacheTTL    = time.Minute
	// DefaultDecisionLogRate bounds decision-log lines per second.
	DefaultDecisionLogRate = 1000
)

// Load reads, parses and validates the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	cfg, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Parse parses YAML and validates it. Unknown keys are errors.
func Parse(data []byte) (*Config, error) {
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s", friendlyYAML(err))
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// yamlSections maps Go type names in YAML errors to the section they are.
var yamlSections = map[string]string{
	"config.Config": "the top level", "config.Listener": "a listener", "config.WebSocket": "listener websocket", "config.ServerTLS": "listener tls",
	"config.Upstream": "upstream", "config.Credentials": "upstream.credentials", "config.ClientTLS": "upstream.tls", "config.Limits": "limits", "config.ClientRate": "limits.rate", "config.ConnectionLimits": "limits.connections", "config.TopicRate": "a topic rate",
	"config.Auth": "auth", "config.CertAuth": "auth.certificate", "config.ClientIDAuth": "auth.client_id", "config.BruteForce": "auth.brute_force", "config.JWTAuth": "auth.jwt", "config.Policy": "policy", "config.Payload": "payload", "config.Bans": "bans", "config.Decoys": "decoys", "config.PayloadRule": "a payload rule", "config.PolicyCache": "policy.cache", "config.DecisionLog": "policy.decision_log", "config.Shutdown": "shutdown", "config.Log": "log", "config.Admin": "admin", "config.Runtime": "runtime",
}

// friendlyYAML rewrites the YAML library's errors in the file's own terms.
func friendlyYAML(err error) string {
	lines := strings.Split(strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n"), "\n")
	for i, l := range lines {
		l = strings.TrimSpace(l)
		if j := strings.Index(l, " not found in type "); j >= 0 {
			typ := l[j+len(" not found in type "):]
			sec, ok := yamlSections[typ]
			if !ok {
				sec = typ
			}
			l = l[:j] + " is not a key of " + sec + " (docs/config.md lists the keys)"
			l = strings.Replace(l, "field ", "", 1)
		}
		if j := strings.Index(l, "cannot unmarshal !!str `"); j >= 0 && strings.HasSuffix(l, "into time.Duration") {
			v := strings.TrimSuffix(l[j+len("cannot unmarshal !!str `"):], "` into time.Duration")
			l = l[:j] + fmt.Sprintf("%q is not a duration; write one like 500ms, 10s or 2m", v)
		}
		lines[i] = l
	}
	return strings.Join(lines, "\n")
}

// Validate fills defaults and checks every field, reporting all problems.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, a...)))
	}

	if len(c.Listeners) == 0 {
		bad("listeners", "at least one listener is required, e.g. [{name: mqtt, address: \"127.0.0.1:1883\", transport: tcp}]")
	}
	names := map[string]bool{}
	addrs := map[string]bool{}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		f := fmt.Sprintf("listeners[%d]", i)
		if l.Name == "" {
			bad(f+".name", "required; give each listener a unique name such as \"mqtts\"")
		} else if names[l.Name] {
			bad(f+".name", "%q is used by another listener; names must be unique", l.Name)
		}
		names[l.Name] = true
		if err := checkHostPort(l.Address); err != nil {
			bad(f+".address", "%v", err)
		} else if addrs[l.Address] && !strings.HasSuffix(l.Address, ":0") {
			// Port 0 asks the system for a free port, so it may repeat.
			bad(f+".address", "%q is used by another listener", l.Address)
		}
		addrs[l.Address] = true
		switch l.Transport {
		case "":
			l.Transport = "tcp"
			if l.TLS != nil {
				l.Transport = "tls"
			}
		case "tcp", "tls", "ws", "wss":
		default:
			bad(f+".transport", "%q is not supported; use tcp, tls, ws or wss", l.Transport)
		}
		if l.Transport == "ws" || l.Transport == "wss" {
			w := &l.WebSocket
			if w.Path == "" {
				w.Path = "/mqtt"
			} else if !strings.HasPrefix(w.Path, "/") {
				bad(f+".websocket.path", "%q must start with /", w.Path)
			}
			w.HandshakeTimeout = positiveDuration(w.HandshakeTimeout, 10*time.Second, f+".websocket.handshake_timeout", bad)
		} else if len(l.WebSocket.Origins) > 0 || l.WebSocket.Path != "" {
			bad(f+".websocket", "set on a %s listener; it applies to transport ws or wss", l.Transport)
		}
		if pp := l.ProxyProtocol; pp != nil {
			if l.Transport != "tcp" && l.Transport != "tls" {
				bad(f+".proxy_protocol", "only tcp and tls listeners take PROXY headers")
			}
			if len(pp.Trusted) == 0 {
				bad(f+".proxy_protocol.trusted", "required: the load balancers' addresses or CIDR ranges; a PROXY header from anyone else is not believed")
			}
			for _, t := range pp.Trusted {
				if _, err := parsePrefix(t); err != nil {
					bad(f+".proxy_protocol.trusted", "%q is not an address or CIDR range", t)
				}
			}
		}
		if l.MaxQoS != nil && (*l.MaxQoS < 0 || *l.MaxQoS > 2) {
			bad(f+".max_qos", "%d: use 0, 1 or 2", *l.MaxQoS)
		}
		if (l.Transport == "tcp" || l.Transport == "ws") && l.TLS != nil {
			bad(f+".tls", "set on a %s listener; use transport: tls (or wss) or remove the tls section", l.Transport)
		}
		if l.Transport == "tls" || l.Transport == "wss" {
			if l.TLS == nil {
				bad(f+".tls", "required for transport tls: give cert_file and key_file (`moat certs` writes dev ones to certs/)")
				continue
			}
			validateServerTLS(l.TLS, f+".tls", bad)
		}
	}

	if c.Upstream.Address == "" {
		bad("upstream.address", "required: the broker's host:port, e.g. \"127.0.0.1:1884\"")
	} else if err := checkHostPort(c.Upstream.Address); err != nil {
		bad("upstream.address", "%v", err)
	}
	for i, a := range c.Upstream.Fallbacks {
		if err := checkHostPort(a); err != nil {
			bad(fmt.Sprintf("upstream.fallbacks[%d]", i), "%v", err)
		}
	}
	c.Upstream.DialTimeout = positiveDuration(c.Upstream.DialTimeout, DefaultDialTimeout, "upstream.dial_timeout", bad)
	if t := c.Upstream.TLS; t != nil {
		if (t.CertFile == "") != (t.KeyFile == "") {
			bad("upstream.tls", "cert_file and key_file go together; set both or neither")
		}
		for field, path := range map[string]string{"ca_file": t.CAFile, "cert_file": t.CertFile, "key_file": t.KeyFile} {
			checkFile("upstream.tls."+field, path, bad)
		}
		// An empty server_name verifies each broker (address and
		// fallbacks) under its own host.
	}

	cr := &c.Upstream.Credentials
	switch cr.Mode {
	case "":
		cr.Mode = "passthrough"
	case "passthrough", "strip":
		if cr.Username != "" || cr.PasswordFile != "" {
			bad("upstream.credentials", "username and password_file are only used with mode replace")
		}
	case "replace":
		if cr.Username == "" {
			bad("upstream.credentials.username", "required for mode replace: the broker account moat connects as")
		}
		checkFile("upstream.credentials.password_file", cr.PasswordFile, bad)
	default:
		bad("upstream.credentials.mode", "%q: use passthrough, strip or replace", cr.Mode)
	}

	switch {
	case c.Limits.MaxPacketSize == 0:
		c.Limits.MaxPacketSize = DefaultMaxPacketSize
	case c.Limits.MaxPacketSize < 64:
		bad("limits.max_packet_size", "%d bytes is too small for MQTT; use at least 64 (default 1MiB)", c.Limits.MaxPacketSize)
	case c.Limits.MaxPacketSize > maxPacketSizeLimit:
		bad("limits.max_packet_size", "%d bytes exceeds MQTT's maximum of %d", c.Limits.MaxPacketSize, maxPacketSizeLimit)
	}
	c.Limits.ConnectTimeout = positiveDuration(c.Limits.ConnectTimeout, DefaultConnectTimeout, "limits.connect_timeout", bad)
	c.Limits.WriteTimeout = positiveDuration(c.Limits.WriteTimeout, DefaultWriteTimeout, "limits.write_timeout", bad)
	validateRates(&c.Limits, bad)
	orDefault(&c.Limits.MaxTopicLength, 1024, "limits.max_topic_length", bad)
	orDefault(&c.Limits.MaxTopicLevels, 32, "limits.max_topic_levels", bad)
	orDefault(&c.Limits.MaxClientIDLength, 128, "limits.max_client_id_length", bad)
	orDefault(&c.Limits.MaxSubscriptions, 1000, "limits.max_subscriptions", bad)
	orDefault(&c.Limits.MaxInflight, 100, "limits.max_inflight", bad)
	if c.Limits.MaxInflight > 65535 {
		bad("limits.max_inflight", "%d exceeds MQTT's largest Receive Maximum (65535)", c.Limits.MaxInflight)
	}
	orDefault(&c.Limits.MaxUserProperties, 32, "limits.max_user_properties", bad)
	orDefault(&c.Limits.MaxUserPropertyBytes, 8<<10, "limits.max_user_property_bytes", bad)
	for i := range c.Limits.TopicRates {
		tr := &c.Limits.TopicRates[i]
		f := fmt.Sprintf("limits.topic_rates[%d]", i)
		if len(tr.Topics) == 0 {
			bad(f+".topics", "required: the topic filters the budget applies to")
		}
		for _, t := range tr.Topics {
			if err := codec.ValidFilter(t); err != nil {
				bad(f+".topics", "%q: %v", t, err)
			}
		}
		if tr.PublishPerSecond <= 0 {
			bad(f+".publish_per_second", "required: a positive rate (messages per second)")
		}
		if tr.PublishBurst < 0 {
			bad(f+".publish_burst", "%d: use a positive number", tr.PublishBurst)
		}
	}
	c.Limits.MaxKeepAlive = positiveDuration(c.Limits.MaxKeepAlive, time.Hour, "limits.max_keep_alive", bad)
	if c.Limits.MaxKeepAlive > 65535*time.Second {
		bad("limits.max_keep_alive", "%v exceeds MQTT's largest keep alive (65535s)", c.Limits.MaxKeepAlive)
	}

	switch a := &c.Admin; a.Address {
	case "":
		a.Address = DefaultAdminAddress
	case "off":
	default:
		if err := checkHostPort(a.Address); err != nil {
			bad("admin.address", "%v (or off)", err)
		}
	}
	checkFile("admin.token_file", c.Admin.TokenFile, bad)
	if c.Admin.Pprof && c.Admin.TokenFile == "" {
		bad("admin.pprof", "needs admin.token_file: the profiler is served behind the token")
	}

	validateAuth(c, bad)
	orDefault(&c.Bans.Denials, 50, "bans.denials", bad)
	c.Bans.Window = positiveDuration(c.Bans.Window, time.Minute, "bans.window", bad)
	c.Bans.Duration = positiveDuration(c.Bans.Duration, 10*time.Minute, "bans.duration", bad)
	if c.Decoys.Ban == nil {
		yes := true
		c.Decoys.Ban = &yes
	}
	for i, t := range c.Decoys.Topics {
		if err := codec.ValidFilter(t); err != nil {
			bad(fmt.Sprintf("decoys.topics[%d]", i), "%q: %v", t, err)
		}
	}
	for i := range c.Payload.Rules {
		r := &c.Payload.Rules[i]
		f := fmt.Sprintf("payload.rules[%d]", i)
		if len(r.Topics) == 0 {
			bad(f+".topics", "required: the topic filters the rule applies to")
		}
		checkFile(f+".schema_file", r.SchemaFile, bad)
		switch r.Retain {
		case "", "allow":
			r.Retain = ""
		case "forbid", "strip":
		default:
			bad(f+".retain", "%q: use allow, forbid or strip", r.Retain)
		}
		if r.MaxQoS != nil && (*r.MaxQoS < 0 || *r.MaxQoS > 2) {
			bad(f+".max_qos", "%d: use 0, 1 or 2", *r.MaxQoS)
		}
		switch r.MaxQoSAction {
		case "":
			r.MaxQoSAction = "refuse"
		case "refuse":
		case "cap":
			if r.MaxQoS == nil {
				bad(f+".max_qos_action", "needs max_qos")
			}
		default:
			bad(f+".max_qos_action", "%q: use refuse or cap", r.MaxQoSAction)
		}
	}

	if c.Policy == nil {
		bad("policy", "missing. moat denies by default and will not start without a policy; "+
			"to forward every well-formed packet (testing only) set `policy: {mode: allow_all}`")
	} else {
		validatePolicy(c.Policy, bad)
	}

	c.Shutdown.DrainTimeout = positiveDuration(c.Shutdown.DrainTimeout, DefaultDrainTimeout, "shutdown.drain_timeout", bad)

	switch n, err := strconv.Atoi(c.Runtime.Procs); {
	case c.Runtime.Procs == "":
		c.Runtime.Procs = ProcsAuto
	case c.Runtime.Procs == ProcsAuto:
	case err != nil || n < 1 || n > 4096:
		bad("runtime.procs", "%q: use auto, or a number of threads from 1 to 4096", c.Runtime.Procs)
	}
	orDefault(&c.Runtime.GCFloor, DefaultGCFloor, "runtime.gc_floor", bad)

	switch c.Log.Level {
	case "":
		c.Log.Level = "info"
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q is not a level; use debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "":
		c.Log.Format = "json"
	case "json", "text":
	default:
		bad("log.format", "%q is not a format; use json or text", c.Log.Format)
	}
	return errors.Join(errs...)
}

// orDefault fills a limit: 0 takes def, -1 stays (off), other negatives
// are errors.
func orDefault[T int | float64 | ByteSize](v *T, def T, field string, bad func(string, string, ...any)) {
	switch {
	case *v == 0:
		*v = def
	case *v < 0 && *v != -1:
		bad(field, "%v: use a positive number, or -1 for no limit", *v)
	}
}

func validateRates(l *Limits, bad func(string, string, ...any)) {
	r := &l.Rate
	switch r.Key {
	case "":
		r.Key = "identity"
	case "identity", "client_id", "username":
	default:
		bad("limits.rate.key", "%q: use identity, client_id or username", r.Key)
	}
	orDefault(&r.PublishPerSecond, 1000, "limits.rate.publish_per_second", bad)
	orDefault(&r.PublishBurst, max(int(r.PublishPerSecond), 1), "limits.rate.publish_burst", bad)
	orDefault(&r.BytesPerSecond, 16<<20, "limits.rate.bytes_per_second", bad)
	orDefault(&r.BytesBurst, max(r.BytesPerSecond, l.MaxPacketSize), "limits.rate.bytes_burst", bad)
	orDefault(&r.SubscribePerSecond, 100, "limits.rate.subscribe_per_second", bad)
	orDefault(&r.SubscribeBurst, max(int(r.SubscribePerSecond), 1), "limits.rate.subscribe_burst", bad)
	switch r.Action {
	case "":
		r.Action = "pace"
	case "pace", "reject", "disconnect":
	default:
		bad("limits.rate.action", "%q: use pace, reject or disconnect", r.Action)
	}
	orDefault(&r.Clients, 100_000, "limits.rate.clients", bad)
	c := &l.Connections
	orDefault(&c.PerAddressPerSecond, 50, "limits.connections.per_address_per_second", bad)
	orDefault(&c.PerAddressBurst, 100, "limits.connections.per_address_burst", bad)
	orDefault(&c.PerAddress, 1000, "limits.connections.per_address", bad)
	orDefault(&c.PerSecond, 2000, "limits.connections.per_second", bad)
	orDefault(&c.Burst, 2000, "limits.connections.burst", bad)
	orDefault(&c.Max, 50_000, "limits.connections.max", bad)
}

func validateAuth(c *Config, bad func(string, string, ...any)) {
	a := &c.Auth
	checkFile("auth.password_file", a.PasswordFile, bad)
	if j := a.JWT; j != nil {
		if (j.JWKSFile == "") == (j.JWKSURL == "") && j.HS256SecretFile == "" {
			bad("auth.jwt", "set one of jwks_file or jwks_url")
		}
		if j.JWKSURL != "" && !strings.HasPrefix(j.JWKSURL, "https://") {
			bad("auth.jwt.jwks_url", "%q: must be https://", j.JWKSURL)
		}
		if j.Issuer == "" {
			bad("auth.jwt.issuer", "required: the \"iss\" your identity provider writes")
		}
		if j.Audience == "" {
			bad("auth.jwt.audience", "required: the \"aud\" tokens for this moat carry, so tokens for other services do not open it")
		}
		for field, path := range map[string]string{"jwks_file": j.JWKSFile, "jwks_ca_file": j.JWKSCAFile, "hs256_secret_file": j.HS256SecretFile} {
			checkFile("auth.jwt."+field, path, bad)
		}
		switch j.OnExpiry {
		case "":
			j.OnExpiry = "disconnect"
		case "disconnect", "ignore":
		default:
			bad("auth.jwt.on_expiry", "%q: use disconnect or ignore", j.OnExpiry)
		}
	}
	for i, m := range a.Methods {
		switch m {
		case "jwt":
			if a.JWT == nil {
				bad(fmt.Sprintf("auth.methods[%d]", i), "jwt needs the auth.jwt section")
			}
		case "certificate":
		case "password":
			if a.PasswordFile == "" {
				bad(fmt.Sprintf("auth.methods[%d]", i), "password needs auth.password_file")
			}
		default:
			bad(fmt.Sprintf("auth.methods[%d]", i), "%q is not a method; use certificate, jwt or password", m)
		}
	}
	switch bf := &a.BruteForce; {
	case bf.MaxFailures == 0:
		bf.MaxFailures = 10
	case bf.MaxFailures < -1:
		bad("auth.brute_force.max_failures", "%d: use a number of failures, or -1 to disable", bf.MaxFailures)
	}
	a.BruteForce.Window = positiveDuration(a.BruteForce.Window, time.Minute, "auth.brute_force.window", bad)
	a.BruteForce.Ban = positiveDuration(a.BruteForce.Ban, 5*time.Minute, "auth.brute_force.ban", bad)
	switch a.ClientID.Bind {
	case "":
		a.ClientID.Bind = "none"
	case "none", "identity", "prefix":
	default:
		bad("auth.client_id.bind", "%q: use none, identity or prefix", a.ClientID.Bind)
	}
	switch a.Certificate.Identity {
	case "":
		a.Certificate.Identity = "common_name"
	case "common_name", "dns_san", "uri_san", "fingerprint":
	default:
		bad("auth.certificate.identity", "%q: use common_name, dns_san, uri_san or fingerprint", a.Certificate.Identity)
	}
	certs := false
	for _, l := range c.Listeners {
		if l.TLS != nil && l.TLS.ClientCAFile != "" && l.TLS.ClientAuth != "none" && l.TLS.ClientAuth != "request" {
			certs = true
		}
	}
	if !a.Anonymous && a.PasswordFile == "" && a.JWT == nil && !certs && len(c.Listeners) > 0 {
		bad("auth", "no client can get in: set auth.password_file or auth.jwt, give a listener client_ca_file with client_auth "+
			"verify_if_given or require, or allow anonymous clients with auth.anonymous: true")
	}
}

func validatePolicy(p *Policy, bad func(string, string, ...any)) {
	switch p.Mode {
	case ModeEnforce, ModeShadow:
		if len(p.Paths) == 0 {
			bad("policy.paths", "required for mode %s: the .rego files or directories, e.g. [policies/plant]", p.Mode)
		}
		for i, path := range p.Paths {
			checkFile(fmt.Sprintf("policy.paths[%d]", i), path, bad)
		}
	case ModeAllowAll:
		if len(p.Paths) > 0 {
			bad("policy.paths", "set, but mode allow_all ignores them; use mode enforce or shadow")
		}
	case "":
		bad("policy.mode", "required; use enforce, shadow (log would-be denials, deny nothing) or allow_all (testing only)")
	default:
		bad("policy.mode", "%q is not a mode; use enforce, shadow or allow_all", p.Mode)
	}
	switch {
	case p.Cache.Size == 0:
		p.Cache.Size = DefaultCacheSize
	case p.Cache.Size < -1:
		bad("policy.cache.size", "%d is negative; use a number of decisions, or -1 to disable the cache", p.Cache.Size)
	}
	p.Cache.TTL = positiveDuration(p.Cache.TTL, DefaultCacheTTL, "policy.cache.ttl", bad)
	p.EvalTimeout = positiveDuration(p.EvalTimeout, DefaultEvalTimeout, "policy.eval_timeout", bad)
	if !p.WatchInterval.Set {
		p.WatchInterval = OptDuration{D: DefaultPolicyWatch, Set: true}
	}
	switch p.OnPublishDeny {
	case "":
		p.OnPublishDeny = "ack"
	case "ack", "disconnect":
	default:
		bad("policy.on_publish_deny", "%q is not an action; use ack or disconnect", p.OnPublishDeny)
	}
	if p.DecisionLog.File == "" {
		p.DecisionLog.File = "stderr"
	}
	switch {
	case p.DecisionLog.RateLimit == 0:
		p.DecisionLog.RateLimit = DefaultDecisionLogRate
	case p.DecisionLog.RateLimit < -1:
		bad("policy.decision_log.rate_limit", "%d is negative; use lines per second, or -1 for no limit", p.DecisionLog.RateLimit)
	}
}

func validateServerTLS(t *ServerTLS, f string, bad func(string, string, ...any)) {
	if t.CertFile == "" {
		bad(f+".cert_file", "required: the PEM server certificate (`moat certs` writes certs/server.crt)")
	}
	if t.KeyFile == "" {
		bad(f+".key_file", "required: the PEM private key of cert_file (`moat certs` writes certs/server.key)")
	}
	checkFile(f+".cert_file", t.CertFile, bad)
	checkFile(f+".key_file", t.KeyFile, bad)
	checkFile(f+".client_ca_file", t.ClientCAFile, bad)
	checkFile(f+".crl_file", t.CRLFile, bad)
	if t.CRLFile != "" && t.ClientCAFile == "" {
		bad(f+".crl_file", "needs client_ca_file: the CA that signed the CRL")
	}
	switch t.ClientAuth {
	case "":
		t.ClientAuth = "none"
	case "none", "request":
	case "verify_if_given", "require":
		if t.ClientCAFile == "" {
			bad(f+".client_ca_file", "required when client_auth is %s: the CA bundle that signs client certificates", t.ClientAuth)
		}
	default:
		bad(f+".client_auth", "%q is not supported; use none, request, verify_if_given or require", t.ClientAuth)
	}
	switch t.MinVersion {
	case "":
		t.MinVersion = "1.2"
	case "1.2", "1.3":
	default:
		bad(f+".min_version", "%q is not allowed; use 1.2 or 1.3 (older TLS versions are insecure)", t.MinVersion)
	}
	t.HandshakeTimeout = positiveDuration(t.HandshakeTimeout, DefaultHandshakeTimeout, f+".handshake_timeout", bad)
}

func positiveDuration(d, def time.Duration, field string, bad func(string, string, ...any)) time.Duration {
	if d == 0 {
		return def
	}
	if d < 0 {
		bad(field, "%v is negative; use a positive duration such as %v", d, def)
	}
	return d
}

func checkFile(field, path string, bad func(string, string, ...any)) {
	if path == "" {
		return
	}
	if _, err := os.Stat(path); err != nil {
		bad(field, "cannot read %q: %v", path, errors.Unwrap(err))
	}
}

func checkHostPort(addr string) error {
	if addr == "" {
		return errors.New("required: host:port, e.g. \"127.0.0.1:1883\"")
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port (%v); IPv6 addresses go in brackets, e.g. \"[::1]:1883\"", addr, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	return nil
}

// ByteSize is a size in bytes. YAML may give a number or a string with a
// unit: B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024).
type ByteSize int64

// UnmarshalYAML implements yaml.Unmarshaler. "-1" is kept as -1: "no
// limit" for the fields that say so.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if strings.TrimSpace(n.Value) == "-1" {
		*b = -1
		return nil
	}
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	*b = v
	return nil
}

// ParseByteSize parses "1048576", "1MiB", "256 KiB", "2MB".
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size; write a number of bytes or use a unit such as 256KiB or 1MiB", s)
	}
	mult := map[string]int64{"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9,
		"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("%q: unknown unit %q; use B, KB, MB, GB, KiB, MiB or GiB", s, unit)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return ByteSize(n * mult), nil
}
