package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"golang.org/x/term"

	"github.com/moat-mqtt/moat/auth"
)

// stdin is where `moat passwd` reads a password when it is not a
// terminal; a variable for tests.
var stdin io.Reader = os.Stdin

// cmdPasswd adds, updates or deletes a user in a password file. The
// password comes from a prompt or from standard input, never from the
// command line (where ps and shell history would see it).
func cmdPasswd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	algo := fs.String("hash", auth.Argon2id, "argon2id or bcrypt")
	del := fs.Bool("D", false, "delete the user")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return errors.New("usage: moat passwd [--hash argon2id|bcrypt] [-D] FILE USER (the password is read from the terminal or stdin)")
	}
	path, user := fs.Arg(0), fs.Arg(1)
	if *del {
		if err := auth.SetPassword(path, user, ""); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: deleted %s\n", path, user)
		return nil
	}
	pw, err := readPassword(stderr)
	if err != nil {
		return err
	}
	defer clear(pw)
	h, err := auth.HashPassword(pw, *algo)
	if err != nil {
		return err
	}
	if err := auth.SetPassword(path, user, h); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: set the password of %s (%s)\n", path, user, *algo)
	return nil
}

func readPassword(prompt io.Writer) ([]byte, error) {
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(prompt, "Password: ")
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(prompt)
		if err != nil {
			return nil, err
		}
		fmt.Fprint(prompt, "Again: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(prompt)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(a, b) {
			return nil, errors.New("the passwords differ")
		}
		clear(b)
		return nonEmpty(a)
	}
	line, err := bufio.NewReader(stdin).ReadBytes('\n')
	if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
		return nil, errors.New("no password on standard input")
	}
	return nonEmpty(bytes.TrimRight(line, "\r\n"))
}

func nonEmpty(pw []byte) ([]byte, error) {
	if len(pw) == 0 {
		return nil, errors.New("empty password")
	}
	return pw, nil
}
