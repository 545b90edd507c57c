// Package ratelimit holds moat's limiters: today the failure counters
// that ban a source address or a username after repeated failed logins.
// It knows nothing of MQTT or of the proxy.
package ratelimit

import (
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// Bans counts failures per key (an address, a username) in a fixed
// window and bans a key that reaches the limit for a while. The registry
// is bounded: under a flood of distinct keys the least recently failed
// are forgotten first, so memory stays flat. Safe for concurrent use.
type Bans struct {
	limit  int
	window time.Duration
	ban    time.Duration
	now    func() time.Time

	mu   sync.Mutex
	keys *lru.Cache[string, *record]
}

type record struct {
	failures int
	start    time.Time // of the current window
	until    time.Time // banned until; zero when not banned
}

// NewBans bans a key for ban after limit failures within window; size
// bounds the keys remembered. limit <= 0 disables banning (nil Bans).
func NewBans(limit int, window, ban time.Duration, size int) *Bans {
	if limit <= 0 {
		return nil
	}
	c, _ := lru.New[string, *record](max(size, 1))
	return &Bans{limit: limit, window: window, ban: ban, now: time.Now, keys: c}
}

// Banned reports whether key is banned now, and until when.
func (b *Bans) Banned(key string) (bool, time.Time) {
	if b == nil {
		return false, time.Time{}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.keys.Peek(key)
	if !ok || r.until.IsZero() {
		return false, time.Time{}
	}
	if !b.now().Before(r.until) {
		// Expired: the key starts afresh.
		b.keys.Remove(key)
		return false, time.Time{}
	}
	return true, r.until
}

// Fail counts a failure for key and reports whether it is now banned.
func (b *Bans) Fail(key string) bool {
	if b == nil {
		return false
	}
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.keys.Get(key)
	if !ok || now.Sub(r.start) >= b.window {
		if ok && !r.until.IsZero() && now.Before(r.until) {
			return true
		}
		r = &record{start: now}
		b.keys.Add(key, r)
	}
	r.failures++
	if r.failures >= b.limit && r.until.IsZero() {
		r.until = now.Add(b.ban)
	}
	return !r.until.IsZero()
}

// Forget clears key's failures (a successful login for a username).
func (b *Bans) Forget(key string) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if r, ok := b.keys.Peek(key); ok && r.until.IsZero() {
		b.keys.Remove(key)
	}
}

// Ban is one key banned now.
type Ban struct {
	Key   string
	Until time.Time
}

// List returns the keys banned now.
func (b *Bans) List() []Ban {
	if b == nil {
		return nil
	}
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []Ban
	for _, k := range b.keys.Keys() {
		if r, ok := b.keys.Peek(k); ok && !r.until.IsZero() && now.Before(r.until) {
			out = append(out, Ban{Key: k, Until: r.until})
		}
	}
	return out
}

// Lift ends key's ban (and its count of failures); it reports whether
// the key was banned.
func (b *Bans) Lift(key string) bool {
	if b == nil {
		return false
	}
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.keys.Peek(key)
	if !ok {
		return false
	}
	b.keys.Remove(key)
	return !r.until.IsZero() && now.Before(r.until)
}

// Configure changes the threshold, window and ban time in place: current
// counts and bans stay (a ban ends when it was set to).
func (b *Bans) Configure(limit int, window, ban time.Duration) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.limit, b.window, b.ban = limit, window, ban
}
