package policy

import "testing"

func BenchmarkEvalOverhead(b *testing.B) {
	e := newEngine(b, `package moat.authz
default allow := false
allow if input.action == "publish"`, Options{CacheSize: -1})
	s := certSubject("sensor-7")
	r := Request{Action: Publish, Topic: "sensors/sensor-7/temp", QoS: 1}
	b.ReportAllocs()
	for b.Loop() {
		e.Decide(s, &r)
	}
}
