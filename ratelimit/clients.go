package ratelimit

import (
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"
)

// Rates are a client's budgets; a zero rate is no limit.
type Rates struct {
	Messages       rate.Limit // PUBLISH per second
	MessageBurst   int
	Bytes          rate.Limit // PUBLISH bytes per second
	ByteBurst      int
	Subscribes     rate.Limit // SUBSCRIBE per second
	SubscribeBurst int
}

// Client is one client's token buckets. A session holds its Client for
// its whole life, so the registry evicting an idle entry never resets
// the budget of a connected client.
type Client struct {
	// Swapped whole when a policy sets this client's rates, read by the
	// sessions that share the budget.
	msgs, bytes, subs atomic.Pointer[rate.Limiter]

	mu     sync.Mutex
	topics []*rate.Limiter // per topic rule, made at first use
}

// Clients is a bounded registry of per-client buckets: a million client
// ids cost at most size entries. A client that reconnects gets the
// buckets it left with while they are still remembered, so reconnecting
// does not refill a budget.
type Clients struct {
	rates Rates
	mu    sync.Mutex
	cache *lru.Cache[string, *Client]
}

// NewClients makes a registry of at most size clients.
func NewClients(r Rates, size int) *Clients {
	c, _ := lru.New[string, *Client](max(size, 1))
	return &Clients{rates: r, cache: c}
}

// Get returns key's buckets, creating them full.
func (cs *Clients) Get(key string) *Client {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if c, ok := cs.cache.Get(key); ok {
		return c
	}
	c := &Client{}
	c.msgs.Store(limiter(cs.rates.Messages, cs.rates.MessageBurst))
	c.bytes.Store(limiter(cs.rates.Bytes, cs.rates.ByteBurst))
	c.subs.Store(limiter(cs.rates.Subscribes, cs.rates.SubscribeBurst))
	cs.cache.Add(key, c)
	return c
}

// Override sets the rates a policy gave this client: a positive rate
// replaces the configured one (its bucket keeps what it holds, up to the
// new burst), a negative one removes the limit, zero keeps it.
func (c *Client) Override(r Rates) {
	set := func(p *atomic.Pointer[rate.Limiter], lim rate.Limit, burst int) {
		switch {
		case lim < 0:
			p.Store(nil)
		case lim > 0:
			if burst <= 0 {
				burst = max(int(lim), 1)
			}
			if l := p.Load(); l != nil {
				if l.Limit() != lim || l.Burst() != burst {
					l.SetLimit(lim)
					l.SetBurst(burst)
				}
				return
			}
			p.Store(rate.NewLimiter(lim, burst))
		}
	}
	set(&c.msgs, r.Messages, r.MessageBurst)
	set(&c.bytes, r.Bytes, r.ByteBurst)
	set(&c.subs, r.Subscribes, r.SubscribeBurst)
}

// Put marks key's buckets as recently used again (a session ending), so
// the most recent clients are the last to be forgotten.
func (cs *Clients) Put(key string, c *Client) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.cache.Add(key, c)
}

// Len is the number of clients remembered.
func (cs *Clients) Len() int { return cs.cache.Len() }

func limiter(r rate.Limit, burst int) *rate.Limiter {
	if r <= 0 {
		return nil
	}
	return rate.NewLimiter(r, max(burst, 1))
}

// Publish takes one message of n bytes from the budgets at now and
// returns how long the client must wait for it to be within them (0: at
// once). A message larger than the byte burst is charged the burst, so
// it waits but is never refused forever.
func (c *Client) Publish(now time.Time, n int) time.Duration {
	return max(take(c.msgs.Load(), now, 1), take(c.bytes.Load(), now, n))
}

// Subscribe takes one SUBSCRIBE from the budget.
func (c *Client) Subscribe(now time.Time) time.Duration { return take(c.subs.Load(), now, 1) }

// Allow reports whether a message of n bytes fits the budgets now,
// taking it only if it does (for modes that refuse rather than wait).
func (c *Client) Allow(now time.Time, n int) bool {
	msgs, bytes := c.msgs.Load(), c.bytes.Load()
	if msgs != nil && msgs.TokensAt(now) < 1 {
		return false
	}
	if bytes != nil && bytes.TokensAt(now) < float64(min(n, bytes.Burst())) {
		return false
	}
	take(msgs, now, 1)
	take(bytes, now, n)
	return true
}

func take(l *rate.Limiter, now time.Time, n int) time.Duration {
	if l == nil || n <= 0 {
		return 0
	}
	r := l.ReserveN(now, n)
	if !r.OK() {
		// More than the burst (or no tokens at all): charge the burst.
		// Asking for the burst only here keeps a second lock off every
		// message.
		if r = l.ReserveN(now, min(n, l.Burst())); !r.OK() {
			return 0
		}
	}
	return r.DelayFrom(now)
}

// TopicRule is a per-client budget shared by publishes to the topics its
// filters match.
type TopicRule struct {
	Filters   []string
	PerSecond float64
	Burst     int // 0: the rate (at least 1)
}

// topic returns the bucket for topic rule i, making it (full) at first
// use and following a changed rate.
func (c *Client) topic(i int, tr *TopicRule) *rate.Limiter {
	r, b := rate.Limit(tr.PerSecond), tr.Burst
	if b <= 0 {
		b = max(int(tr.PerSecond), 1) // default: a second's worth
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if i >= len(c.topics) {
		c.topics = append(c.topics, make([]*rate.Limiter, i+1-len(c.topics))...)
	}
	l := c.topics[i]
	switch {
	case l == nil:
		l = rate.NewLimiter(r, b)
		c.topics[i] = l
	case l.Limit() != r || l.Burst() != b:
		l.SetLimit(r)
		l.SetBurst(b)
	}
	return l
}

// TopicWait takes one publish from topic rule i's budget and returns how
// long the client must wait for it.
func (c *Client) TopicWait(i int, now time.Time, tr *TopicRule) time.Duration {
	return take(c.topic(i, tr), now, 1)
}

// TopicAllow takes one publish from topic rule i's budget only if it
// fits now.
func (c *Client) TopicAllow(i int, now time.Time, tr *TopicRule) bool {
	return c.topic(i, tr).AllowN(now, 1)
}
