// Package proxy is moat's data path: listeners, one session per client
// connection, the upstream dialer, and the two pumps that move checked
// packets between a client and the broker.
package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moat-mqtt/moat/auth"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/payload"
	"github.com/moat-mqtt/moat/policy"
	"github.com/moat-mqtt/moat/ratelimit"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Server accepts clients on its listeners and proxies each to the upstream.
type Server struct {
	cfg      *config.Config
	log      *slog.Logger
	upstream *tls.Config // nil for plain TCP to the broker
	// upstreams are the broker addresses (address, then fallbacks), with
	// their TLS configurations; upPreferred is the one that answered last.
	upstreams   []string
	upstreamTLS []*tls.Config
	upPreferred atomic.Int32
	// dial connects to the broker; nil is a plain TCP dial. Tests put an
	// in-memory broker here.
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	svcPass []byte // the service account's password (upstream.credentials replace)

	listeners []*listener
	parker    *parker // nil: idle pumps keep their goroutines

	authSem   chan struct{}    // bounds concurrent password hashing (CPU and memory)
	conns     *ratelimit.Conns // connection limits, checked at accept
	abuse     *ratelimit.Bans  // denials per address; nil: off
	decoyBans *ratelimit.Bans  // addresses that touched a decoy
	alerts    atomic.Uint64
	bansAddr  *ratelimit.Bans // failed logins per source address; nil: off
	bansUser  *ratelimit.Bans // failed logins per username
	policy    *policy.Engine  // nil in allow_all mode
	decisions io.Closer       // the decision log file, if one was opened
	stdout    io.Writer       // where decision_log.file "stdout" and "stderr" go
	stderr    io.Writer
	stopWatch context.CancelFunc
	watchDone chan struct{}

	mu       sync.Mutex
	sessions map[*session]struct{}
	closing  bool
	wg       sync.WaitGroup // accept loops and sessions

	nextID atomic.Uint64
	m      *metrics
	// live is what a configuration reload replaces; sessions load it.
	live atomic.Pointer[live]

	readyMu  sync.Mutex // the upstream check behind Ready
	readyAt  time.Time
	readyErr error
}

type listener struct {
	cfg config.Listener
	tls *tls.Config                // hands each handshake cur
	cur atomic.Pointer[tls.Config] // the TLS configuration in force
	ln  net.Listener

	trusted []netip.Prefix // load balancers that may send PROXY headers

	active   prometheus.Gauge
	accepted prometheus.Counter
}

// New checks what cannot be checked by config validation alone (that the
// certificates load) and returns a Server that is not yet listening.
func New(cfg *config.Config, log *slog.Logger, opts ...Option) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, sessions: map[*session]struct{}{}, stdout: os.Stdout, stderr: os.Stderr}
	for _, o := range opts {
		o(s)
	}
	for _, lc := range cfg.Listeners {
		l := &listener{cfg: lc}
		if lc.ProxyProtocol != nil {
			l.trusted = lc.ProxyProtocol.TrustedPrefixes()
		}
		if lc.TLS != nil {
			tc, err := serverTLS(lc.TLS)
			if err != nil {
				return nil, fmt.Errorf("listener %q: %w", lc.Name, err)
			}
			l.cur.Store(tc)
			// Each handshake takes the configuration in force: a reload
			// swaps it (new certificate, CAs, CRLs) under live sessions.
			l.tls = &tls.Config{MinVersion: tc.MinVersion, GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
				return l.cur.Load(), nil
			}}
		}
		s.listeners = append(s.listeners, l)
	}
	s.upstreams = append([]string{cfg.Upstream.Address}, cfg.Upstream.Fallbacks...)
	if cfg.Upstream.TLS != nil {
		tc, err := upstreamTLS(cfg.Upstream.TLS)
		if err != nil {
			return nil, fmt.Errorf("upstream: %w", err)
		}
		s.upstream = tc
		for _, a := range s.upstreams {
			c := tc
			if cfg.Upstream.TLS.ServerName == "" {
				// Each broker is verified under its own host name.
				c = tc.Clone()
				c.ServerName, _, _ = net.SplitHostPort(a)
			}
			s.upstreamTLS = append(s.upstreamTLS, c)
		}
	}
	s.m = newMetrics(s)
	for _, l := range s.listeners {
		l.active, l.accepted = s.m.active.WithLabelValues(l.cfg.Name), s.m.accepted.WithLabelValues(l.cfg.Name)
	}
	lv := &live{limits: &cfg.Limits}
	if err := s.loadAuth(lv); err != nil {
		return nil, err
	}
	s.loadLimits()
	buildRates(cfg, lv)
	pc, err := buildPayload(cfg)
	if err != nil {
		return nil, err
	}
	lv.payload = pc
	if lv.decoys, err = buildDecoys(cfg); err != nil {
		return nil, err
	}
	lv.banFor = cfg.Bans.Duration
	s.live.Store(lv)
	s.loadAbuse()
	// One touch of a decoy bans for the configured ban duration.
	s.decoyBans = ratelimit.NewBans(1, time.Hour, s.cfg.Bans.Duration, 100_000)
	if cr := cfg.Upstream.Credentials; cr.Mode == "replace" && cr.PasswordFile != "" {
		data, err := os.ReadFile(cr.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("upstream.credentials.password_file: %w", err)
		}
		line, _, _ := bytes.Cut(data, []byte("\n"))
		s.svcPass = bytes.TrimRight(line, "\r")
	}
	if err := s.loadPolicy(); err != nil {
		return nil, err
	}
	return s, nil
}

