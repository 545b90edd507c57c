package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/proxy"
)

// logFile is the log's file, reopened on SIGHUP so that logrotate can
// move it away and moat carries on in a new one.
type logFile struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

func openLogFile(path string) (*logFile, error) {
	l := &logFile{path: path}
	return l, l.Reopen()
}

func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Write(p)
}

// Reopen opens the path afresh; on failure the old file stays in use.
func (l *logFile) Reopen() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("log.file: %w", err)
	}
	l.mu.Lock()
	old := l.f
	l.f = f
	l.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

func (l *logFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}

// newLogger builds the log from its configuration; the level can be
// changed later through level.
func newLogger(c config.Log, w io.Writer, level *slog.LevelVar) *slog.Logger {
	var l slog.Level
	l.UnmarshalText([]byte(c.Level))
	level.Set(l)
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// reloadConfig re-reads the configuration on SIGHUP and applies what can
// change under live connections: the log level, then the proxy's part
// (certificates, auth, payload rules, budgets). A file that does not
// validate changes nothing.
func reloadConfig(path string, srv *proxy.Server, level *slog.LevelVar, log *slog.Logger) {
	cfg, err := config.Load(path)
	if err != nil {
		log.Error("SIGHUP: configuration reload refused; the running configuration stays", "error", err.Error())
		return
	}
	restart, err := srv.Reload(cfg)
	if err != nil {
		log.Error("SIGHUP: configuration reload refused; the running configuration stays", "error", err.Error())
		return
	}
	var l slog.Level
	l.UnmarshalText([]byte(cfg.Log.Level))
	if l != level.Level() {
		level.Set(l)
		log.Info("log level changed", "level", l.String())
	}
	if len(restart) > 0 {
		log.Warn("SIGHUP: these sections changed and take effect only after a restart", "sections", restart)
	}
}
