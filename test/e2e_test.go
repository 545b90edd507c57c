package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/devpki"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// TestQoSBothWays sends QoS 0, 1 and 2 through moat in each direction with
// each client library: client -> moat -> broker (seen by a subscriber on the
// broker's own port) and broker -> moat -> client (published on the
// broker's own port).
func TestQoSBothWays(t *testing.T) {
	e := newEnv(t, nil)
	direct := newReceived()
	dsub := paho5(t, e.broker.Addr, nil, "direct-sub", direct)
	sub5(t, dsub, "up/#", 2)
	dpub := paho5(t, e.broker.Addr, nil, "direct-pub", nil)

	for _, qos := range []byte{0, 1, 2} {
		t.Run(fmt.Sprintf("paho.golang v5 qos %d", qos), func(t *testing.T) {
			rec := newReceived()
			c := paho5(t, e.plain, nil, "p5-"+strconv.Itoa(int(qos)), rec)
			sub5(t, c, "down/p5/#", qos)
			pub5(t, dpub, "down/p5/x", "to client", qos, false)
			got := rec.wait(t, 1, 10*time.Second)[0]
			if got.Payload != "to client" || got.QoS != qos {
				t.Fatalf("client got %+v", got)
			}
			n := direct.count()
			pub5(t, c, "up/p5", "to broker "+strconv.Itoa(int(qos)), qos, false)
			got = direct.wait(t, n+1, 10*time.Second)[n]
			if got.Topic != "up/p5" || got.Payload != "to broker "+strconv.Itoa(int(qos)) || got.QoS != qos {
				t.Fatalf("broker side got %+v", got)
			}
		})
		t.Run(fmt.Sprintf("paho.mqtt.golang v3.1.1 qos %d", qos), func(t *testing.T) {
			rec := newReceived()
			c := paho3(t, e.plain, nil, "p3-"+strconv.Itoa(int(qos)), true)
			sub3(t, c, "down/p3/#", qos, rec)
			pub5(t, dpub, "down/p3/x", "to client", qos, false)
			got := rec.wait(t, 1, 10*time.Second)[0]
			if got.Payload != "to client" || got.QoS != qos {
				t.Fatalf("client got %+v", got)
			}
			n := direct.count()
			wait3(t, c.Publish("up/p3", qos, false, "to broker"), "publish")
			got = direct.wait(t, n+1, 10*time.Second)[n]
			if got.Topic != "up/p3" || got.Payload != "to broker" || got.QoS != qos {
				t.Fatalf("broker side got %+v", got)
			}
		})
		for _, v := range []string{"mqttv31", "mqttv311", "mqttv5"} {
			t.Run(fmt.Sprintf("mosquitto clients %s qos %d", v, qos), func(t *testing.T) {
				host, port := hostPort(t, e.plain)
				topic := fmt.Sprintf("down/cli/%s/%d", v, qos)
				// mosquitto_sub through moat; keep publishing until it has its message.
				done := make(chan string, 1)
				go func() {
					out, err := mosquittoTool(t, 15*time.Second, "mosquitto_sub", "-h", host, "-p", port, "-V", v,
						"-i", "sub-"+v, "-q", strconv.Itoa(int(qos)), "-t", topic, "-C", "1", "-W", "12", "-F", "%q %p")
					if err != nil {
						out += " error: " + err.Error()
					}
					done <- out
				}()
				var out string
			loop:
				for i := 0; ; i++ {
					pub5(t, dpub, topic, "to cli", qos, false)
					select {
					case out = <-done:
						break loop
					case <-time.After(200 * time.Millisecond):
					}
					if i > 60 {
						t.Fatal("mosquitto_sub got nothing")
					}
				}
				if strings.TrimSpace(out) != fmt.Sprintf("%d to cli", qos) {
					t.Fatalf("mosquitto_sub printed %q", out)
				}
				n := direct.count()
				if out, err := mosquittoTool(t, 10*time.Second, "mosquitto_pub", "-h", host, "-p", port, "-V", v,
					"-i", "pub-"+v, "-q", strconv.Itoa(int(qos)), "-t", "up/cli/"+v, "-m", "from "+v); err != nil {
					t.Fatalf("mosquitto_pub: %v: %s", err, out)
				}
				got := direct.wait(t, n+1, 10*time.Second)[n]
				if got.Topic != "up/cli/"+v || got.Payload != "from "+v || got.QoS != qos {
					t.Fatalf("broker side got %+v", got)
				}
			})
		}
	}
}

