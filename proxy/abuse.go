package proxy

import (
	"fmt"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/ratelimit"
)

// loadAbuse sets up denial bans.
func (s *Server) loadAbuse() {
	if b := s.cfg.Bans; b.Denials > 0 {
		s.abuse = ratelimit.NewBans(b.Denials, b.Window, b.Duration, 100_000)
	}
}

// decoys are the honeytokens in force; a reload swaps them whole.
type decoys struct {
	topics []string
	users  map[string]bool
	ban    bool
}

func buildDecoys(cfg *config.Config) (*decoys, error) {
	d := &decoys{topics: cfg.Decoys.Topics, users: map[string]bool{}, ban: cfg.Decoys.Ban == nil || *cfg.Decoys.Ban}
	for i, t := range d.topics {
		if err := codec.ValidFilter(t); err != nil {
			return nil, fmt.Errorf("decoys.topics[%d]: %v", i, err)
		}
	}
	for _, u := range cfg.Decoys.Usernames {
		d.users[u] = true
	}
	return d, nil
}

// denied counts a denial (policy, payload, rate) against the client's
// address; at the threshold the address is banned and the session ends.
// It reports whether the session goes on.
func (s *session) denied() bool {
	if s.srv.abuse == nil || !s.srv.abuse.Fail(s.addr) {
		return true
	}
	s.srv.m.bans.WithLabelValues("denials").Inc()
	s.logger().Warn("address banned after repeated denials", "client_id", s.info.id, "ban", s.srv.live.Load().banFor.String())
	s.end(endClientError, codec.AdministrativeAction, "banned after repeated denials") // 0x8A exists only in CONNACK
	return false
}

// decoyTopic reports whether a topic or filter touches a decoy: it lies
// within a decoy filter, or (a filter) would receive a decoy's traffic.
func (s *session) decoyTopic(t string, filter bool) bool {
	for _, d := range s.srv.live.Load().decoys.topics {
		if filter {
			if codec.FilterCovers(d, t) || codec.FilterCovers(t, d) {
				return true
			}
		} else if codec.TopicMatches(d, t) {
			return true
		}
	}
	return false
}

// tripped raises the alert for a touched decoy and, unless configured
// otherwise, bans the address at once. It reports whether the address
// was banned; the caller ends the session.
func (s *session) tripped(what, detail string) bool {
	s.srv.alerts.Add(1)
	s.srv.m.alerts.WithLabelValues(what).Inc()
	s.logger().Error("ALERT: decoy touched", "alert", true, "what", what, "detail", detail,
		"client_id", s.info.id, "identity", s.ident.Name, "address", s.addr)
	if !s.srv.live.Load().decoys.ban {
		return false
	}
	s.srv.decoyBans.Fail(s.addr)
	s.srv.m.bans.WithLabelValues("decoy").Inc()
	return true
}

// trippedEnd is tripped for an established session: a ban ends it.
func (s *session) trippedEnd(what, detail string) bool {
	if s.tripped(what, detail) {
		s.end(endClientError, codec.AdministrativeAction, "banned")
		return false
	}
	return true
}