// buildPayload compiles the payload rules and their schemas; nil for none.
func buildPayload(cfg *config.Config) (*payload.Checker, error) {
	if len(cfg.Payload.Rules) == 0 {
		return nil, nil
	}
	var rules []*payload.Rule
	for i, rc := range cfg.Payload.Rules {
		r := &payload.Rule{Topics: rc.Topics, MaxSize: int(rc.MaxSize), UTF8: rc.UTF8, JSON: rc.JSON, Retain: rc.Retain, MaxQoS: -1, CapQoS: rc.MaxQoSAction == "cap"}
		if rc.MaxQoS != nil {
			r.MaxQoS = *rc.MaxQoS
		}
		if rc.SchemaFile != "" {
			sch, err := payload.CompileSchema(rc.SchemaFile)
			if err != nil {
				return nil, fmt.Errorf("payload.rules[%d].schema_file: %w", i, err)
			}
			r.Schema = sch
		}
		rules = append(rules, r)
	}
	return payload.New(rules)
}

// loadLimits sets up the connection limits and the client budgets; a
// limit of -1 in the configuration is none.
func (s *Server) loadLimits() {
	s.conns = ratelimit.NewConns(connLimits(s.cfg), 100_000)
}

func connLimits(cfg *config.Config) ratelimit.ConnLimits {
	off := func(v float64) float64 { return max(v, 0) }
	c := cfg.Limits.Connections
	return ratelimit.ConnLimits{
		PerAddressRate: rate.Limit(off(c.PerAddressPerSecond)), PerAddressBurst: c.PerAddressBurst, PerAddress: max(c.PerAddress, 0),
		GlobalRate: rate.Limit(off(c.PerSecond)), GlobalBurst: c.Burst, Global: max(c.Max, 0),
	}
}

// buildRates makes the client budget registry and the topic budgets.
func buildRates(cfg *config.Config, lv *live) {
	off := func(v float64) float64 { return max(v, 0) }
	r := cfg.Limits.Rate
	lv.rate = r
	lv.rates = ratelimit.NewClients(ratelimit.Rates{
		Messages: rate.Limit(off(r.PublishPerSecond)), MessageBurst: r.PublishBurst,
		Bytes: rate.Limit(off(float64(r.BytesPerSecond))), ByteBurst: int(r.BytesBurst),
		Subscribes: rate.Limit(off(r.SubscribePerSecond)), SubscribeBurst: r.SubscribeBurst,
	}, r.Clients)
	for _, tr := range cfg.Limits.TopicRates {
		lv.topicRates = append(lv.topicRates, topicRule(tr))
	}
}

