// Command moat is an inline MQTT security proxy.
//
//	moat run [--config FILE]        run the proxy (no --config: quick start)
//	moat check-config --config FILE validate a configuration file
//	moat policy test PATH...        run the Rego unit tests of a policy
//	moat policy eval --policy PATH  decide one request, as the proxy would
//	moat passwd FILE USER           set a password (from the terminal or stdin)
//	moat certs [--dir DIR] [--client NAME ...]
//	                                write a development PKI
//	moat version                    print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"

	"github.com/moat-mqtt/moat/admin"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/devpki"
	"github.com/moat-mqtt/moat/proxy"
)

// version and commit are set at build time with
// -ldflags "-X main.version=v1.2.3 -X main.commit=$(git rev-parse HEAD)";
// otherwise they come from the module and VCS build information.
var version, commit = "", ""

const usage = `moat is an inline MQTT security proxy.

Usage:
  moat run [--config FILE]         run the proxy; without --config, a quick start with
                                   an embedded broker and dev certificates on loopback
  moat check-config --config FILE  validate a configuration file and exit
  moat policy test [-v] PATH...    run a policy's Rego unit tests (with moat's built-ins)
  moat policy eval --policy PATH [--action A --topic T --cn CN ...] [--input FILE]
                                   print the decision and reason for one request
  moat passwd [--hash argon2id|bcrypt] [-D] FILE USER
                                   set (or delete) a user's password in a password file;
                                   the password is read from the terminal or stdin
  moat bans [--config FILE] [list | lift KEY]
                                   list active bans, or lift those on an address or
                                   username, through the running moat's admin API
  moat certs [--dir DIR] [--client NAME]...
                                   write a dev CA, server and client certificates
  moat version                     print the version
`

func main() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, sigs))
}

// run executes one command; signals is where `moat run` learns to stop.
func run(args []string, stdout, stderr io.Writer, signals <-chan os.Signal) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(args[1:], stdout, stderr, signals)
	case "check-config":
		err = cmdCheckConfig(args[1:], stdout, stderr)
	case "certs":
		err = cmdCerts(args[1:], stdout, stderr)
	case "policy":
		err = cmdPolicy(args[1:], stdout, stderr)
	case "passwd":
		err = cmdPasswd(args[1:], stdout, stderr)
	case "bans":
		err = cmdBans(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "moat", versionString())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "moat: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		var code exitError
		if errors.As(err, &code) {
			return int(code)
		}
		fmt.Fprintf(stderr, "moat: %v\n", err)
		return 1
	}
	return 0
}

func versionString() string {
	v, rev, dirty := version, commit, false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, st := range bi.Settings {
			switch {
			case st.Key == "vcs.revision" && rev == "":
				rev = st.Value
			case st.Key == "vcs.modified":
				dirty = st.Value == "true"
			}
		}
	}
	if v == "" {
		v = "dev"
	}
	if rev == "" {
		rev = "unknown"
	} else if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "+modified"
	}
	return fmt.Sprintf("%s (commit %s, %s)", v, rev, runtime.Version())
}

func cmdCheckConfig(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file to check")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" {
		return errors.New("check-config needs --config FILE")
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return fmt.Errorf("configuration is invalid:\n%s", indent(err.Error()))
	}
	// Loading certificates is part of checking them.
	if _, err := proxy.New(cfg, nil); err != nil {
		return fmt.Errorf("configuration is invalid:\n%s", indent(err.Error()))
	}
	if cfg.Admin.TokenFile != "" {
		if _, err := admin.ReadToken(cfg.Admin.TokenFile); err != nil {
			return fmt.Errorf("configuration is invalid:\n%s", indent(err.Error()))
		}
	}
	fmt.Fprintf(stdout, "%s: OK (%d listener(s), upstream %s, policy mode %s)\n",
		*path, len(cfg.Listeners), cfg.Upstream.Address, cfg.Policy.Mode)
	return nil
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}

func cmdCerts(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("certs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "certs", "folder to write the certificates and keys to")
	var clients stringList
	fs.Var(&clients, "client", "also write a client certificate with this common name (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	wrote, err := devpki.Ensure(*dir, clients...)
	if err != nil {
		return err
	}
	if len(wrote) == 0 {
		fmt.Fprintf(stdout, "%s: all certificates already present\n", *dir)
	}
	for _, f := range wrote {
		fmt.Fprintln(stdout, "wrote", f)
	}
	return nil
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func cmdRun(args []string, stdout, stderr io.Writer, signals <-chan os.Signal) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (omit for the quick start)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var (
		cfg  *config.Config
		stop func()
		err  error
	)
	if *path == "" {
		cfg, stop, err = quickStart(stdout)
		if err != nil {
			return fmt.Errorf("quick start: %w", err)
		}
		defer stop()
	} else if cfg, err = config.Load(*path); err != nil {
		return fmt.Errorf("configuration is invalid:\n%s", indent(err.Error()))
	}
	var logOut io.Writer = stderr
	var lf *logFile
	if f := cfg.Log.File; f != "" && f != "stderr" {
		if lf, err = openLogFile(f); err != nil {
			return err
		}
		defer lf.Close()
		logOut = lf
	}
	level := new(slog.LevelVar)
	log := newLogger(cfg.Log, logOut, level)
	srv, err := proxy.New(cfg, log, proxy.WithOutput(stdout, stderr))
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	defer startRuntime(cfg.Runtime, log)()
	var adm *admin.Server
	if cfg.Admin.Address != "off" {
		if adm, err = admin.New(cfg.Admin, srv, log, level); err == nil {
			err = adm.Start(cfg.Admin.Address)
		}
		if err != nil {
			srv.Shutdown(context.Background())
			return err
		}
		defer adm.Shutdown(context.Background())
	}
	var reloadMu sync.Mutex
	reload := func() {
		reloadMu.Lock()
		defer reloadMu.Unlock()
		reloadConfig(*path, srv, level, log)
	}
	if iv := cfg.Policy.WatchInterval.D; *path != "" && iv > 0 {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go watchConfig(ctx, *path, cfg, iv, reload)
	}
	for sig := range signals {
		if sig == syscall.SIGHUP {
			if lf != nil {
				if err := lf.Reopen(); err != nil {
					log.Error("SIGHUP: reopening the log file failed; logging to the old one", "error", err)
				}
			}
			if *path != "" {
				reload()
			}
			if eng := srv.Policy(); eng != nil {
				// Reload logs the outcome; a refused policy leaves the
				// last good one in force.
				eng.Reload()
			}
			continue
		}
		log.Info("shutting down", "signal", sig.String(), "drain_timeout", cfg.Shutdown.DrainTimeout.String())
		ctx, cancel := context.WithTimeout(context.Background(), cfg.Shutdown.DrainTimeout)
		err := srv.Shutdown(ctx)
		cancel()
		if err != nil {
			log.Warn("drain deadline passed; remaining connections were closed")
		}
		log.Info("stopped")
		return nil
	}
	return nil
}
