package ratelimit

import (
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"
)

// ConnLimits bound connections; a zero field is no limit.
type ConnLimits struct {
	PerAddressRate  rate.Limit // new connections per second per source address
	PerAddressBurst int
	PerAddress      int        // concurrent connections per source address
	GlobalRate      rate.Limit // new connections per second in all
	GlobalBurst     int
	Global          int // concurrent connections in all
}

// Conns admits or refuses new connections, before any TLS or MQTT work.
type Conns struct {
	l      ConnLimits
	global *rate.Limiter

	mu    sync.Mutex
	rates *lru.Cache[string, *rate.Limiter]
	open  map[string]int // per address; entries exist only while connections are open
	total int
}

// NewConns makes a connection admitter; addresses is the most source
// addresses whose rate buckets are remembered.
func NewConns(l ConnLimits, addresses int) *Conns {
	c := &Conns{l: l, open: map[string]int{}}
	c.rates, _ = lru.New[string, *rate.Limiter](max(addresses, 1))
	if l.GlobalRate > 0 {
		c.global = rate.NewLimiter(l.GlobalRate, max(l.GlobalBurst, 1))
	}
	return c
}

// Admit counts a new connection from addr, or says why it is refused.
// Every admitted connection must be Released.
func (c *Conns) Admit(addr string, now time.Time) (ok bool, why string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.l.Global > 0 && c.total >= c.l.Global {
		return false, "too many connections"
	}
	if c.l.PerAddress > 0 && c.open[addr] >= c.l.PerAddress {
		return false, "too many connections from this address"
	}
	if c.l.PerAddressRate > 0 {
		lim, found := c.rates.Get(addr)
		if !found {
			lim = rate.NewLimiter(c.l.PerAddressRate, max(c.l.PerAddressBurst, 1))
			c.rates.Add(addr, lim)
		}
		if !lim.AllowN(now, 1) {
			return false, "connection rate from this address exceeded"
		}
	}
	if c.global != nil && !c.global.AllowN(now, 1) {
		return false, "connection rate exceeded"
	}
	c.total++
	c.open[addr]++
	return true, ""
}

// Release forgets a connection Admit counted.
func (c *Conns) Release(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total--
	if c.open[addr]--; c.open[addr] <= 0 {
		delete(c.open, addr)
	}
}

// Open is the number of admitted connections not yet released.
func (c *Conns) Open() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// Configure changes the limits in place: open connections stay counted;
// per-address rate buckets start afresh at the new rate.
func (c *Conns) Configure(l ConnLimits) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l.PerAddressRate != c.l.PerAddressRate || l.PerAddressBurst != c.l.PerAddressBurst {
		c.rates.Purge()
	}
	c.global = nil
	if l.GlobalRate > 0 {
		c.global = rate.NewLimiter(l.GlobalRate, max(l.GlobalBurst, 1))
	}
	c.l = l
}