func topicRule(tr config.TopicRate) ratelimit.TopicRule {
	return ratelimit.TopicRule{Filters: tr.Topics, PerSecond: tr.PublishPerSecond, Burst: tr.PublishBurst}
}

// buildAuth reads the password file and sets up the methods.
func buildAuth(cfg *config.Config, log *slog.Logger) (*auth.Authenticator, error) {
	ac := cfg.Auth
	acfg := auth.Config{Methods: ac.Methods, Anonymous: ac.Anonymous, CertIdentity: ac.Certificate.Identity, BindClientID: ac.ClientID.Bind}
	if ac.PasswordFile != "" {
		pw, err := auth.LoadPasswords(ac.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("auth.password_file: %w", err)
		}
		acfg.Passwords = pw
		log.Info("password file loaded", "file", ac.PasswordFile, "users", pw.Len())
	}
	if jc := ac.JWT; jc != nil {
		j := &auth.JWT{JWKSFile: jc.JWKSFile, JWKSURL: jc.JWKSURL, Issuer: jc.Issuer, Audience: jc.Audience,
			Algorithms: jc.Algorithms, Leeway: jc.Leeway, UsernameClaim: jc.UsernameClaim, MatchUsername: jc.MatchUsername,
			Refresh: jc.Refresh, MinRefresh: jc.MinRefresh}
		if jc.JWKSCAFile != "" {
			pool, err := loadPool(jc.JWKSCAFile)
			if err != nil {
				return nil, fmt.Errorf("auth.jwt.jwks_ca_file: %w", err)
			}
			j.HTTPClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
		}
		if jc.HS256SecretFile != "" {
			secret, err := os.ReadFile(jc.HS256SecretFile)
			if err != nil {
				return nil, fmt.Errorf("auth.jwt.hs256_secret_file: %w", err)
			}
			j.HMACSecret = bytes.TrimRight(secret, "\r\n")
		}
		acfg.JWT = j
	}
	a, err := auth.New(acfg)
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	if ac.Anonymous {
		log.Warn("anonymous clients are admitted (auth.anonymous: true)")
	}
	return a, nil
}

// loadAuth sets up authentication and the brute-force bans.
func (s *Server) loadAuth(lv *live) error {
	a, err := buildAuth(s.cfg, s.log)
	if err != nil {
		return err
	}
	lv.auth = a
	if bf := s.cfg.Auth.BruteForce; bf.MaxFailures > 0 {
		s.bansAddr = ratelimit.NewBans(bf.MaxFailures, bf.Window, bf.Ban, 100_000)
		s.bansUser = ratelimit.NewBans(bf.MaxFailures, bf.Window, bf.Ban, 100_000)
	}
	// A password hash costs tens of milliseconds and, for argon2id, 19 MiB:
	// at most two per core run at once, the rest wait their turn.
	s.authSem = make(chan struct{}, 2*runtime.GOMAXPROCS(0))
	return nil
}

// Option adjusts a Server.
type Option func(*Server)

// WithOutput sets the streams a decision log of "stdout" or "stderr" goes
// to (default: the process's own).
func WithOutput(stdout, stderr io.Writer) Option {
	return func(s *Server) { s.stdout, s.stderr = stdout, stderr }
}

