package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/pires/go-proxyproto"
)

// PROXY protocol v1 and v2 from trusted load balancers: the header is read
// byte-exact from the socket (nothing of the MQTT or TLS stream after it
// is consumed, so the session keeps its raw socket and can park), and
// parsed by go-proxyproto.

var sigV2 = []byte("\r\n\r\n\x00\r\nQUIT\n")

// readProxyHeader reads one PROXY header from c.
func readProxyHeader(c io.Reader) (*proxyproto.Header, error) {
	// 15 bytes: the shortest v1 header ("PROXY UNKNOWN\r\n"), and most
	// of v2's 16-byte fixed part.
	hdr := make([]byte, 15, 232)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return nil, err
	}
	switch {
	case bytes.HasPrefix(hdr, sigV2):
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return nil, err
		}
		hdr = append(hdr, b[0])
		n := int(hdr[14])<<8 | int(hdr[15])
		if n > 216 { // the largest address block plus room for TLVs moat ignores
			return nil, fmt.Errorf("PROXY v2 header announces %d address bytes", n)
		}
		rest := make([]byte, n)
		if _, err := io.ReadFull(c, rest); err != nil {
			return nil, err
		}
		hdr = append(hdr, rest...)
	case bytes.HasPrefix(hdr, []byte("PROXY ")):
		// v1: one line of at most 107 bytes, read up to its CRLF.
		for !bytes.HasSuffix(hdr, []byte("\r\n")) {
			if len(hdr) >= 107 {
				return nil, errors.New("PROXY v1 header longer than 107 bytes")
			}
			var b [1]byte
			if _, err := io.ReadFull(c, b[:]); err != nil {
				return nil, err
			}
			hdr = append(hdr, b[0])
		}
	default:
		return nil, errors.New("no PROXY protocol header from a trusted load balancer")
	}
	return proxyproto.Read(bufio.NewReader(bytes.NewReader(hdr)))
}

// trustedSource reports whether addr may send PROXY headers.
func trustedSource(trusted []netip.Prefix, addr net.Addr) bool {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return false
	}
	ip = ip.Unmap()
	for _, p := range trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// acceptProxied finishes a connection from a trusted load balancer: its
// PROXY header names the client, whose address the bans, limits, policy
// and logs then use. Runs on its own goroutine, so a slow balancer does
// not hold the accept loop.
func (s *Server) acceptProxied(l *listener, conn net.Conn) {
	defer s.wg.Done()
	conn.SetReadDeadline(time.Now().Add(s.limits().ConnectTimeout))
	h, err := readProxyHeader(conn)
	if err != nil {
		s.log.Info("PROXY protocol header refused", "listener", l.cfg.Name, "balancer", conn.RemoteAddr().String(), "error", err)
		conn.Close()
		return
	}
	conn.SetReadDeadline(time.Time{})
	src, _, ok := h.TCPAddrs()
	if !ok || h.Command.IsLocal() {
		// LOCAL (the balancer's own health check) or not TCP: nothing
		// to proxy for a client.
		conn.Close()
		return
	}
	addr := hostOf(src)
	if !s.admit(l, conn, addr) {
		return
	}
	if sess := s.sessionFor(l, conn, addr, src); sess != nil {
		sess.serve()
	}
}
