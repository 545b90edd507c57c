package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/policy"
)

// exitError carries an exit code other than 1 without an error message.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit %d", int(e)) }

func cmdPolicy(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("policy needs a subcommand: test or eval (moat policy test PATH..., moat policy eval --policy PATH ...)")
	}
	switch args[0] {
	case "test":
		return cmdPolicyTest(args[1:], stdout, stderr)
	case "eval":
		return cmdPolicyEval(args[1:], stdout, stderr)
	}
	return fmt.Errorf("policy: unknown subcommand %q; use test or eval", args[0])
}

// cmdPolicyTest runs the Rego unit tests under the paths, with moat's
// built-ins, and fails if any test fails or none ran.
func cmdPolicyTest(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("policy test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	verbose := fs.Bool("v", false, "list every test, not only failures")
	if err := fs.Parse(args); err != nil {
		return err
	}
	paths := fs.Args()
	if len(paths) == 0 {
		return errors.New("policy test needs the policy files or directories to test, e.g. moat policy test policies/plant")
	}
	sum, err := policy.RunTests(context.Background(), paths, stdout, *verbose)
	if err != nil {
		return fmt.Errorf("policy test: %w", err)
	}
	if sum.Passed == 0 && sum.Failed == 0 && sum.Errors == 0 {
		return errors.New("policy test: no tests found (rules named test_* in *_test.rego files)")
	}
	if !sum.OK() {
		return exitError(1)
	}
	return nil
}

// cmdPolicyEval answers "would this be allowed?" for one request, from
// flags or a whole input document, and exits 0 for allow, 1 for deny.
func cmdPolicyEval(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("policy eval", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var paths stringList
	fs.Var(&paths, "policy", "policy file or directory (repeatable)")
	input := fs.String("input", "", "a JSON input document (the whole of `input`); the flags below are then ignored")
	action := fs.String("action", "publish", "connect, publish, subscribe, unsubscribe or receive")
	topic := fs.String("topic", "", "topic name, or filter for subscribe/unsubscribe ($share/g/f is split)")
	qos := fs.Int("qos", 0, "QoS")
	retain := fs.Bool("retain", false, "retain flag")
	will := fs.Bool("will", false, "the publish is a will")
	id := fs.String("client-id", "", "MQTT client id")
	username := fs.String("username", "", "verified username (with --auth-method password or jwt)")
	cn := fs.String("cn", "", "verified client certificate common name (sets --auth-method certificate)")
	auth := fs.String("auth-method", "anonymous", "anonymous, password, jwt or certificate")
	proto := fs.Int("protocol", 5, "protocol version: 3, 4 or 5")
	listener := fs.String("listener", "mqtts", "listener name")
	transport := fs.String("transport", "tls", "tcp, tls, ws or wss")
	address := fs.String("address", "127.0.0.1", "client address")
	explain := fs.Bool("explain", false, "also show the specialised rules a busy connection of this client runs for the action, and whether moat evaluates them natively")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(paths) == 0 {
		return errors.New("policy eval needs --policy PATH")
	}
	eng, err := policy.New(policy.Options{Paths: paths, CacheSize: -1})
	if err != nil {
		return err
	}
	var d policy.Decision
	if *input != "" {
		data, err := os.ReadFile(*input)
		if err != nil {
			return err
		}
		var doc any
		if err := json.Unmarshal(data, &doc); err != nil {
			return fmt.Errorf("%s: not JSON: %w", *input, err)
		}
		if d, err = eng.EvalInput(doc); err != nil {
			fmt.Fprintf(stdout, "error: %v\n", err)
		}
	} else {
		a, ok := policy.ParseAction(*action)
		if !ok {
			return fmt.Errorf("--action %q: use connect, publish, subscribe, unsubscribe or receive", *action)
		}
		c := policy.Client{ID: *id, Username: *username, ProtocolVersion: *proto, Address: *address, Port: 1,
			Listener: *listener, Transport: *transport, AuthMethod: *auth}
		if *cn != "" {
			c.AuthMethod = "certificate"
			c.Cert = &policy.Cert{Subject: policy.Name{CommonName: *cn}}
		}
		r := &policy.Request{Action: a, Topic: *topic, QoS: byte(*qos), Retain: *retain, Will: *will}
		if a == policy.Subscribe || a == policy.Unsubscribe {
			if g, inner, ok := codec.SplitShared(*topic); ok {
				r.Topic, r.Shared, r.ShareGroup = inner, true, g
			}
		}
		subj := policy.NewSubject(0, c)
		d = eng.Decide(subj, r)
		if *explain {
			defer explainRules(stdout, eng, subj, a)
		}
	}
	verdict := "allow"
	if d.Denied {
		verdict = "deny"
	}
	fmt.Fprintf(stdout, "decision: %s\n", verdict)
	if d.Reason != "" {
		fmt.Fprintf(stdout, "reason: %s\n", d.Reason)
	}
	fmt.Fprintf(stdout, "revision: %s\n", eng.Revision())
	if d.Denied {
		return exitError(1)
	}
	return nil
}

// explainRules prints what `--explain` shows: the rules specialised for
// the client and action, as a busy connection would run them.
func explainRules(w io.Writer, eng *policy.Engine, s *policy.Subject, a policy.Action) {
	queries, fallback, err := eng.Explain(s, a)
	if err != nil {
		fmt.Fprintf(w, "specialised rules: error: %v\n", err)
		return
	}
	how := "evaluated by moat natively"
	if fallback != "" {
		how = "every request evaluated in full: " + fallback
	}
	fmt.Fprintf(w, "specialised rules (%s): %s\n", a, how)
	if len(queries) == 0 && fallback == "" {
		fmt.Fprintln(w, "  none: this client may never "+a.String()+"; each request is evaluated in full for its reason")
	}
	for _, q := range queries {
		fmt.Fprintf(w, "  allow if %s\n", q)
	}
}
