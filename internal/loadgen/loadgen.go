// Package loadgen is the MQTT load generator shared by the benchmark
// harness (bench/) and the in-process benchmarks (test/): raw packets
// through buffered connections, so the generator costs as little as it can.
package loadgen

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/moat-mqtt/moat/codec"
)

// Client is a minimal MQTT client for load: raw packets, buffered writes.
type Client struct {
	Conn net.Conn
	R    *codec.Reader
	W    *bufio.Writer
	V    codec.Version
	buf  []byte
}

// Dial connects, sends CONNECT for version v and waits for a successful CONNACK.
func Dial(addr string, tc *tls.Config, id string, v codec.Version) (*Client, error) {
	return DialConnect(addr, tc, &codec.Connect{Version: v, CleanStart: true, ClientID: id, KeepAlive: 300})
}

// DialConnect connects, sends con and waits for a successful CONNACK.
func DialConnect(addr string, tc *tls.Config, con *codec.Connect) (*Client, error) {
	c, _, err := DialStages(addr, tc, con)
	return c, err
}

// Stages is how long each step of one connection took, as the client saw
// it: where a connection storm's time goes on each path.
type Stages struct {
	Dial      time.Duration // TCP connect
	Handshake time.Duration // TLS handshake (zero without TLS)
	Connack   time.Duration // CONNECT written to CONNACK read
}

// DialStages is DialConnect that also reports the time of each step.
func DialStages(addr string, tc *tls.Config, con *codec.Connect) (*Client, Stages, error) {
	var st Stages
	v, id := con.Version, con.ClientID
	d := &net.Dialer{Timeout: 10 * time.Second}
	t0 := time.Now()
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, st, err
	}
	t1 := time.Now()
	st.Dial = t1.Sub(t0)
	if tc != nil {
		cfg := tc
		if cfg.ServerName == "" {
			cfg = tc.Clone()
			cfg.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tconn := tls.Client(conn, cfg)
		tconn.SetDeadline(t1.Add(d.Timeout))
		if err := tconn.Handshake(); err != nil {
			conn.Close()
			return nil, st, err
		}
		tconn.SetDeadline(time.Time{})
		conn = tconn
		t2 := time.Now()
		st.Handshake, t1 = t2.Sub(t1), t2
	}
	c := &Client{Conn: conn, R: codec.NewReader(conn, 0), W: bufio.NewWriterSize(conn, 32<<10), V: v}
	if err := c.Send(con, true); err != nil {
		conn.Close()
		return nil, st, err
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := c.R.ReadPacket()
	conn.SetReadDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return nil, st, fmt.Errorf("CONNACK for %s: %w", id, err)
	}
	if f.Type != codec.CONNACK || f.Body[1] != 0 {
		conn.Close()
		return nil, st, fmt.Errorf("CONNECT %s refused: % x", id, f.Bytes)
	}
	st.Connack = time.Since(t1)
	return c, st, nil
}

// Send encodes p and writes it, flushing when asked.
func (c *Client) Send(p codec.Packet, flush bool) error {
	var err error
	if c.buf, err = p.Append(c.buf[:0], c.V); err != nil {
		return err
	}
	if _, err := c.W.Write(c.buf); err != nil {
		return err
	}
	if flush {
		return c.W.Flush()
	}
	return nil
}

// Expect reads until a packet of type t arrives.
func (c *Client) Expect(t codec.PacketType, timeout time.Duration) (codec.Frame, error) {
	c.Conn.SetReadDeadline(time.Now().Add(timeout))
	defer c.Conn.SetReadDeadline(time.Time{})
	for {
		f, err := c.R.ReadPacket()
		if err != nil {
			return f, err
		}
		if f.Type == t {
			return f, nil
		}
	}
}

// Subscribe subscribes to filter at QoS 0 and waits for the SUBACK.
func (c *Client) Subscribe(filter string) error {
	if err := c.Send(&codec.Subscribe{PacketID: 1, Subscriptions: []codec.Subscription{{Filter: filter}}}, true); err != nil {
		return err
	}
	_, err := c.Expect(codec.SUBACK, 10*time.Second)
	return err
}

// Disconnect says DISCONNECT and closes.
func (c *Client) Disconnect() {
	c.Send(&codec.Disconnect{}, true)
	c.Conn.Close()
}

// Load is one publisher's closed-loop run.
type Load struct {
	QoS    byte
	Size   int    // payload bytes
	N      int    // messages
	Window int    // QoS 1: most unacknowledged
	Topic  string // default "bench/plant1/zone3/temp"
	// UniqueTopics appends the message number as a last level, so every
	// message has a topic of its own (a policy decision cache never hits).
	UniqueTopics bool
	// WriteEach writes every packet on its own, as paho and libmosquitto
	// do (so under TLS each packet is a record of its own); otherwise
	// packets queue until the window is full.
	WriteEach bool
}

// PublishLoop sends l.N messages: QoS 1 keeps up to l.Window
// unacknowledged; QoS 0 ends with a PINGREQ whose PINGRESP proves the
// broker has read everything before it.
func PublishLoop(c *Client, l Load) error {
	qos, size, n, window := l.QoS, l.Size, l.N, l.Window
	topic := l.Topic
	if topic == "" {
		topic = "bench/plant1/zone3/temp"
	}
	pub := &codec.Publish{QoS: qos, Topic: []byte(topic), Payload: make([]byte, size)}
	base := len(pub.Topic)
	next := func(i int) {
		if l.UniqueTopics {
			pub.Topic = strconv.AppendInt(append(pub.Topic[:base], '/'), int64(i), 10)
		}
	}
	if qos == 0 {
		for i := 0; i < n; i++ {
			next(i)
			if err := c.Send(pub, false); err != nil {
				return err
			}
		}
		if err := c.Send(&codec.Ping{PacketType: codec.PINGREQ}, true); err != nil {
			return err
		}
		_, err := c.Expect(codec.PINGRESP, 60*time.Second)
		return err
	}
	slots := make(chan struct{}, window)
	for i := 0; i < window; i++ {
		slots <- struct{}{}
	}
	done := make(chan error, 1)
	go func() {
		for acked := 0; acked < n; {
			f, err := c.Expect(codec.PUBACK, 60*time.Second)
			if err != nil {
				done <- fmt.Errorf("after %d of %d acks: %w", acked, n, err)
				return
			}
			_ = f
			acked++
			slots <- struct{}{}
		}
		done <- nil
	}()
	for i := 0; i < n; i++ {
		select {
		case <-slots:
		default:
			if err := c.W.Flush(); err != nil {
				return err
			}
			select {
			case <-slots:
			case err := <-done:
				return fmt.Errorf("acknowledgements stopped: %v", err)
			}
		}
		pub.PacketID = uint16(i%65535 + 1)
		next(i)
		if err := c.Send(pub, l.WriteEach); err != nil {
			return err
		}
	}
	if err := c.W.Flush(); err != nil {
		return err
	}
	return <-done
}
