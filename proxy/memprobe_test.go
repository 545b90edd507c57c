package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"github.com/moat-mqtt/moat/internal/devpki"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/codec"
	"github.com/moat-mqtt/moat/config"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

func TestMemProbe(t *testing.T) {
	if os.Getenv("MEMPROBE") == "" {
		t.Skip()
	}
	broker := mqtttest.Start(t, "")
	dir := t.TempDir()
	devpki.Ensure(dir)
	srv := newTestServer(t, broker.Addr, func(c *config.Config) {
		c.Listeners[0].Transport = "tls"
		c.Listeners[0].TLS = &config.ServerTLS{CertFile: dir + "/server.crt", KeyFile: dir + "/server.key"}
	})
	addr := srv.Addr("mqtt").String()
	pem, _ := os.ReadFile(dir + "/ca.crt")
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	const n = 2000
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	conns := make([]net.Conn, 0, n)
	for i := 0; i < n; i++ {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := (&codec.Connect{Version: codec.V311, CleanStart: true, ClientID: fmt.Sprint("p", i), KeepAlive: 300}).Append(nil, codec.V311)
		c.Write(b)
		buf := make([]byte, 4)
		c.Read(buf)
		conns = append(conns, c)
	}
	time.Sleep(500 * time.Millisecond)
	runtime.GC()
	runtime.ReadMemStats(&m1)
	per := func(a, b uint64) float64 { return float64(int64(b)-int64(a)) / n / 1024 }
	t.Logf("heap inuse %.2f KiB/conn, stack inuse %.2f KiB/conn, sys %.2f KiB/conn, objects %.1f/conn",
		per(m0.HeapInuse, m1.HeapInuse), per(m0.StackInuse, m1.StackInuse), per(m0.Sys, m1.Sys), float64(m1.HeapObjects-m0.HeapObjects)/n)
	f, _ := os.Create("/tmp/heap.prof")
	pprof.WriteHeapProfile(f)
	f.Close()
	for _, c := range conns {
		c.Close()
	}
}
