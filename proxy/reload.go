package proxy

import (
	"crypto/tls"
	"fmt"
	"reflect"
	"time"

	"github.com/moat-mqtt/moat/config"
)

// Reload applies a new configuration to the running server without
// dropping a connection: the listeners' certificates, client CAs and
// CRLs (new handshakes use them), the password file and JWT settings,
// payload rules, limits (budgets and connection limits at once; the
// protocol limits for packets and connections from now on), ban
// thresholds and decoys.
// Everything is built first; if any part fails, nothing changes and the
// error says why. It returns the sections that differ but only take
// effect after a restart. The policy files reload on their own.
func (s *Server) Reload(cfg *config.Config) (restart []string, err error) {
	certs := make([]*tls.Config, len(s.listeners))
	for i, l := range s.listeners {
		nc := listenerNamed(cfg, l.cfg.Name)
		if nc == nil || nc.Transport != l.cfg.Transport || nc.Address != l.cfg.Address ||
			!reflect.DeepEqual(nc.MaxQoS, l.cfg.MaxQoS) || !reflect.DeepEqual(nc.RetainAvailable, l.cfg.RetainAvailable) {
			restart = append(restart, "listeners["+l.cfg.Name+"]")
			continue
		}
		if nc.TLS != nil {
			if certs[i], err = serverTLS(nc.TLS); err != nil {
				return nil, fmt.Errorf("listener %q: %w", nc.Name, err)
			}
		}
	}
	if len(cfg.Listeners) != len(s.listeners) {
		restart = append(restart, "listeners")
	}
	old := s.live.Load()
	lim := cfg.Limits
	lv := &live{limits: &lim}
	if lv.auth, err = buildAuth(cfg, s.log); err != nil {
		return nil, err
	}
	if lv.payload, err = buildPayload(cfg); err != nil {
		return nil, err
	}
	if lv.decoys, err = buildDecoys(cfg); err != nil {
		return nil, err
	}
	lv.banFor = cfg.Bans.Duration
	if reflect.DeepEqual(cfg.Limits.Rate, old.rate) {
		// Unchanged budgets keep their registry: a reload refills no one.
		lv.rates, lv.rate = old.rates, old.rate
		for _, tr := range cfg.Limits.TopicRates {
			lv.topicRates = append(lv.topicRates, topicRule(tr))
		}
	} else {
		buildRates(cfg, lv)
	}

	for i, l := range s.listeners {
		if certs[i] != nil {
			l.cur.Store(certs[i])
		}
	}
	s.live.Store(lv)
	if !reflect.DeepEqual(cfg.Limits.Connections, old.limits.Connections) {
		s.conns.Configure(connLimits(cfg))
	}

	cur := s.cfg
	// Ban thresholds change in place, keeping current bans; turning a
	// kind of ban on or off needs a restart.
	if bf := cfg.Auth.BruteForce; (bf.MaxFailures > 0) == (s.bansAddr != nil) {
		s.bansAddr.Configure(bf.MaxFailures, bf.Window, bf.Ban)
		s.bansUser.Configure(bf.MaxFailures, bf.Window, bf.Ban)
	} else {
		restart = append(restart, "auth.brute_force")
	}
	b := cfg.Bans
	s.decoyBans.Configure(1, time.Hour, b.Duration)
	if (b.Denials > 0) == (s.abuse != nil) {
		s.abuse.Configure(b.Denials, b.Window, b.Duration)
	} else {
		restart = append(restart, "bans.denials")
	}
	for _, d := range []struct {
		name     string
		old, new any
	}{
		{"upstream", cur.Upstream, cfg.Upstream},
		{"policy", cur.Policy, cfg.Policy},
		{"admin", cur.Admin, cfg.Admin},
		{"shutdown", cur.Shutdown, cfg.Shutdown},
		{"runtime", cur.Runtime, cfg.Runtime},
	} {
		if !reflect.DeepEqual(d.old, d.new) {
			restart = append(restart, d.name)
		}
	}
	s.log.Info("configuration reloaded", "applied", "listener certificates and CAs, auth, payload rules, limits, ban thresholds, decoys", "need_restart", restart)
	return restart, nil
}

func listenerNamed(cfg *config.Config, name string) *config.Listener {
	for i := range cfg.Listeners {
		if cfg.Listeners[i].Name == name {
			return &cfg.Listeners[i]
		}
	}
	return nil
}