func TestRetained(t *testing.T) {
	e := newEnv(t, nil)
	pub := paho3(t, e.plain, nil, "retain-pub", true)
	wait3(t, pub.Publish("plant/state", 1, true, "running"), "publish retained")
	rec := newReceived()
	c := paho5(t, e.tls, e.tlsConfig(""), "retain-sub", rec)
	sub5(t, c, "plant/#", 1)
	got := rec.wait(t, 1, 10*time.Second)[0]
	if got.Topic != "plant/state" || got.Payload != "running" || !got.Retain {
		t.Fatalf("got %+v, want the retained message", got)
	}
}

// TestWillOnAbruptDisconnect: a client that vanishes without DISCONNECT has
// its will published; one that says DISCONNECT does not.
func TestWillOnAbruptDisconnect(t *testing.T) {
	e := newEnv(t, nil)
	rec := newReceived()
	watcher := paho3(t, e.plain, nil, "watcher", true)
	sub3(t, watcher, "wills/#", 1, rec)

	for _, v := range []codec.Version{codec.V311, codec.V5} {
		polite := mqtttest.DialRaw(t, e.plain, nil)
		polite.V = v
		polite.SendPacket(&codec.Connect{Version: v, CleanStart: true, ClientID: "polite" + v.String(), KeepAlive: 30,
			Will: &codec.Will{Topic: "wills/polite", Payload: []byte("should not fire"), QoS: 1}})
		polite.Expect(5 * time.Second)
		polite.SendPacket(&codec.Disconnect{})
		polite.ExpectClosed(5 * time.Second)

		rude := mqtttest.DialRaw(t, e.plain, nil)
		rude.V = v
		rude.SendPacket(&codec.Connect{Version: v, CleanStart: true, ClientID: "rude" + v.String(), KeepAlive: 30,
			Will: &codec.Will{Topic: "wills/rude", Payload: []byte("gone " + v.String()), QoS: 1}})
		rude.Expect(5 * time.Second)
		rude.Conn.Close()
	}
	rec.wait(t, 2, 10*time.Second)
	time.Sleep(300 * time.Millisecond) // a wrongly fired polite will would arrive by now
	got := rec.wait(t, 2, time.Second)
	if len(got) != 2 {
		t.Fatalf("got %d wills, want 2: %+v", len(got), got)
	}
	for _, m := range got {
		if m.Topic != "wills/rude" {
			t.Fatalf("unexpected will %+v", m)
		}
	}
}

// TestPersistentSession: QoS 1 messages published while a clean-start-false
// client is away are delivered, in order, when it comes back.
func TestPersistentSession(t *testing.T) {
	e := newEnv(t, nil)
	rec := newReceived()
	c := paho3(t, e.plain, nil, "persistent", false)
	sub3(t, c, "queue/#", 1, rec)
	c.Disconnect(100)

	pub := paho5(t, e.plain, nil, "queue-pub", nil)
	for i := 0; i < 5; i++ {
		pub5(t, pub, "queue/x", "m"+strconv.Itoa(i), 1, false)
	}

	// Reconnect with the same session; the handler is restored by route.
	o := paho3Options(e.plain, "persistent", false)
	o.SetDefaultPublishHandler(func(_ mqtt3.Client, m mqtt3.Message) {
		rec.add(msg{Topic: m.Topic(), Payload: string(m.Payload()), QoS: m.Qos()})
	})
	c2 := newPaho3(t, o)
	defer c2.Disconnect(100)
	got := rec.wait(t, 5, 10*time.Second)
	for i, m := range got {
		if m.Payload != "m"+strconv.Itoa(i) || m.QoS != 1 {
			t.Fatalf("message %d: %+v", i, m)
		}
	}
}

