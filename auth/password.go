package auth

import (
	"bufio"
	"bytes"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// A password file has one "user:hash" per line, as Mosquitto's
// mosquitto_passwd writes it, so a broker's existing file can be moved in
// front of it as is. Hashes moat reads:
//
//	$7$<iterations>$<salt>$<hash>     Mosquitto PBKDF2-HMAC-SHA512 (mosquitto_passwd's default)
//	$6$<salt>$<hash>                  Mosquitto salted SHA-512 (Mosquitto 1.6 and older)
//	$argon2id$v=19$m=..,t=..,p=..$<salt>$<hash>   argon2id, PHC string (moat passwd's default)
//	$2a$ / $2b$ / $2y$                bcrypt
//
// Lines starting with '#' and blank lines are ignored.

// Hash algorithms moat passwd writes.
const (
	Argon2id = "argon2id"
	Bcrypt   = "bcrypt"
)

// argon2id parameters: OWASP's recommended minimum (19 MiB, 2 passes, 1
// lane), so a storm of logins cannot claim much memory at once.
const (
	argonMemory  = 19 * 1024
	argonTime    = 2
	argonThreads = 1
	argonKeyLen  = 32
	bcryptCost   = 11
)

// Passwords is a loaded password file.
type Passwords struct {
	users map[string]hash
	dummy hash // checked for unknown users, so they cost what known ones do
}

// hash is one parsed password hash.
type hash interface {
	verify(password []byte) bool
}

// LoadPasswords reads and parses a password file. Every line must parse:
// a file moat half understands is refused with the line that is wrong.
func LoadPasswords(path string) (*Passwords, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParsePasswords(f, path)
}

// ParsePasswords parses password file content; name is used in errors.
func ParsePasswords(r io.Reader, name string) (*Passwords, error) {
	p := &Passwords{users: map[string]hash{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 64<<10)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, enc, ok := strings.Cut(line, ":")
		if !ok || user == "" {
			return nil, fmt.Errorf("%s:%d: not user:hash", name, n)
		}
		h, err := parseHash(enc)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: user %q: %v", name, n, user, err)
		}
		if _, dup := p.users[user]; dup {
			return nil, fmt.Errorf("%s:%d: user %q appears twice", name, n, user)
		}
		p.users[user] = h
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	// The dummy has the cost of the file's most common kind of hash.
	p.dummy = dummyFor(p.users)
	return p, nil
}

// Len is the number of users.
func (p *Passwords) Len() int { return len(p.users) }

// Check reports whether password is user's. An unknown user runs the same
// kind of verification against a dummy hash, so timing does not tell
// which users exist.
func (p *Passwords) Check(user string, password []byte) bool {
	h, ok := p.users[user]
	if !ok {
		p.dummy.verify(password)
		return false
	}
	return h.verify(password)
}

func parseHash(enc string) (hash, error) {
	parts := strings.Split(enc, "$")
	if len(parts) < 3 || parts[0] != "" {
		if !strings.HasPrefix(enc, "$") {
			return nil, errors.New("the password is not hashed (run `moat passwd` or `mosquitto_passwd -U` on the file)")
		}
		return nil, errors.New("unrecognised hash")
	}
	switch parts[1] {
	case "6":
		if len(parts) != 4 {
			return nil, errors.New("$6$ hash: want $6$salt$hash")
		}
		salt, err1 := base64.StdEncoding.DecodeString(parts[2])
		sum, err2 := base64.StdEncoding.DecodeString(parts[3])
		if err1 != nil || err2 != nil || len(sum) != sha512.Size {
			return nil, errors.New("$6$ hash: bad base64 or length")
		}
		return sha512Hash{salt: salt, sum: sum}, nil
	case "7":
		if len(parts) != 5 {
			return nil, errors.New("$7$ hash: want $7$iterations$salt$hash")
		}
		iter, err := strconv.Atoi(parts[2])
		if err != nil || iter < 1 || iter > 10_000_000 {
			return nil, errors.New("$7$ hash: bad iteration count")
		}
		salt, err1 := base64.StdEncoding.DecodeString(parts[3])
		sum, err2 := base64.StdEncoding.DecodeString(parts[4])
		if err1 != nil || err2 != nil || len(sum) == 0 || len(sum) > 128 {
			return nil, errors.New("$7$ hash: bad base64 or length")
		}
		return pbkdf2Hash{iter: iter, salt: salt, sum: sum}, nil
	case "argon2id":
		return parseArgon2id(parts)
	case "2a", "2b", "2y":
		if _, err := bcrypt.Cost([]byte(enc)); err != nil {
			return nil, fmt.Errorf("bcrypt hash: %v", err)
		}
		return bcryptHash(enc), nil
	}
	return nil, fmt.Errorf("unsupported hash $%s$ (moat reads $7$, $6$, argon2id and bcrypt)", parts[1])
}

type sha512Hash struct{ salt, sum []byte }

func (h sha512Hash) verify(pw []byte) bool {
	d := sha512.New()
	d.Write(pw)
	d.Write(h.salt)
	return subtle.ConstantTimeCompare(d.Sum(nil), h.sum) == 1
}

type pbkdf2Hash struct {
	iter      int
	salt, sum []byte
}

func (h pbkdf2Hash) verify(pw []byte) bool {
	k, err := pbkdf2.Key(sha512.New, string(pw), h.salt, h.iter, len(h.sum))
	return err == nil && subtle.ConstantTimeCompare(k, h.sum) == 1
}

type argon2Hash struct {
	mem       uint32
	time      uint32
	threads   uint8
	salt, sum []byte
}

func parseArgon2id(parts []string) (hash, error) {
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, hash
	if len(parts) != 6 || parts[2] != "v=19" {
		return nil, errors.New("argon2id hash: want $argon2id$v=19$m=M,t=T,p=P$salt$hash")
	}
	var h argon2Hash
	var m, t, p uint64
	for kv := range strings.SplitSeq(parts[3], ",") {
		k, v, _ := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return nil, errors.New("argon2id hash: bad parameters")
		}
		switch k {
		case "m":
			m = n
		case "t":
			t = n
		case "p":
			p = n
		default:
			return nil, errors.New("argon2id hash: bad parameters")
		}
	}
	// Bounds keep a hostile file from making one login cost gigabytes.
	if m < 8 || m > 256<<10 || t < 1 || t > 64 || p < 1 || p > 16 {
		return nil, errors.New("argon2id hash: parameters out of range (m 8..262144 KiB, t 1..64, p 1..16)")
	}
	h.mem, h.time, h.threads = uint32(m), uint32(t), uint8(p)
	var err1, err2 error
	h.salt, err1 = base64.RawStdEncoding.DecodeString(parts[4])
	h.sum, err2 = base64.RawStdEncoding.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(h.sum) < 16 || len(h.sum) > 128 {
		return nil, errors.New("argon2id hash: bad base64 or length")
	}
	return h, nil
}

