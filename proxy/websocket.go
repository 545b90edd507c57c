package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// MQTT over WebSocket [MQTT-6.0.0]: binary frames, subprotocol "mqtt".
// Each upgraded connection is wrapped as a net.Conn and goes through
// exactly the same session pipeline as a TCP one.

// serveWebSocket runs an HTTP server on the listener that upgrades
// requests for the configured path and hands each connection to a
// session. Bans and connection limits were applied at accept (admitConn).
func (s *Server) serveWebSocket(l *listener) {
	defer s.wg.Done()
	up := &websocket.Upgrader{
		HandshakeTimeout: l.cfg.WebSocket.HandshakeTimeout,
		ReadBufferSize:   4 << 10,
		WriteBufferSize:  4 << 10,
		Subprotocols:     []string{"mqtt", "mqttv3.1"},
		CheckOrigin:      func(r *http.Request) bool { return originAllowed(l.cfg.WebSocket.Origins, r) },
	}
	mux := http.NewServeMux()
	mux.HandleFunc(l.cfg.WebSocket.Path, func(w http.ResponseWriter, r *http.Request) {
		if !websocket.IsWebSocketUpgrade(r) {
			http.Error(w, "MQTT over WebSocket: upgrade required", http.StatusUpgradeRequired)
			return
		}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			s.log.Info("websocket upgrade refused", "listener", l.cfg.Name, "remote", r.RemoteAddr, "error", err)
			return // the upgrader has answered
		}
		if ws.Subprotocol() == "" {
			// [MQTT-6.0.0-3] the client must offer "mqtt".
			ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseProtocolError, "subprotocol mqtt required"), time.Now().Add(time.Second))
			ws.Close()
			return
		}
		conn := newWSConn(ws)
		if r.TLS != nil {
			conn.state = r.TLS
		}
		sess := newSession(s, l, conn)
		sess.addr = hostOf(ws.NetConn().RemoteAddr())
		if !s.track(sess) {
			ws.Close()
			return
		}
		sess.serve()
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: l.cfg.WebSocket.HandshakeTimeout, MaxHeaderBytes: 16 << 10,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	var err error
	ln := &admitListener{Listener: l.ln, s: s, l: l}
	if l.tls != nil {
		err = hs.Serve(tls.NewListener(ln, l.tls))
	} else {
		err = hs.Serve(ln)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		s.log.Error("websocket listener stopped", "listener", l.cfg.Name, "error", err)
	}
}

// originAllowed: requests without an Origin header come from native
// clients; a browser's Origin must be listed ("*" lists all).
func originAllowed(allowed []string, r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	return slices.Contains(allowed, "*") || slices.ContainsFunc(allowed, func(a string) bool { return strings.EqualFold(a, o) })
}

// admitListener applies bans and connection limits at accept, before
// TLS and HTTP, and releases the admission when the connection closes.
type admitListener struct {
	net.Listener
	s *Server
	l *listener
}

func (a *admitListener) Accept() (net.Conn, error) {
	for {
		c, err := a.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr := hostOf(c.RemoteAddr())
		if !a.s.admit(a.l, c, addr) {
			continue
		}
		return &admittedConn{Conn: c, release: func() { a.s.conns.Release(addr) }}, nil
	}
}

type admittedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *admittedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// wsConn is a WebSocket connection as a byte stream. A goroutine copies
// each binary message into a pipe, so reads run across message
// boundaries (a packet may span frames, a frame may hold several) and a
// read deadline can pass and be set again, as on a socket (a timed-out
// gorilla read cannot be resumed). Each write is one binary message.
type wsConn struct {
	ws         *websocket.Conn
	pr         net.Conn // the reading end of the pipe the frame reader fills
	state      *tls.ConnectionState
	wmu        sync.Mutex
	beforeRead func() // as waitConn's: runs before a read that may wait
}

func newWSConn(ws *websocket.Conn) *wsConn {
	pr, pw := net.Pipe()
	go copyFrames(ws, pw)
	return &wsConn{ws: ws, pr: pr}
}

// copyFrames feeds the pipe until the connection ends; a text frame ends
// it [MQTT-6.0.0-1].
func copyFrames(ws *websocket.Conn, pw net.Conn) {
	defer pw.Close()
	for {
		t, r, err := ws.NextReader()
		if err != nil {
			return
		}
		if t != websocket.BinaryMessage {
			ws.Close()
			return
		}
		if _, err := io.Copy(pw, r); err != nil {
			return
		}
	}
}

func (c *wsConn) Read(p []byte) (int, error) {
	if c.beforeRead != nil {
		c.beforeRead()
	}
	return c.pr.Read(p)
}

func (c *wsConn) setBeforeRead(f func()) { c.beforeRead = f }

func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) Close() error {
	c.pr.Close()
	return c.ws.Close()
}

func (c *wsConn) LocalAddr() net.Addr                { return c.ws.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr               { return c.ws.RemoteAddr() }
func (c *wsConn) SetReadDeadline(t time.Time) error  { return c.pr.SetReadDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }
func (c *wsConn) SetDeadline(t time.Time) error {
	c.pr.SetReadDeadline(t)
	return c.ws.SetWriteDeadline(t)
}

// CloseWrite sends a WebSocket close frame: the peer's half-close.
func (c *wsConn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
}
