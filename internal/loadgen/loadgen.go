// Package loadgen is the MQTT load generator shared by the benchmark
// harness (bench/) and the in-process benchmarks (test/): raw packets
// through buffered connections, so the generator costs as little as it can.
package loadgen

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
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
	d := &net.Dialer{Timeout: 10 * time.Second}
	var (
		conn net.Conn
		err  error
	)
	if tc != nil {
		conn, err = tls.DialWithDialer(d, "tcp", addr, tc)
	} else {
		conn, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	c := &Client{Conn: conn, R: codec.NewReader(conn, 0), W: bufio.NewWriterSize(conn, 32<<10), V: v}
	if err := c.Send(&codec.Connect{Version: v, CleanStart: true, ClientID: id, KeepAlive: 300}, true); err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := c.R.ReadPacket()
	conn.SetReadDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("CONNACK for %s: %w", id, err)
	}
	if f.Type != codec.CONNACK || f.Body[1] != 0 {
		conn.Close()
		return nil, fmt.Errorf("CONNECT %s refused: % x", id, f.Bytes)
	}
	return c, nil
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

// PublishLoop sends n messages of size bytes at qos: QoS 1 keeps up to
// window unacknowledged; QoS 0 ends with a PINGREQ whose PINGRESP proves
// the broker has read everything before it.
func PublishLoop(c *Client, qos byte, size, n, window int) error {
	pub := &codec.Publish{QoS: qos, Topic: []byte("bench/plant1/zone3/temp"), Payload: make([]byte, size)}
	if qos == 0 {
		for i := 0; i < n; i++ {
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
		if err := c.Send(pub, false); err != nil {
			return err
		}
	}
	if err := c.W.Flush(); err != nil {
		return err
	}
	return <-done
}
