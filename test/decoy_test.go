package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// A subscription touching a decoy topic raises an alert and bans the
// address at once; a canary username likewise; other addresses go on.
func TestDecoys(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Decoys = config.Decoys{Topics: []string{"plant1/safety/override/#"}, Usernames: []string{"admin"}}
		c.Bans.Duration = 2 * time.Second
	})
	attacker := mqtttest.DialRawFrom(t, "127.0.0.21", e.plain)
	attacker.Connect(codec.V5, "scanner", 30)
	attacker.SendPacket(&codec.Subscribe{PacketID: 1, Subscriptions: []codec.Subscription{{Filter: "plant1/#"}}})
	attacker.ExpectDisconnect(codec.AdministrativeAction, 5*time.Second)
	// Banned: the next connection from that address is closed unanswered.
	again := mqtttest.DialRawFrom(t, "127.0.0.21", e.plain)
	again.V = codec.V5
	again.SendPacket(&codec.Connect{Version: codec.V5, CleanStart: true, ClientID: "scanner2"})
	if got := again.ExpectClosed(5 * time.Second); len(got) != 0 {
		t.Fatalf("banned address got %v", got)
	}
	// Canary credentials.
	canaryLogin(t, e, "127.0.0.22")
	late := mqtttest.DialRawFrom(t, "127.0.0.22", e.plain)
	late.V = codec.V311
	late.SendPacket(&codec.Connect{Version: codec.V311, CleanStart: true, ClientID: "y"})
	if got := late.ExpectClosed(5 * time.Second); len(got) != 0 {
		t.Fatalf("address of a canary login got %v", got)
	}
	// Everyone else is untouched, and a publish outside the decoy is fine.
	ok := mqtttest.DialRawFrom(t, "127.0.0.23", e.plain)
	ok.Connect(codec.V311, "fine", 30)
	ok.SendPacket(&codec.Publish{Topic: []byte("plant1/line/temp"), QoS: 1, PacketID: 1, Payload: []byte("1")})
	if _, isAck := ok.Expect(5 * time.Second).(*codec.Ack); !isAck {
		t.Fatal("a normal publish was not acknowledged")
	}
	// Bans expire.
	time.Sleep(2100 * time.Millisecond)
	back := mqtttest.DialRawFrom(t, "127.0.0.21", e.plain)
	back.Connect(codec.V5, "scanner3", 30)
}

// An address that keeps being denied is cut and banned.
func TestBanAfterDenials(t *testing.T) {
	e, _ := policyEnv(t, func(c *config.Config) {
		c.Bans = config.Bans{Denials: 5, Window: time.Minute, Duration: time.Minute}
	})
	c := mqtttest.DialRawFrom(t, "127.0.0.31", e.plain)
	c.Connect(codec.V5, "prober", 30)
	for i := range 5 {
		c.SendPacket(&codec.Publish{Topic: []byte("secret/" + strings.Repeat("x", i+1)), QoS: 1, PacketID: uint16(i + 1)})
	}
	// Four PUBACK 0x87, then the fifth denial bans.
	var got []codec.Packet
	for {
		p, err := c.Read(5 * time.Second)
		if err != nil {
			break
		}
		got = append(got, p)
	}
	if len(got) != 5 {
		t.Fatalf("got %d packets: %v", len(got), got)
	}
	if d, ok := got[4].(*codec.Disconnect); !ok || d.ReasonCode != codec.AdministrativeAction {
		t.Fatalf("last packet %#v, want DISCONNECT 0x98", got[4])
	}
	again := mqtttest.DialRawFrom(t, "127.0.0.31", e.plain)
	again.V = codec.V5
	again.SendPacket(&codec.Connect{Version: codec.V5, CleanStart: true, ClientID: "prober2"})
	if got := again.ExpectClosed(5 * time.Second); len(got) != 0 {
		t.Fatalf("banned address got %v", got)
	}
}

// canaryLogin logs in from the address with the decoy username "admin"
// and expects the refusal a wrong password gets.
func canaryLogin(t *testing.T, e *env, from string) {
	t.Helper()
	canary := mqtttest.DialRawFrom(t, from, e.plain)
	canary.V = codec.V311
	canary.SendPacket(&codec.Connect{Version: codec.V311, CleanStart: true, ClientID: "x", HasUsername: true, Username: "admin", HasPassword: true, Password: []byte("admin")})
	if a, ok := canary.Expect(5 * time.Second).(*codec.Connack); !ok || a.ReasonCode != codec.ConnRefusedBadCredentials311 {
		t.Fatalf("canary login from %s: %+v", from, a)
	}
}
