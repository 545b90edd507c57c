package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/moat-mqtt/moat/admin"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/proxy"
)

// cmdBans lists or lifts bans through the admin API of the moat that
// runs with the given configuration.
func cmdBans(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bans", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "moat.yaml", "the configuration of the running moat (for admin.address and admin.token_file)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return fmt.Errorf("configuration is invalid:\n%s", indent(err.Error()))
	}
	if cfg.Admin.Address == "off" {
		return fmt.Errorf("%s: admin.address is off; the bans of a running moat are read through its admin API", *path)
	}
	if cfg.Admin.TokenFile == "" {
		return fmt.Errorf("%s: admin.token_file is not set; the admin API needs a token", *path)
	}
	token, err := admin.ReadToken(cfg.Admin.TokenFile)
	if err != nil {
		return err
	}
	base := "http://" + dialable(cfg.Admin.Address)
	call := func(method, p string) (*http.Response, error) {
		req, err := http.NewRequest(method, base+p, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+string(token))
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			return nil, fmt.Errorf("admin API at %s: %w (is moat running?)", base, err)
		}
		return resp, nil
	}
	switch rest := fs.Args(); {
	case len(rest) == 0 || rest[0] == "list" && len(rest) == 1:
		resp, err := call(http.MethodGet, "/api/bans")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return apiError(resp)
		}
		var bans []proxy.Ban
		if err := json.NewDecoder(resp.Body).Decode(&bans); err != nil {
			return fmt.Errorf("admin API: %w", err)
		}
		if len(bans) == 0 {
			fmt.Fprintln(stdout, "no active bans")
			return nil
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY\tKIND\tUNTIL\tLEFT")
		for _, b := range bans {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", b.Key, b.Kind, b.Until.Format(time.RFC3339), time.Until(b.Until).Round(time.Second))
		}
		return tw.Flush()
	case rest[0] == "lift" && len(rest) == 2:
		resp, err := call(http.MethodDelete, "/api/bans/"+url.PathEscape(rest[1]))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return apiError(resp)
		}
		fmt.Fprintf(stdout, "lifted the bans on %s\n", rest[1])
		return nil
	default:
		return fmt.Errorf("usage: moat bans [--config FILE] [list | lift KEY]")
	}
}

// dialable turns a listen address into one to connect to: an unspecified
// host (0.0.0.0, ::, empty) means this machine.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

func apiError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return fmt.Errorf("admin API: %s: %s", resp.Status, strings.TrimSpace(string(b)))
}