func (h argon2Hash) verify(pw []byte) bool {
	k := argon2.IDKey(pw, h.salt, h.time, h.mem, h.threads, uint32(len(h.sum)))
	return subtle.ConstantTimeCompare(k, h.sum) == 1
}

type bcryptHash string

func (h bcryptHash) verify(pw []byte) bool {
	return bcrypt.CompareHashAndPassword([]byte(h), pw) == nil
}

// dummyFor returns a hash of the same kind and cost as most users have.
func dummyFor(users map[string]hash) hash {
	var h hash = argon2Hash{mem: argonMemory, time: argonTime, threads: argonThreads, salt: make([]byte, 16), sum: make([]byte, argonKeyLen)}
	counts := map[string]int{}
	best := 0
	for _, u := range users {
		kind := fmt.Sprintf("%T", u)
		counts[kind]++
		if counts[kind] > best {
			best, h = counts[kind], u
		}
	}
	return h
}

// HashPassword hashes a password for a password file with algo (Argon2id
// or Bcrypt).
func HashPassword(password []byte, algo string) (string, error) {
	switch algo {
	case Argon2id, "":
		salt := make([]byte, 16)
		rand.Read(salt)
		k := argon2.IDKey(password, salt, argonTime, argonMemory, argonThreads, argonKeyLen)
		return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$%s$%s", argonMemory, argonTime, argonThreads,
			base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(k)), nil
	case Bcrypt:
		if len(password) > 72 {
			return "", errors.New("bcrypt takes at most 72 bytes of password; use argon2id")
		}
		b, err := bcrypt.GenerateFromPassword(password, bcryptCost)
		return string(b), err
	}
	return "", fmt.Errorf("unknown hash %q; use argon2id or bcrypt", algo)
}

// SetPassword adds or replaces user's hash in the password file at path
// (created if missing), or removes the user when hash is empty. Other
// lines, comments included, are kept. The file is replaced atomically
// with mode 0600.
func SetPassword(path, user, hash string) error {
	if user == "" || strings.ContainsAny(user, ":\n\r") {
		return errors.New("a username may not be empty or contain ':' or a line break")
	}
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var lines []string
	found := false
	for line := range strings.SplitSeq(strings.TrimRight(string(data), "\n"), "\n") {
		if line == "" && len(data) == 0 {
			continue
		}
		if u, _, ok := strings.Cut(line, ":"); ok && u == user && !strings.HasPrefix(line, "#") {
			found = true
			if hash != "" {
				lines = append(lines, user+":"+hash)
			}
			continue
		}
		lines = append(lines, line)
	}
	if hash == "" && !found {
		return fmt.Errorf("user %q is not in %s", user, path)
	}
	if !found && hash != "" {
		lines = append(lines, user+":"+hash)
	}
	out := []byte(strings.Join(lines, "\n") + "\n")
	if _, err := ParsePasswords(bytes.NewReader(out), path); err != nil {
		return fmt.Errorf("refusing to write a file moat cannot read: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".passwd-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(out); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
