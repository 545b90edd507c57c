// Package admin serves moat's operator interface over HTTP: Prometheus
// metrics, health and readiness checks, and a JSON API (behind a bearer
// token) to list and disconnect connections, list and lift bans, and read
// the policy revision.
package admin

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/proxy"
)

// MinTokenLength is the shortest API token accepted: a guessable token
// would make the API (which can lift bans) the weakest door.
const MinTokenLength = 16

// Server is the admin HTTP server.
type Server struct {
	p     *proxy.Server
	log   *slog.Logger
	level *slog.LevelVar // nil: the level cannot be changed here
	token []byte         // nil: the API is off
	http  *http.Server
	ln    net.Listener
}

// ReadToken reads an API token file: one line, surrounding white space
// ignored, at least MinTokenLength characters.
func ReadToken(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("admin.token_file: %w", err)
	}
	b = bytes.TrimSpace(b)
	if len(b) < MinTokenLength {
		return nil, fmt.Errorf("admin.token_file: the token is %d characters; use at least %d (e.g. `openssl rand -hex 32 > %s`)", len(b), MinTokenLength, path)
	}
	return b, nil
}

// New prepares the admin server for p; Start binds it. level, if not
// nil, is the log's level, which PUT /api/log/level changes.
func New(cfg config.Admin, p *proxy.Server, log *slog.Logger, level *slog.LevelVar) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Server{p: p, log: log, level: level}
	if cfg.TokenFile != "" {
		t, err := ReadToken(cfg.TokenFile)
		if err != nil {
			return nil, err
		}
		a.token = t
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.Metrics(), promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", a.readyz)
	mux.Handle("GET /api/connections", a.api(a.connections))
	mux.Handle("DELETE /api/connections/{id}", a.api(a.disconnect))
	mux.Handle("GET /api/bans", a.api(a.bans))
	mux.Handle("DELETE /api/bans/{key}", a.api(a.lift))
	mux.Handle("GET /api/policy", a.api(a.policy))
	mux.Handle("GET /api/log/level", a.api(a.logLevel))
	mux.Handle("PUT /api/log/level", a.api(a.logLevel))
	if cfg.Pprof {
		mux.Handle("GET /debug/pprof/", a.api(pprof.Index))
		mux.Handle("GET /debug/pprof/cmdline", a.api(pprof.Cmdline))
		mux.Handle("GET /debug/pprof/profile", a.api(pprof.Profile))
		mux.Handle("GET /debug/pprof/symbol", a.api(pprof.Symbol))
		mux.Handle("GET /debug/pprof/trace", a.api(pprof.Trace))
	}
	a.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	return a, nil
}

// Start binds addr and serves until Shutdown.
func (a *Server) Start(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("admin.address: %w", err)
	}
	a.ln = ln
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		a.log.Warn("admin interface is not on loopback: /metrics and the health checks need no token; keep it on a management network", "address", ln.Addr().String())
	}
	a.log.Info("admin interface listening", "address", ln.Addr().String(), "api", a.token != nil)
	go func() {
		if err := a.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("admin interface stopped", "error", err)
		}
	}()
	return nil
}

// Addr is the bound address.
func (a *Server) Addr() net.Addr { return a.ln.Addr() }

// Shutdown stops serving.
func (a *Server) Shutdown(ctx context.Context) error { return a.http.Shutdown(ctx) }

func (a *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if err := a.p.Ready(); err != nil {
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// api wraps a handler with the token check.
func (a *Server) api(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.token == nil {
			http.Error(w, "the admin API is off: set admin.token_file", http.StatusForbidden)
			return
		}
		const prefix = "Bearer "
		got := r.Header.Get("Authorization")
		if len(got) < len(prefix) || got[:len(prefix)] != prefix ||
			subtle.ConstantTimeCompare([]byte(got[len(prefix):]), a.token) != 1 {
			a.log.Warn("admin API: request without a valid token", "remote", r.RemoteAddr, "path", r.URL.Path)
			w.Header().Set("WWW-Authenticate", `Bearer realm="moat"`)
			http.Error(w, "a valid bearer token is required", http.StatusUnauthorized)
			return
		}
		h(w, r)
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func (a *Server) connections(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, a.p.Connections())
}

func (a *Server) disconnect(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		http.Error(w, "connection ids are numbers (see GET /api/connections)", http.StatusBadRequest)
		return
	}
	if !a.p.Disconnect(id) {
		http.Error(w, "no such connection", http.StatusNotFound)
		return
	}
	a.log.Info("admin API: connection disconnected", "conn", id, "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusNoContent)
}

func (a *Server) bans(w http.ResponseWriter, _ *http.Request) {
	bans := a.p.Bans()
	if bans == nil {
		bans = []proxy.Ban{}
	}
	writeJSON(w, bans)
}

func (a *Server) lift(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	n := a.p.LiftBan(key)
	if n == 0 {
		http.Error(w, "no active ban on "+strconv.Quote(key), http.StatusNotFound)
		return
	}
	a.log.Info("admin API: ban lifted", "key", key, "remote", r.RemoteAddr)
	writeJSON(w, map[string]any{"key": key, "lifted": n})
}

func (a *Server) policy(w http.ResponseWriter, _ *http.Request) {
	eng := a.p.Policy()
	if eng == nil {
		writeJSON(w, map[string]any{"mode": "allow_all"})
		return
	}
	st := eng.Stats()
	writeJSON(w, map[string]any{"mode": eng.Mode().String(), "revision": st.Revision, "cache_hit_ratio": st.HitRatio(),
		"specialised": st.Specialised, "denials": st.Denials, "shadow_denials": st.ShadowDenials, "errors": st.Errors, "reloads": st.Reloads, "reload_failures": st.ReloadErrors})
}

// logLevel reports the log level (GET) or sets it (PUT, body debug, info,
// warn or error) until the next restart or SIGHUP.
func (a *Server) logLevel(w http.ResponseWriter, r *http.Request) {
	if a.level == nil {
		http.Error(w, "the log level is fixed in this process", http.StatusNotFound)
		return
	}
	if r.Method == http.MethodPut {
		body, err := io.ReadAll(io.LimitReader(r.Body, 64))
		var l slog.Level
		if err != nil || l.UnmarshalText(bytes.TrimSpace(body)) != nil {
			http.Error(w, "send one of debug, info, warn, error", http.StatusBadRequest)
			return
		}
		a.level.Set(l)
		a.log.Info("admin API: log level changed", "level", l.String(), "remote", r.RemoteAddr)
	}
	writeJSON(w, map[string]string{"level": strings.ToLower(a.level.Level().String())})
}
