package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/moat-mqtt/moat/auth"
	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/policy"
)

// metrics are the server's Prometheus collectors, in a registry of its
// own. Labels are bounded sets (listener names, packet types, fixed
// causes): never a client id, address or topic. Counters on the packet
// path are resolved once, so counting costs an atomic add.
type metrics struct {
	reg *prometheus.Registry

	active       *prometheus.GaugeVec
	accepted     *prometheus.CounterVec
	refusedConns *prometheus.CounterVec // at accept, by cause
	tlsFailures  *prometheus.CounterVec
	authFailures *prometheus.CounterVec
	refusals     *prometheus.CounterVec // packets refused, by cause
	rateLimited  *prometheus.CounterVec
	bans         *prometheus.CounterVec
	alerts       *prometheus.CounterVec
	dialFailures prometheus.Counter
	oversize     prometheus.Counter // deliveries dropped for their size
	dialSeconds  prometheus.Histogram
	evalSeconds  *prometheus.HistogramVec

	// [direction][packet type]
	packets, bytes [2][16]prometheus.Counter
}

const (
	toBroker = 0
	toClient = 1
)

func newMetrics(s *Server) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.active = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "moat_connections_active", Help: "Client connections open, per listener."}, []string{"listener"})
	m.accepted = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_connections_total", Help: "Client connections accepted, per listener."}, []string{"listener"})
	m.refusedConns = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_connections_refused_total", Help: "Connections closed at accept, before TLS: banned address or connection limit."}, []string{"listener", "cause"})
	m.tlsFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_tls_handshake_failures_total", Help: "Failed client TLS handshakes, by cause."}, []string{"listener", "cause"})
	m.authFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_auth_failures_total", Help: "Refused CONNECTs, by cause."}, []string{"cause"})
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_refusals_total", Help: "Client packets moat did not forward, by cause."}, []string{"cause"})
	m.rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_rate_limited_total", Help: "Packets over a client's budget, by what moat did."}, []string{"action"})
	m.bans = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_bans_total", Help: "Bans imposed, by kind."}, []string{"kind"})
	m.alerts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_alerts_total", Help: "Decoy alerts, by what was touched."}, []string{"kind"})
	m.oversize = prometheus.NewCounter(prometheus.CounterOpts{Name: "moat_deliveries_oversize_dropped_total",
		Help: "Broker deliveries to MQTT 3.x clients larger than limits.max_packet_size: dropped and acknowledged to the broker."})
	m.dialFailures = prometheus.NewCounter(prometheus.CounterOpts{Name: "moat_upstream_dial_failures_total", Help: "Failed connections to the upstream broker (TCP or TLS)."})
	m.dialSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "moat_upstream_dial_seconds", Help: "Time to connect to the upstream broker, TLS included.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9)})
	m.evalSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "moat_policy_eval_seconds", Help: "Policy evaluations (cache misses, connect and will decisions).",
		Buckets: prometheus.ExponentialBuckets(0.000005, 3, 10)}, []string{"action"})
	for _, c := range []prometheus.Collector{m.active, m.accepted, m.refusedConns, m.tlsFailures, m.authFailures, m.refusals, m.rateLimited, m.bans, m.alerts, m.oversize, m.dialFailures, m.dialSeconds, m.evalSeconds} {
		f(c)
	}
	pk := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_packets_total", Help: "MQTT packets relayed or answered, per direction and type."}, []string{"direction", "type"})
	by := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_bytes_total", Help: "MQTT packet bytes read, per direction and type."}, []string{"direction", "type"})
	f(pk)
	f(by)
	for d, dir := range []string{"client_to_broker", "broker_to_client"} {
		for t := codec.CONNECT; t <= codec.AUTH; t++ {
			m.packets[d][t] = pk.WithLabelValues(dir, t.String())
			m.bytes[d][t] = by.WithLabelValues(dir, t.String())
		}
	}
	for _, l := range s.listeners {
		m.active.WithLabelValues(l.cfg.Name)
		m.accepted.WithLabelValues(l.cfg.Name)
	}
	return m
}

