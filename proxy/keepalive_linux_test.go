package proxy

import (
	"context"
	"net"
	"syscall"
	"testing"
)

// TestNoTCPKeepAlive: moat's sockets, accepted and dialled, carry no TCP
// keep-alive and do carry TCP_NODELAY (Go's own default).
func TestNoTCPKeepAlive(t *testing.T) {
	ln, err := listenConfig.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialed, err := dialer.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer dialed.Close()
	accepted, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer accepted.Close()
	for name, c := range map[string]net.Conn{"accepted": accepted, "dialed": dialed} {
		raw, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var ka, nodelay int
		var serr error
		if err := raw.Control(func(fd uintptr) {
			if ka, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE); serr == nil {
				nodelay, serr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY)
			}
		}); err != nil || serr != nil {
			t.Fatal(err, serr)
		}
		if ka != 0 || nodelay == 0 {
			t.Fatalf("%s socket: SO_KEEPALIVE %d (want 0), TCP_NODELAY %d (want on)", name, ka, nodelay)
		}
	}
}
