package e2e

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/gorilla/websocket"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
)

// wsNetConn is a client-side WebSocket as a net.Conn, for paho.golang
// (which speaks WebSocket only through autopaho).
type wsNetConn struct {
	*websocket.Conn
	r   []byte
	wmu sync.Mutex // one message at a time
	// pmu is the sync.Locker paho takes around a whole packet, which it
	// writes in several calls: without it, its pinger's PINGREQ could land
	// between the parts of a PUBLISH.
	pmu sync.Mutex
}

func (c *wsNetConn) Lock()   { c.pmu.Lock() }
func (c *wsNetConn) Unlock() { c.pmu.Unlock() }

func (c *wsNetConn) Read(p []byte) (int, error) {
	for len(c.r) == 0 {
		_, b, err := c.ReadMessage()
		if err != nil {
			return 0, err
		}
		c.r = b
	}
	n := copy(p, c.r)
	c.r = c.r[n:]
	return n, nil
}

func (c *wsNetConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return len(p), c.WriteMessage(websocket.BinaryMessage, p)
}

func (c *wsNetConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// dialWS opens a WebSocket to url offering subprotocols, with headers.
func dialWS(url string, tc *tls.Config, hdr http.Header, protos ...string) (net.Conn, *http.Response, error) {
	d := websocket.Dialer{TLSClientConfig: tc, Subprotocols: protos, HandshakeTimeout: 5 * time.Second}
	ws, resp, err := d.Dial(url, hdr)
	if err != nil {
		return nil, resp, err
	}
	return &wsNetConn{Conn: ws}, resp, nil
}

func wsEnv(t *testing.T) (*env, string, string) {
	e, _ := policyEnv(t, func(c *config.Config) {
		tl := *c.Listeners[1].TLS // the mqtts listener's certificate
		c.Listeners = append(c.Listeners,
			config.Listener{Name: "ws", Address: "127.0.0.1:0", Transport: "ws", WebSocket: config.WebSocket{Origins: []string{"https://dash.example"}}},
			config.Listener{Name: "wss", Address: "127.0.0.1:0", Transport: "wss", TLS: &tl})
	})
	return e, "ws://" + e.srv.Addr("ws").String() + "/mqtt", "wss://" + e.srv.Addr("wss").String() + "/mqtt"
}

// MQTT over ws:// and wss:// goes through the same pipeline: the policy
// decides, and messages flow to TCP clients and back.
func TestWebSocket(t *testing.T) {
	e, ws, wss := wsEnv(t)

	// paho.mqtt.golang (3.1.1) subscribes over wss.
	rec := newReceived()
	o := paho3Options("", "ws-sub3", true)
	o.Servers = nil
	o.AddBroker(wss).SetTLSConfig(e.tlsConfig(""))
	sub3(t, newPaho3(t, o), "ok/ws/#", 1, rec)

	// paho.golang (5) publishes over ws.
	conn, _, err := dialWS(ws, nil, nil, "mqtt")
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{ClientID: "ws-pub5", Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ack, err := c.Connect(ctx, &paho.Connect{ClientID: "ws-pub5", CleanStart: true, KeepAlive: 30}); err != nil || ack.ReasonCode != 0 {
		t.Fatalf("connect over ws: %v %+v", err, ack)
	}
	defer c.Disconnect(&paho.Disconnect{})
	if r, err := c.Publish(ctx, &paho.Publish{Topic: "ok/ws/a", QoS: 1, Payload: []byte("over websocket")}); err != nil || r.ReasonCode >= 0x80 {
		t.Fatalf("permitted publish: %v %+v", err, r)
	}
	if r, err := c.Publish(ctx, &paho.Publish{Topic: "forbidden/ws", QoS: 1, Payload: []byte("x")}); r == nil || r.ReasonCode != byte(codec.NotAuthorized) {
		t.Fatalf("denied publish over ws: %v %+v", err, r)
	}
	if m := rec.wait(t, 1, 5*time.Second); m[0].Topic != "ok/ws/a" || m[0].Payload != "over websocket" {
		t.Fatalf("wss subscriber got %+v", m)
	}
	if conns := e.srv.Connections(); len(conns) != 2 {
		t.Fatalf("connections %+v", conns)
	}
}

func TestWebSocketRefusals(t *testing.T) {
	_, ws, _ := wsEnv(t)
	// A browser origin that is not listed is refused at the upgrade.
	if _, resp, err := dialWS(ws, nil, http.Header{"Origin": {"https://evil.example"}}, "mqtt"); err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("unlisted origin: %v %v", err, resp)
	}
	if c, _, err := dialWS(ws, nil, http.Header{"Origin": {"https://dash.example"}}, "mqtt"); err != nil {
		t.Fatalf("listed origin: %v", err)
	} else {
		c.Close()
	}
	// Without the mqtt subprotocol the connection is closed [MQTT-6.0.0-3].
	c, _, err := dialWS(ws, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("no subprotocol: %v", err)
	}
	// A text frame ends the connection [MQTT-6.0.0-1].
	c, _, err = dialWS(ws, nil, nil, "mqtt")
	if err != nil {
		t.Fatal(err)
	}
	c.(*wsNetConn).WriteMessage(websocket.TextMessage, []byte("hello"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("text frame: %v", err)
	}
	// A plain HTTP request is told to upgrade.
	resp, err := http.Get("http" + strings.TrimPrefix(ws, "ws"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUpgradeRequired {
		t.Fatalf("plain GET: %d", resp.StatusCode)
	}
}

// A packet that arrives over WebSocket together with the start of the
// next one is forwarded at once, not when the rest of the next one
// arrives (a large message on a slow link).
func TestWebSocketPartialPacket(t *testing.T) {
	_, ws, _ := wsEnv(t)
	conn, _, err := dialWS(ws, nil, nil, "mqtt")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := codec.NewReader(conn, 0)
	expect := func(want codec.PacketType, id uint16) {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		f, err := r.ReadPacket()
		if err != nil {
			t.Fatalf("waiting for %s %d: %v", want, id, err)
		}
		if f.Type != want {
			t.Fatalf("got %s, want %s", f.Type, want)
		}
		if want == codec.PUBACK {
			var ack codec.Ack
			if err := codec.DecodeAck(&ack, f, codec.V311); err != nil || ack.PacketID != id {
				t.Fatalf("PUBACK %+v (%v), want packet %d", ack, err, id)
			}
		}
	}
	con, _ := (&codec.Connect{Version: codec.V311, CleanStart: true, ClientID: "ws-partial", KeepAlive: 30}).Append(nil, codec.V311)
	if _, err := conn.Write(con); err != nil {
		t.Fatal(err)
	}
	expect(codec.CONNACK, 0)
	a, _ := (&codec.Publish{QoS: 1, PacketID: 1, Topic: []byte("ok/ws/a"), Payload: []byte("a")}).Append(nil, codec.V311)
	b, _ := (&codec.Publish{QoS: 1, PacketID: 2, Topic: []byte("ok/ws/b"), Payload: make([]byte, 4000)}).Append(nil, codec.V311)
	if _, err := conn.Write(append(append([]byte{}, a...), b[:100]...)); err != nil { // one message
		t.Fatal(err)
	}
	expect(codec.PUBACK, 1)
	if _, err := conn.Write(b[100:]); err != nil {
		t.Fatal(err)
	}
	expect(codec.PUBACK, 2)
}
