package policy

import (
	"strconv"
	"testing"
)

// BenchmarkDecide measures the plant policy: a cache hit, an evaluation
// (cache off), and a denied evaluation.
func BenchmarkDecide(b *testing.B) {
	s := certSubject("sensor-7")
	topic := []byte("sensors/sensor-7/temp")
	b.Run("hit", func(b *testing.B) {
		e := plant(b, Options{})
		r := Request{Action: Publish, Topic: View(topic), QoS: 1}
		e.Decide(s, &r)
		b.ReportAllocs()
		for b.Loop() {
			if !e.Decide(s, &r).Allow {
				b.Fatal("denied")
			}
		}
	})
	b.Run("miss", func(b *testing.B) {
		e := plant(b, Options{CacheSize: -1})
		r := Request{Action: Publish, Topic: "sensors/sensor-7/temp", QoS: 1}
		b.ReportAllocs()
		for b.Loop() {
			if !e.Decide(s, &r).Allow {
				b.Fatal("denied")
			}
		}
	})
	b.Run("miss-new-topic", func(b *testing.B) {
		e := plant(b, Options{})
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			r := Request{Action: Publish, Topic: "sensors/sensor-7/t" + strconv.Itoa(i), QoS: 1}
			if !e.Decide(s, &r).Allow {
				b.Fatal("denied")
			}
		}
	})
	b.Run("deny", func(b *testing.B) {
		e := plant(b, Options{CacheSize: -1})
		r := Request{Action: Publish, Topic: "commands/valve1/close", QoS: 1}
		b.ReportAllocs()
		for b.Loop() {
			if e.Decide(s, &r).Allow {
				b.Fatal("allowed")
			}
		}
	})
}

// BenchmarkDecideFreshGoroutine is a miss on a new goroutine, as a
// connection's first decision is: its stack starts small.
func BenchmarkDecideFreshGoroutine(b *testing.B) {
	s := certSubject("sensor-7")
	e := plant(b, Options{CacheSize: -1})
	r := Request{Action: Publish, Topic: "sensors/sensor-7/temp", QoS: 1}
	done := make(chan bool)
	b.ReportAllocs()
	for b.Loop() {
		go func() { done <- e.Decide(s, &r).Allow }()
		if !<-done {
			b.Fatal("denied")
		}
	}
}

// BenchmarkDecideConnect is a connection storm's decision: a new client
// (so never cached) connecting, on the fresh goroutine a connection starts on.
func BenchmarkDecideConnect(b *testing.B) {
	e := plant(b, Options{})
	done := make(chan bool)
	r := Request{Action: Connect}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		s := certSubject("sensor-" + strconv.Itoa(i))
		go func() { done <- e.Decide(s, &r).Allow }()
		if !<-done {
			b.Fatal("denied")
		}
	}
}

// BenchmarkClientTerm is building a connection's client document, once
// per connection on its first decision.
func BenchmarkClientTerm(b *testing.B) {
	s := certSubject("sensor-7")
	b.ReportAllocs()
	for b.Loop() {
		s.clientTerm()
	}
}

// BenchmarkInput is building one decision's input document, part of
// every full evaluation.
func BenchmarkInput(b *testing.B) {
	s := certSubject("sensor-7")
	r := Request{Action: Publish, Topic: "sensors/sensor-7/temp", QoS: 1}
	s.input(&r, allInput)
	b.ReportAllocs()
	for b.Loop() {
		s.input(&r, allInput)
	}
}
