package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/moat-mqtt/moat/config"
)

// watchedFiles are the files a configuration names whose change a reload
// can apply: certificates, keys, CAs, CRLs, the password file, the JWT
// key material and the payload schemas, and the configuration itself.
func watchedFiles(path string, cfg *config.Config) []string {
	files := []string{path}
	add := func(fs ...string) {
		for _, f := range fs {
			if f != "" {
				files = append(files, f)
			}
		}
	}
	for _, l := range cfg.Listeners {
		if t := l.TLS; t != nil {
			add(t.CertFile, t.KeyFile, t.ClientCAFile, t.CRLFile)
		}
	}
	add(cfg.Auth.PasswordFile)
	if j := cfg.Auth.JWT; j != nil {
		add(j.JWKSFile, j.JWKSCAFile, j.HS256SecretFile)
	}
	for _, r := range cfg.Payload.Rules {
		add(r.SchemaFile)
	}
	return files
}

// stamp sums up files by name, size and modification time; a missing
// file is part of the stamp too.
func stamp(files []string) string {
	var b strings.Builder
	for _, f := range files {
		if st, err := os.Stat(f); err == nil {
			fmt.Fprintf(&b, "%s:%d:%d;", f, st.Size(), st.ModTime().UnixNano())
		} else {
			fmt.Fprintf(&b, "%s:missing;", f)
		}
	}
	return b.String()
}

// watchConfig calls reload when the configuration or a file it names
// changes, polling every interval until ctx ends. A change is acted on
// once the files have been still for one interval, so a certificate and
// its key replaced one after the other are reloaded together.
func watchConfig(ctx context.Context, path string, cfg *config.Config, interval time.Duration, reload func()) {
	files := watchedFiles(path, cfg)
	last := stamp(files)
	pending := ""
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := stamp(files)
		switch {
		case now == last:
			pending = ""
		case now != pending:
			pending = now // changed: wait until it settles
		default:
			reload()
			last, pending = now, ""
			if c, err := config.Load(path); err == nil {
				files = watchedFiles(path, c)
				last = stamp(files)
			}
		}
	}
}
