package ratelimit

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

func TestClientPacing(t *testing.T) {
	cs := NewClients(Rates{Messages: 10, MessageBurst: 5, Bytes: 1000, ByteBurst: 1000, Subscribes: 1, SubscribeBurst: 1}, 10)
	c := cs.Get("a")
	now := time.Unix(0, 0)
	for i := range 5 {
		if d := c.Publish(now, 10); d != 0 {
			t.Fatalf("message %d within the burst waits %v", i, d)
		}
	}
	if d := c.Publish(now, 10); d != 100*time.Millisecond {
		t.Fatalf("first message over the burst waits %v, want 100ms", d)
	}
	// Bytes alone: 1000 bytes of burst, 1000 bytes a second.
	bc := NewClients(Rates{Bytes: 1000, ByteBurst: 1000}, 10).Get("b")
	if d := bc.Publish(now, 900); d != 0 {
		t.Fatalf("within the byte burst: waits %v", d)
	}
	if d := bc.Publish(now, 600); d != 500*time.Millisecond {
		t.Fatalf("byte budget: waits %v, want 500ms", d)
	}
	// Larger than the burst: charged the burst, so it waits, never forever.
	if d := bc.Publish(now, 5000); d != 1500*time.Millisecond {
		t.Fatalf("oversized message waits %v", d)
	}
	if d := c.Subscribe(now); d != 0 {
		t.Fatal("first subscribe waits")
	}
	if d := c.Subscribe(now); d != time.Second {
		t.Fatalf("second subscribe waits %v", d)
	}
	// A reconnect gets the same, spent, buckets.
	if cs.Get("a") != c {
		t.Fatal("reconnect refilled the budget")
	}
}

func TestClientAllow(t *testing.T) {
	c := NewClients(Rates{Messages: 1, MessageBurst: 2}, 10).Get("a")
	now := time.Unix(0, 0)
	for i, want := range []bool{true, true, false} {
		if got := c.Allow(now, 1); got != want {
			t.Fatalf("Allow #%d = %v within a burst of 2", i+1, got)
		}
	}
	if !c.Allow(now.Add(time.Second), 1) {
		t.Fatal("Allow does not refill")
	}
	unlimited := NewClients(Rates{}, 10).Get("b")
	for range 1000 {
		if unlimited.Publish(now, 1<<20) != 0 || !unlimited.Allow(now, 1<<20) {
			t.Fatal("no limits limited")
		}
	}
}

// A million client ids through the registry keep memory flat.
func TestClientsBounded(t *testing.T) {
	cs := NewClients(Rates{Messages: 10, MessageBurst: 10, Bytes: 1000, ByteBurst: 1000}, 10_000)
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	for i := range 1_000_000 {
		cs.Get(fmt.Sprint("client-", i))
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	if cs.Len() != 10_000 {
		t.Fatalf("%d clients kept", cs.Len())
	}
	if grown := int64(m1.HeapAlloc) - int64(m0.HeapAlloc); grown > 20<<20 {
		t.Fatalf("heap grew %d MiB for a 10,000-entry registry", grown>>20)
	}
}

func BenchmarkClientPublish(b *testing.B) {
	c := NewClients(Rates{Messages: 1e9, MessageBurst: 1e9, Bytes: 1e12, ByteBurst: 1e9}, 10).Get("a")
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		c.Publish(now, 64)
	}
}

func BenchmarkClientsRegistry(b *testing.B) {
	cs := NewClients(Rates{Messages: 10, MessageBurst: 10}, 100_000)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		cs.Get(fmt.Sprint("c", i))
		i++
	}
}

func TestConns(t *testing.T) {
	c := NewConns(ConnLimits{PerAddressRate: 1, PerAddressBurst: 3, PerAddress: 2, Global: 3}, 100)
	now := time.Unix(0, 0)
	if ok, _ := c.Admit("a", now); !ok {
		t.Fatal("first refused")
	}
	if ok, _ := c.Admit("a", now); !ok {
		t.Fatal("second refused")
	}
	if ok, why := c.Admit("a", now); ok || why != "too many connections from this address" {
		t.Fatalf("third from a: %v %q", ok, why)
	}
	if ok, _ := c.Admit("b", now); !ok {
		t.Fatal("b refused")
	}
	if ok, why := c.Admit("c", now); ok || why != "too many connections" {
		t.Fatalf("over the global cap: %v %q", ok, why)
	}
	c.Release("a")
	c.Release("a")
	// a spent two of its burst of 3 (the refused third was stopped by the
	// concurrency cap first): one more at once, then the rate.
	if ok, _ := c.Admit("a", now); !ok {
		t.Fatal("a after release refused")
	}
	c.Release("a")
	if ok, why := c.Admit("a", now); ok || why != "connection rate from this address exceeded" {
		t.Fatalf("rate: %v %q", ok, why)
	}
	if ok, _ := c.Admit("a", now.Add(time.Second)); !ok {
		t.Fatal("rate did not refill")
	}
	if c.Open() != 2 {
		t.Fatalf("open %d", c.Open())
	}
}

func TestTopicBudgets(t *testing.T) {
	cs := NewClients(Rates{}, 10)
	c := cs.Get("a")
	tr := &TopicRule{Filters: []string{"t/#"}, PerSecond: 1, Burst: 2}
	now := time.Now()
	for i, want := range []bool{true, true, false} {
		if got := c.TopicAllow(0, now, tr); got != want {
			t.Fatalf("publish %d: allowed %v with a burst of 2", i, got)
		}
	}
	// Rule 1 has its own budget.
	if d := c.TopicWait(1, now, &TopicRule{PerSecond: 1, Burst: 1}); d != 0 {
		t.Fatalf("a fresh rule waits %v", d)
	}
	// Rule 0 is empty: the next publish waits about a second.
	if d := c.TopicWait(0, now, tr); d < 900*time.Millisecond || d > 1100*time.Millisecond {
		t.Fatalf("wait %v, want ~1s", d)
	}
	// A changed rate is followed, the bucket kept.
	if c.TopicAllow(0, now, &TopicRule{PerSecond: 1000, Burst: 2}) {
		t.Fatal("a rate change refilled the bucket")
	}
}