// TestPayloadAtLimit: a PUBLISH exactly at max_packet_size passes; one byte
// more is refused with 0x95.
func TestPayloadAtLimit(t *testing.T) {
	const limit = 64 << 10
	e := newEnv(t, func(c *config.Config) { c.Limits.MaxPacketSize = limit })
	direct := newReceived()
	dsub := paho5(t, e.broker.Addr, nil, "direct", direct)
	sub5(t, dsub, "big", 1)

	mk := func(size int) []byte {
		p := &codec.Publish{QoS: 1, PacketID: 1, Topic: []byte("big")}
		base, _ := p.Append(nil, codec.V5)
		// Header length changes with the remaining length; search the payload size.
		for n := size - len(base); n > 0; n-- {
			p.Payload = bytes.Repeat([]byte("x"), n)
			b, _ := p.Append(nil, codec.V5)
			if len(b) == size {
				return b
			}
		}
		t.Fatalf("cannot build a %d byte packet", size)
		return nil
	}
	c := mqtttest.DialRaw(t, e.plain, nil)
	ack := c.Connect(codec.V5, "big", 30)
	if !ack.Properties.Has(codec.PropMaximumPacketSize) || ack.Properties.MaximumPacketSize != limit {
		t.Fatalf("CONNACK Maximum Packet Size = %d, want %d", ack.Properties.MaximumPacketSize, limit)
	}
	c.Send(mk(limit))
	if p := c.Expect(10 * time.Second); p.Type() != codec.PUBACK {
		t.Fatalf("got %s, want PUBACK", p.Type())
	}
	got := direct.wait(t, 1, 10*time.Second)[0]
	if len(got.Payload) < limit-20 {
		t.Fatalf("broker got %d bytes", len(got.Payload))
	}
	c.Send(mk(limit + 1))
	c.ExpectDisconnect(codec.PacketTooLarge, 5*time.Second)
	if direct.count() != 1 {
		t.Fatal("oversized packet reached the broker")
	}
}

// TestTenThousandInOrder: 10,000 QoS 1 messages arrive complete and in order.
func TestTenThousandInOrder(t *testing.T) {
	const n = 10000
	e := newEnv(t, nil)
	rec := newReceived()
	sub := paho5(t, e.tls, e.tlsConfig(""), "order-sub", rec)
	sub5(t, sub, "seq", 1)
	pub := paho3(t, e.plain, nil, "order-pub", true)
	var last mqtt3.Token
	for i := 0; i < n; i++ {
		last = pub.Publish("seq", 1, false, strconv.Itoa(i))
		if i%500 == 0 {
			wait3(t, last, "publish")
		}
	}
	wait3(t, last, "publish")
	got := rec.wait(t, n, 60*time.Second)
	if len(got) != n {
		t.Fatalf("got %d messages, want %d", len(got), n)
	}
	for i, m := range got {
		if m.Payload != strconv.Itoa(i) {
			t.Fatalf("message %d is %q: lost or reordered", i, m.Payload)
		}
	}
}

// TestListeners: plain TCP, TLS, and mutual TLS which refuses a client
// without a certificate.
func TestListeners(t *testing.T) {
	e := newEnv(t, nil)
	host, port := hostPort(t, e.tls)
	ca := e.certs + "/" + devpki.CACert
	if out, err := mosquittoTool(t, 10*time.Second, "mosquitto_pub", "-h", host, "-p", port, "--cafile", ca,
		"-t", "tls/test", "-m", "over tls", "-q", "1"); err != nil {
		t.Fatalf("mosquitto_pub over TLS: %v: %s", err, out)
	}

	// Mutual TLS with alice's certificate works.
	rec := newReceived()
	c := paho5(t, e.mtls, e.tlsConfig("alice"), "alice", rec)
	sub5(t, c, "mtls/#", 1)
	pub5(t, c, "mtls/x", "hi", 1, false)
	rec.wait(t, 1, 10*time.Second)

	// Without a client certificate the handshake fails.
	conn, err := tls.Dial("tcp", e.mtls, e.tlsConfig(""))
	if err == nil {
		// TLS 1.3 reports the refusal on the first read.
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil {
		t.Fatal("mutual TLS listener accepted a client without a certificate")
	}
	// TLS listener refuses plain MQTT.
	raw := mqtttest.DialRaw(t, e.tls, nil)
	raw.SendPacket(&codec.Connect{Version: codec.V311, CleanStart: true, ClientID: "plain"})
	raw.ExpectClosed(15 * time.Second)
}

// TestV5Properties: user properties, content type and response topic pass
// through untouched.
func TestV5Properties(t *testing.T) {
	e := newEnv(t, nil)
	var got *paho.Publish
	done := make(chan struct{})
	conn := dial(t, e.plain, nil)
	c := paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) { got = pr.Packet; close(done); return true, nil }}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: "props", CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(&paho.Disconnect{})
	sub5(t, c, "props", 1)
	_, err := c.Publish(ctx, &paho.Publish{Topic: "props", QoS: 1, Payload: []byte("{}"), Properties: &paho.PublishProperties{
		ContentType: "application/json", ResponseTopic: "reply/here", CorrelationData: []byte{1, 2},
		User: paho.UserProperties{{Key: "site", Value: "plant1"}, {Key: "\uFEFFbom", Value: "kept"}}}})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("message not received")
	}
	p := got.Properties
	if p.ContentType != "application/json" || p.ResponseTopic != "reply/here" || !bytes.Equal(p.CorrelationData, []byte{1, 2}) ||
		p.User.Get("site") != "plant1" || p.User.Get("\uFEFFbom") != "kept" {
		t.Fatalf("properties changed in transit: %+v", p)
	}
}

