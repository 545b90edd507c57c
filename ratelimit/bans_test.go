package ratelimit

import (
	"fmt"
	"testing"
	"time"
)

func TestBans(t *testing.T) {
	now := time.Unix(1000, 0)
	b := NewBans(3, time.Minute, 5*time.Minute, 100)
	b.now = func() time.Time { return now }
	for i := 1; i <= 2; i++ {
		if b.Fail("10.0.0.1") {
			t.Fatalf("banned after %d failures", i)
		}
	}
	if banned, _ := b.Banned("10.0.0.1"); banned {
		t.Fatal("banned early")
	}
	if !b.Fail("10.0.0.1") {
		t.Fatal("not banned at the limit")
	}
	if banned, until := b.Banned("10.0.0.1"); !banned || !until.Equal(now.Add(5*time.Minute)) {
		t.Fatalf("ban %v until %v", banned, until)
	}
	if banned, _ := b.Banned("10.0.0.2"); banned {
		t.Fatal("another key banned")
	}
	// Forget does not lift a ban.
	b.Forget("10.0.0.1")
	if banned, _ := b.Banned("10.0.0.1"); !banned {
		t.Fatal("Forget lifted a ban")
	}
	now = now.Add(5 * time.Minute)
	if banned, _ := b.Banned("10.0.0.1"); banned {
		t.Fatal("ban did not expire")
	}
	if b.Fail("10.0.0.1") {
		t.Fatal("a fresh window started banned")
	}
}

func TestBansWindow(t *testing.T) {
	now := time.Unix(1000, 0)
	b := NewBans(2, time.Minute, time.Hour, 100)
	b.now = func() time.Time { return now }
	b.Fail("u")
	now = now.Add(61 * time.Second) // the window passed: count restarts
	if b.Fail("u") {
		t.Fatal("failures from an old window counted")
	}
	b.Forget("u")
	if b.Fail("u") {
		t.Fatal("Forget did not clear the count")
	}
}

// The registry stays bounded under a flood of distinct keys.
func TestBansBounded(t *testing.T) {
	b := NewBans(1, time.Minute, time.Minute, 10)
	for i := range 1000 {
		b.Fail(fmt.Sprint("k", i))
	}
	if n := b.keys.Len(); n != 10 {
		t.Fatalf("%d keys kept", n)
	}
	if banned, _ := b.Banned("k999"); !banned {
		t.Fatal("the newest key was forgotten")
	}
}

func TestBansDisabled(t *testing.T) {
	var b *Bans = NewBans(0, time.Minute, time.Minute, 10)
	if b.Fail("x") || func() bool { v, _ := b.Banned("x"); return v }() {
		t.Fatal("disabled bans banned")
	}
	b.Forget("x")
}

func TestBansListAndLift(t *testing.T) {
	now := time.Unix(1000, 0)
	b := NewBans(1, time.Minute, 5*time.Minute, 100)
	b.now = func() time.Time { return now }
	b.Fail("127.0.0.2")
	b.Fail("127.0.0.3")
	if l := b.List(); len(l) != 2 || !l[0].Until.Equal(now.Add(5*time.Minute)) {
		t.Fatalf("list %+v", l)
	}
	if !b.Lift("127.0.0.2") || b.Lift("127.0.0.2") || b.Lift("127.0.0.9") {
		t.Fatal("Lift reported wrongly")
	}
	if banned, _ := b.Banned("127.0.0.2"); banned {
		t.Fatal("still banned after Lift")
	}
	now = now.Add(6 * time.Minute)
	if l := b.List(); len(l) != 0 {
		t.Fatalf("expired bans listed: %+v", l)
	}
	var nb *Bans
	if nb.List() != nil || nb.Lift("x") {
		t.Fatal("nil Bans")
	}
}