// watchPolicy exposes the engine's counters: read when scraped, free on
// the packet path.
func (m *metrics) watchPolicy(s *Server) {
	if s.policy == nil {
		return
	}
	eng := s.policy
	stat := func(name, help string, v func(policy.Stats) uint64) {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(v(eng.Stats())) }))
	}
	stat("moat_policy_cache_hits_total", "Decisions answered from the cache.", func(st policy.Stats) uint64 { return st.CacheHits })
	stat("moat_policy_cache_misses_total", "Decisions evaluated (misses, connect and will decisions).", func(st policy.Stats) uint64 { return st.CacheMisses })
	stat("moat_policy_specialised_total", "Cache misses allowed by the connection's specialised rules instead of a full evaluation (counted in the misses too).", func(st policy.Stats) uint64 { return st.Specialised })
	stat("moat_policy_errors_total", "Evaluations that failed (each a denial).", func(st policy.Stats) uint64 { return st.Errors })
	stat("moat_policy_reloads_total", "Policy reloads that took effect.", func(st policy.Stats) uint64 { return st.Reloads })
	stat("moat_policy_reload_failures_total", "Policy reloads refused (the previous policy stayed).", func(st policy.Stats) uint64 { return st.ReloadErrors })
	dec := prometheus.NewDesc("moat_decisions_total", "Policy decisions, by action and result.", []string{"action", "result"}, nil)
	m.reg.MustRegister(decisionCollector{eng: eng, desc: dec})
}

// decisionCollector reads the engine's per-action counters at scrape time.
type decisionCollector struct {
	eng  *policy.Engine
	desc *prometheus.Desc
}

func (c decisionCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c decisionCollector) Collect(ch chan<- prometheus.Metric) {
	for _, a := range policy.Actions {
		for _, r := range []policy.Result{policy.ResultAllow, policy.ResultDeny, policy.ResultShadowDeny} {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(c.eng.Decisions(a, r)), a.String(), r.String())
		}
	}
}

// packet counts one packet of n bytes read in direction d.
func (m *metrics) addPackets(d int, t codec.PacketType, n uint32, bytes uint64) {
	if t > codec.AUTH {
		return
	}
	m.packets[d][t].Add(float64(n))
	m.bytes[d][t].Add(float64(bytes))
}

// tlsCause sorts a failed handshake into a few causes.
func tlsCause(err error) string {
	var re tls.RecordHeaderError
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		return "closed"
	case errors.As(err, &re):
		return "not_tls"
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "certificate"), strings.Contains(msg, "revoked"):
		return "bad_certificate"
	case strings.Contains(msg, "version"), strings.Contains(msg, "cipher"), strings.Contains(msg, "protocol"):
		return "protocol"
	case strings.Contains(msg, "reset"):
		return "closed"
	}
	return "other"
}

// observeDial records one upstream dial.
func (m *metrics) observeDial(start time.Time, err error) {
	if err != nil {
		m.dialFailures.Inc()
		return
	}
	m.dialSeconds.Observe(time.Since(start).Seconds())
}

// refused counts a client packet moat answered instead of forwarding.
func (m *metrics) refused(code codec.ReasonCode) {
	cause := "other"
	switch code {
	case codec.NotAuthorized:
		cause = "policy"
	case codec.PayloadFormatInvalid:
		cause = "payload"
	case codec.QuotaExceeded:
		cause = "quota"
	}
	m.refusals.WithLabelValues(cause).Inc()
}

// authCause sorts a failed authentication for the metrics.
func authCause(err error) string {
	if errors.Is(err, auth.ErrBadCredentials) {
		return "bad_credentials"
	}
	return "not_authorized"
}

// traffic is one direction of a session's counts. Its pump adds them up
// in runs of one packet type and hands a run to the totals (the
// session's, and the server's shared counters) when it ends: at the last
// packet read, a change of type, 64 packets, or before the pump waits.
// So a batch of PUBLISHes read together touches the shared counters once,
// and nothing the pump then writes is seen before its count.
type traffic struct {
	packets, bytes atomic.Uint64
	run            codec.PacketType
	runN           uint32
	runBytes       uint64
}

// count records a packet read in direction d; last says nothing more is
// buffered after it.
func (t *traffic) count(m *metrics, d int, f codec.Frame, last bool) {
	if t.runN > 0 && f.Type != t.run {
		t.flush(m, d)
	}
	t.run = f.Type
	t.runN++
	t.runBytes += uint64(len(f.Bytes))
	if last || t.runN >= 64 {
		t.flush(m, d)
	}
}

// flush hands the current run to the totals.
func (t *traffic) flush(m *metrics, d int) {
	if t.runN == 0 {
		return
	}
	t.packets.Add(uint64(t.runN))
	t.bytes.Add(t.runBytes)
	m.addPackets(d, t.run, t.runN, t.runBytes)
	t.runN, t.runBytes = 0, 0
}