// TestClientAuthVerifyIfGiven: a client without a certificate is let in, one
// with a certificate from the configured CA too, and one whose certificate
// comes from another CA is refused during the handshake.
func TestClientAuthVerifyIfGiven(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		opt := *c.Listeners[2].TLS
		opt.ClientAuth = "verify_if_given"
		c.Listeners = append(c.Listeners, config.Listener{Name: "optional", Address: "127.0.0.1:0", Transport: "tls", TLS: &opt})
	})
	addr := e.srv.Addr("optional").String()
	paho5(t, addr, e.tlsConfig(""), "anon-tls", nil)
	paho5(t, addr, e.tlsConfig("alice"), "alice-tls", nil)

	other := t.TempDir()
	if _, err := devpki.Ensure(other, "mallory"); err != nil {
		t.Fatal(err)
	}
	cert, key := devpki.ClientFiles(other, "mallory")
	kp, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	tc := e.tlsConfig("")
	tc.Certificates = []tls.Certificate{kp}
	conn, err := tls.Dial("tcp", addr, tc)
	if err == nil {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("certificate from another CA: %v", err)
	}
}

// TestSlowPacketsArriveWhole: a packet whose bytes take longer than moat's
// one-second idle wait to arrive is forwarded whole, for a packet that fits
// the read buffer, one larger than it, and under TLS, and while it stalls
// no goroutine waits for it. A plant link can be that slow (a cellular
// modem pushing a recipe or a firmware chunk).
func TestSlowPacketsArriveWhole(t *testing.T) {
	e := newEnv(t, nil)
	direct := newReceived()
	dsub := paho5(t, e.broker.Addr, nil, "slow-direct", direct)
	sub5(t, dsub, "slow/#", 1)
	for i, tc := range []struct {
		name string
		size int
		tls  bool
	}{
		{"small", 1000, false},
		{"larger than the read buffer", 40 << 10, false},
		{"larger than the read buffer, TLS", 40 << 10, true},
		{"small, TLS", 1000, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, tcfg := e.plain, (*tls.Config)(nil)
			if tc.tls {
				addr, tcfg = e.tls, e.tlsConfig("")
			}
			c := mqtttest.DialRaw(t, addr, tcfg)
			c.Connect(codec.V311, fmt.Sprintf("slow-%d", i), 30)
			payload := bytes.Repeat([]byte{byte('a' + i)}, tc.size)
			b, _ := (&codec.Publish{QoS: 1, PacketID: 7, Topic: []byte(fmt.Sprintf("slow/%d", i)), Payload: payload}).Append(nil, codec.V311)
			before := direct.count()
			half := len(b) / 2
			c.Send(b[:half])
			time.Sleep(2 * time.Second) // well past the idle wait (1.125 s)
			// The stalled side waits as an idle one does: parked, with no
			// goroutine reading the client.
			if n := pumpsReadingClients(); n != 0 {
				t.Errorf("%d goroutines read clients while the packet stalls, want 0 (parked)", n)
			}
			c.Send(b[half:])
			if p := c.Expect(10 * time.Second); p.Type() != codec.PUBACK {
				t.Fatalf("got %s, want PUBACK", p.Type())
			}
			got := direct.wait(t, before+1, 10*time.Second)[before]
			if got.Payload != string(payload) {
				t.Fatalf("broker got %d bytes, want the %d sent", len(got.Payload), len(payload))
			}
		})
	}
}

// pumpsReadingClients counts goroutines in moat's client-reading pump.
func pumpsReadingClients() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "proxy.clientToBroker.run(")
}