// loadPolicy compiles the configured policy; there is no server without
// one that compiles, unless allow_all was chosen explicitly.
func (s *Server) loadPolicy() error {
	pc := s.cfg.Policy
	if pc == nil {
		return errors.New("no policy configured: moat denies by default")
	}
	if pc.Mode == config.ModeAllowAll {
		s.log.Warn("running without policies: policy.mode is allow_all, every well-formed packet is forwarded")
		return nil
	}
	var evals [6]prometheus.Observer
	for _, a := range policy.Actions {
		evals[a] = s.m.evalSeconds.WithLabelValues(a.String())
	}
	opts := policy.Options{Paths: pc.Paths, CacheSize: pc.Cache.Size, CacheTTL: pc.Cache.TTL,
		EvalTimeout: pc.EvalTimeout, Log: s.log,
		OnEval: func(a policy.Action, d time.Duration) {
			if int(a) < len(evals) && evals[a] != nil {
				evals[a].Observe(d.Seconds())
			}
		}}
	if pc.Mode == config.ModeShadow {
		opts.Mode = policy.Shadow
		s.log.Warn("policy in shadow mode: would-be denials are logged, nothing is denied")
	}
	var w io.Writer
	switch pc.DecisionLog.File {
	case "off":
	case "stderr", "":
		w = s.stderr
	case "stdout":
		w = s.stdout
	default:
		f, err := os.OpenFile(pc.DecisionLog.File, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return fmt.Errorf("policy.decision_log.file: %w", err)
		}
		w, s.decisions = f, f
	}
	if w != nil {
		opts.Decisions = policy.NewDecisionLog(w, pc.DecisionLog.Allows, pc.DecisionLog.RateLimit)
	}
	eng, err := policy.New(opts)
	if err != nil {
		if s.decisions != nil {
			s.decisions.Close()
		}
		return err
	}
	s.policy = eng
	s.m.watchPolicy(s)
	s.log.Info("policy loaded", "revision", eng.Revision(), "mode", pc.Mode, "paths", pc.Paths)
	return nil
}

// Policy returns the policy engine, nil in allow_all mode.
func (s *Server) Policy() *policy.Engine { return s.policy }

// listenConfig and dialer turn TCP keep-alive off, on both sides. A client
// silent past its MQTT keep alive is cut by moat's own deadline (a keep
// alive of 0 is held to limits.max_keep_alive), and a broker by the
// client's pings and moat's write deadline; the probes would only cost
// four setsockopt calls per socket. Go sets TCP_NODELAY on every TCP
// connection itself.
var (
	listenConfig = net.ListenConfig{KeepAlive: -1}
	dialer       = net.Dialer{KeepAlive: -1}
)

// Start binds every listener and starts accepting. If one cannot bind, the
// others are closed and the error names the listener.
func (s *Server) Start() error {
	if p, err := newParker(); err != nil {
		s.log.Warn("idle connections will keep their goroutines", "error", err)
	} else {
		s.parker = p
	}
	for _, l := range s.listeners {
		ln, err := listenConfig.Listen(context.Background(), "tcp", l.cfg.Address)
		if err != nil {
			for _, o := range s.listeners {
				if o.ln != nil {
					o.ln.Close()
				}
			}
			if s.parker != nil {
				s.parker.close()
			}
			return fmt.Errorf("listener %q: %w", l.cfg.Name, err)
		}
		l.ln = ln
	}
	if s.policy != nil && s.cfg.Policy.WatchInterval.D > 0 {
		ctx, cancel := context.WithCancel(context.Background())
		s.stopWatch, s.watchDone = cancel, make(chan struct{})
		go func() {
			defer close(s.watchDone)
			s.policy.Watch(ctx, s.cfg.Policy.WatchInterval.D)
		}()
	}
	for _, l := range s.listeners {
		s.log.Info("listening", "listener", l.cfg.Name, "address", l.ln.Addr().String(), "transport", l.cfg.Transport)
		s.wg.Add(1)
		if l.webSocket() {
			go s.serveWebSocket(l)
		} else {
			go s.acceptLoop(l)
		}
	}
	return nil
}

// Addr returns the bound address of the named listener, or nil.
func (s *Server) Addr(name string) net.Addr {
	for _, l := range s.listeners {
		if l.cfg.Name == name && l.ln != nil {
			return l.ln.Addr()
		}
	}
	return nil
}

func (s *Server) acceptLoop(l *listener) {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Error("accept failed", "listener", l.cfg.Name, "error", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if pp := l.cfg.ProxyProtocol; pp != nil {
			if trustedSource(l.trusted, conn.RemoteAddr()) {
				s.wg.Add(1)
				go s.acceptProxied(l, conn)
				continue
			}
			if !pp.AllowDirect {
				s.m.refusedConns.WithLabelValues(l.cfg.Name, "not_a_balancer").Inc()
				s.log.Debug("connection refused: not from a trusted load balancer", "listener", l.cfg.Name, "remote", conn.RemoteAddr().String())
				conn.Close()
				continue
			}
		}
		addr := hostOf(conn.RemoteAddr())
		if !s.admit(l, conn, addr) {
			continue
		}
		sess := s.sessionFor(l, conn, addr, nil)
		if sess == nil {
			return // shutting down
		}
		go sess.serve()
	}
}

