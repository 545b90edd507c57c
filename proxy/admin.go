package proxy

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/ratelimit"
)

// What the admin interface reads and does. Everything here is safe to
// call while the server runs.

// Metrics is the server's Prometheus registry.
func (s *Server) Metrics() *prometheus.Registry { return s.m.reg }

// Conn describes one established client connection.
type Conn struct {
	ID         uint64    `json:"id"`
	ClientID   string    `json:"client_id"`
	Identity   string    `json:"identity"`
	AuthMethod string    `json:"auth_method"`
	Username   string    `json:"username,omitempty"`
	Address    string    `json:"address"`
	Listener   string    `json:"listener"`
	Protocol   string    `json:"protocol"`
	Since      time.Time `json:"since"`
	PacketsIn  uint64    `json:"packets_in"`  // read from the client
	BytesIn    uint64    `json:"bytes_in"`    // read from the client
	PacketsOut uint64    `json:"packets_out"` // read from the broker for the client
	BytesOut   uint64    `json:"bytes_out"`
}

// Connections lists the established connections, oldest first.
func (s *Server) Connections() []Conn {
	s.mu.Lock()
	list := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		if sess.up.Load() {
			list = append(list, sess)
		}
	}
	s.mu.Unlock()
	out := make([]Conn, 0, len(list))
	for _, sess := range list {
		out = append(out, Conn{ID: sess.id, ClientID: sess.info.id, Identity: sess.ident.Name, AuthMethod: sess.ident.Method,
			Username: sess.ident.Username, Address: sess.remote().String(), Listener: sess.lst.cfg.Name,
			Protocol: sess.version.String(), Since: sess.start.UTC(),
			PacketsIn: sess.fromClient.packets.Load(), BytesIn: sess.fromClient.bytes.Load(),
			PacketsOut: sess.fromBroker.packets.Load(), BytesOut: sess.fromBroker.bytes.Load()})
	}
	slices.SortFunc(out, func(a, b Conn) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Disconnect ends connection id: MQTT 5 clients get DISCONNECT 0x98
// (administrative action), and the broker sees an abrupt close, so the
// will is published. It reports whether the connection existed.
func (s *Server) Disconnect(id uint64) bool {
	s.mu.Lock()
	var target *session
	for sess := range s.sessions {
		if sess.id == id && sess.up.Load() {
			target = sess
			break
		}
	}
	s.mu.Unlock()
	if target == nil {
		return false
	}
	target.logger().Info("disconnected by an administrator", "client_id", target.info.id)
	target.end(endClientError, codec.AdministrativeAction, "disconnected by an administrator")
	return true
}

// Ban is one active ban.
type Ban struct {
	Kind  string    `json:"kind"` // login_address, login_username, denials, decoy
	Key   string    `json:"key"`  // an address or a username
	Until time.Time `json:"until"`
}

func (s *Server) banLists() []struct {
	kind string
	b    *ratelimit.Bans
} {
	return []struct {
		kind string
		b    *ratelimit.Bans
	}{{"login_address", s.bansAddr}, {"login_username", s.bansUser}, {"denials", s.abuse}, {"decoy", s.decoyBans}}
}

// Bans lists the active bans.
func (s *Server) Bans() []Ban {
	var out []Ban
	for _, l := range s.banLists() {
		for _, b := range l.b.List() {
			out = append(out, Ban{Kind: l.kind, Key: b.Key, Until: b.Until.UTC()})
		}
	}
	return out
}

// LiftBan lifts every ban on key (an address or a username) and reports
// how many there were.
func (s *Server) LiftBan(key string) int {
	n := 0
	for _, l := range s.banLists() {
		if l.b.Lift(key) {
			n++
		}
	}
	if n > 0 {
		s.log.Info("ban lifted by an administrator", "key", key, "bans", n)
	}
	return n
}

// Ready says why moat cannot serve clients now, or nil: every listener
// bound, the policy loaded (or allow_all), the upstream accepting TCP
// connections (checked at most once a second).
func (s *Server) Ready() error {
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	if closing {
		return errors.New("shutting down")
	}
	for _, l := range s.listeners {
		if l.ln == nil {
			return fmt.Errorf("listener %q is not bound", l.cfg.Name)
		}
	}
	if s.policy == nil && s.cfg.Policy.Mode != config.ModeAllowAll {
		return errors.New("no policy loaded")
	}
	// Probe at most once a second, every configured broker in failover
	// order: one that accepts a connection is one new sessions can use.
	s.readyMu.Lock()
	defer s.readyMu.Unlock()
	if time.Since(s.readyAt) > time.Second {
		s.readyErr = s.probeUpstreams()
		s.readyAt = time.Now()
	}
	return s.readyErr
}

func (s *Server) probeUpstreams() error {
	var errs []error
	first := int(s.upPreferred.Load())
	for i := range s.upstreams {
		addr := s.upstreams[(first+i)%len(s.upstreams)]
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		errs = append(errs, fmt.Errorf("upstream %s unreachable: %w", addr, err))
	}
	return errors.Join(errs...)
}
