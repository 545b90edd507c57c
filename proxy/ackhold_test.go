package proxy

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// publishQoS1 sends QoS 1 publishes with ids, and reads them at the broker.
func publishQoS1(t *testing.T, c *mqtttest.Raw, broker net.Conn, ids ...uint16) {
	t.Helper()
	for _, id := range ids {
		c.SendPacket(&codec.Publish{QoS: 1, PacketID: id, Topic: []byte("plant/t"), Payload: []byte("x")})
	}
	r := codec.NewReader(broker, 0)
	broker.SetReadDeadline(time.Now().Add(5 * time.Second))
	for _, id := range ids {
		f, err := r.ReadPacket()
		if err != nil || f.Type != codec.PUBLISH {
			t.Fatalf("broker: want PUBLISH %d, got %v %v", id, f.Type, err)
		}
	}
}

func puback(id uint16) []byte { return []byte{0x40, 2, byte(id >> 8), byte(id)} }

// expectAck reads the client's next packet, which must be PUBACK id.
func expectAck(t *testing.T, c *mqtttest.Raw, id uint16, within time.Duration) {
	t.Helper()
	p, err := c.Read(within)
	if err != nil {
		t.Fatalf("want PUBACK %d within %v: %v", id, within, err)
	}
	if a, ok := p.(*codec.Ack); !ok || a.PacketType != codec.PUBACK || a.PacketID != id {
		t.Fatalf("want PUBACK %d, got %#v", id, p)
	}
}

// TestAckHoldBounded: a PUBACK waiting for the broker's next ack goes out
// after ackHold even when that ack never comes. Without the hold's own
// deadline it would wait for the idle deadline (over a second).
func TestAckHoldBounded(t *testing.T) {
	c, broker := viaFakeBroker(t, "hold-bounded")
	publishQoS1(t, c, broker, 1, 2)
	start := time.Now()
	broker.Write(puback(1)) // 2 stays unacknowledged
	expectAck(t, c, 1, 5*time.Second)
	if d := time.Since(start); d > idleAfter/2 {
		t.Fatalf("PUBACK held %v; the hold is %v", d, ackHold)
	}
}

// TestAckHold: with the hold made long, a PUBACK waits while the broker
// owes another; a delivery is never held and takes the held acks with it,
// in order; the last ack owed goes out at once; and acks held when the
// broker goes away still reach the client before the close.
func TestAckHold(t *testing.T) {
	prev := ackHold
	ackHold = time.Minute
	t.Cleanup(func() { ackHold = prev }) // runs after the server has stopped

	c, broker := viaFakeBroker(t, "hold")
	publishQoS1(t, c, broker, 1, 2, 3)
	broker.Write(puback(1))
	if p, err := c.Read(300 * time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("PUBACK 1 not held while 2 and 3 are owed: got %#v, %v", p, err)
	}
	// A delivery, then PUBACK 2, in one segment: nothing may wait.
	delivery := []byte{0x30, 6, 0, 1, 'd', 0, 'o', 'k'} // v5: no properties
	broker.Write(append(delivery, puback(2)...))
	expectAck(t, c, 1, 2*time.Second)
	if p, err := c.Read(2 * time.Second); err != nil {
		t.Fatalf("delivery held: %v", err)
	} else if pub, ok := p.(*codec.Publish); !ok || string(pub.Topic) != "d" {
		t.Fatalf("want the delivery, got %#v", p)
	}
	expectAck(t, c, 2, 2*time.Second)
	broker.Write(puback(3)) // none owed after it
	expectAck(t, c, 3, 2*time.Second)

	// Held when the broker closes: delivered before moat closes the
	// client. A 3.1.1 client, to which moat sends no DISCONNECT that
	// would carry the held bytes out with it.
	c, broker = viaFakeBrokerAs(t, codec.V311, "hold-close")
	publishQoS1(t, c, broker, 4, 5)
	broker.Write(puback(4))
	time.Sleep(50 * time.Millisecond)
	broker.Close()
	got := c.ExpectClosed(5 * time.Second)
	if len(got) == 0 {
		t.Fatal("PUBACK 4 lost when the broker closed")
	}
	if a, ok := got[0].(*codec.Ack); !ok || a.PacketType != codec.PUBACK || a.PacketID != 4 {
		t.Fatalf("want PUBACK 4 first, got %#v", got[0])
	}
}