// sessionFor makes and tracks the session of an admitted connection from
// addr (peer: the client's address from a PROXY header, or nil). It
// returns nil, having released the admission and closed the connection,
// when the server is shutting down.
func (s *Server) sessionFor(l *listener, conn net.Conn, addr string, peer net.Addr) *session {
	sess := newSession(s, l, conn)
	sess.addr, sess.peer = addr, peer
	if !s.track(sess) {
		s.conns.Release(addr)
		conn.Close()
		return nil
	}
	return sess
}

// admit applies bans and connection limits to a new connection, before
// TLS: a refused one is closed and costs one accept.
func (s *Server) admit(l *listener, conn net.Conn, addr string) bool {
	if s.bannedAddr(addr) {
		s.m.refusedConns.WithLabelValues(l.cfg.Name, "banned").Inc()
		conn.Close()
		return false
	}
	if ok, why := s.conns.Admit(addr, time.Now()); !ok {
		s.m.refusedConns.WithLabelValues(l.cfg.Name, "connection_limit").Inc()
		s.log.Debug("connection refused", "remote", conn.RemoteAddr().String(), "reason", why)
		conn.Close()
		return false
	}
	l.accepted.Inc()
	return true
}

// webSocket reports whether the listener speaks MQTT over WebSocket.
func (l *listener) webSocket() bool { return l.cfg.Transport == "ws" || l.cfg.Transport == "wss" }

// bannedAddr reports whether any ban holds the address.
func (s *Server) bannedAddr(addr string) bool {
	for _, b := range []*ratelimit.Bans{s.bansAddr, s.abuse, s.decoyBans} {
		if banned, _ := b.Banned(addr); banned {
			return true
		}
	}
	return false
}

// hostOf is the IP of a connection's remote address: the key bans use.
func hostOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

func (s *Server) track(sess *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.sessions[sess] = struct{}{}
	s.wg.Add(1)
	sess.lst.active.Inc()
	return true
}

func (s *Server) forget(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
	sess.lst.active.Dec()
	s.wg.Done()
}

// Sessions reports how many client connections are open.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Shutdown stops accepting, asks every session to drain (stop reading from
// its client at a packet boundary, hand the broker a DISCONNECT, deliver
// what the broker still sends) and waits for them until ctx ends; sessions
// still open then are closed. MQTT 5 clients are told 0x8B (server
// shutting down).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	sessions := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	for _, l := range s.listeners {
		if l.ln != nil {
			l.ln.Close()
		}
	}
	for _, sess := range sessions {
		sess.drain()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	defer func() {
		if s.parker != nil {
			s.parker.close()
		}
		if s.stopWatch != nil {
			s.stopWatch()
			<-s.watchDone
		}
		s.log.Info("alerts", "decoys_touched", s.alerts.Load())
		if s.policy != nil {
			st := s.policy.Stats()
			s.log.Info("policy decisions", "revision", st.Revision, "cache_hits", st.CacheHits, "evaluations", st.CacheMisses,
				"hit_ratio", st.HitRatio(), "denials", st.Denials, "shadow_denials", st.ShadowDenials, "errors", st.Errors)
		}
		if s.decisions != nil {
			s.decisions.Close()
		}
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for sess := range s.sessions {
		sess.forceClose()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}

// limits are the limits in force (a reload may change them).
func (s *Server) limits() *config.Limits { return s.live.Load().limits }

// live is the part of the configuration that Reload replaces while
// connections stay up.
type live struct {
	limits     *config.Limits
	auth       *auth.Authenticator
	payload    *payload.Checker // nil without payload rules
	rates      *ratelimit.Clients
	rate       config.ClientRate // the budgets' key and action
	topicRates []ratelimit.TopicRule
	decoys     *decoys
	banFor     time.Duration // bans.duration, for the log
}
