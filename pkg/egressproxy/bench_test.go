package egressproxy

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// Every benchmark runs "direct" and "proxy" side by side in one run, against
// the same 127.0.0.1 server, so the two figures compare like with like.

func BenchmarkTLSSetup(b *testing.B) {
	w := newWorld(b)
	srv, _ := w.tlsServer("api.example.test", nil, helloHandler("api"))
	w.setPolicy(loopback, httpsRule("api.example.test"))
	for _, mode := range []string{"direct", "proxy"} {
		target := w.addr
		if mode == "direct" {
			target = srv.Addr().String()
		}
		b.Run(mode, func(b *testing.B) {
			one := make([]byte, 1)
			for b.Loop() {
				raw, err := net.Dial("tcp", target)
				if err != nil {
					b.Fatal(err)
				}
				// A fresh config per connection: no session resumption.
				c := tls.Client(raw, &tls.Config{ServerName: "api.example.test", RootCAs: w.ca.pool})
				if _, err := io.WriteString(c, "hello\n"); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, one); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}

// BenchmarkDownload measures the passthrough itself: the client sends a real
// ClientHello and the server then streams raw bytes, so neither end spends
// CPU on TLS records and the proxy's copy path is what differs.
func BenchmarkDownload(b *testing.B) {
	w := newWorld(b)
	hello := clientHello(b, &tls.Config{ServerName: "bulk.example.test"})
	buf := make([]byte, 256<<10)
	var size atomic.Int64
	srv := rawServer(b, func(c net.Conn) {
		if _, err := io.ReadFull(c, make([]byte, len(hello))); err != nil {
			return
		}
		for left := size.Load(); left > 0; {
			n := min(left, int64(len(buf)))
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
			left -= n
		}
	})
	w.host("bulk.example.test", 443, srv.Addr().String())
	w.setPolicy(loopback, httpsRule("bulk.example.test"))
	for _, sz := range []struct {
		name string
		n    int64
	}{{"64MiB", 64 << 20}, {"1GiB", 1 << 30}} {
		for _, mode := range []string{"direct", "proxy"} {
			target := w.addr
			if mode == "direct" {
				target = srv.Addr().String()
			}
			b.Run(sz.name+"/"+mode, func(b *testing.B) {
				size.Store(sz.n)
				rbuf := make([]byte, 256<<10)
				b.SetBytes(sz.n)
				cpu0 := cpuTime()
				for b.Loop() {
					c, err := net.Dial("tcp", target)
					if err != nil {
						b.Fatal(err)
					}
					c.Write(hello)
					var got int64
					for {
						n, err := c.Read(rbuf)
						got += int64(n)
						if err != nil {
							break
						}
					}
					c.Close()
					if got != sz.n {
						b.Fatalf("got %d of %d bytes", got, sz.n)
					}
				}
				// CPU of client+server(+proxy) per MiB moved: the proxy's own
				// cost is the proxy figure minus the direct one, which does
				// not depend on how many cores the machine lends the run.
				mib := float64(b.N) * float64(sz.n) / (1 << 20)
				b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/mib, "cpu-µs/MiB")
			})
		}
	}
}

// BenchmarkDecide times the pure decision step — peek an in-memory
// ClientHello, parse its SNI, decide under a policy of a few hundred rules —
// without DNS or dialling, and reports the per-op p50 and p99.
func BenchmarkDecide(b *testing.B) {
	doc := egressrules.Doc{Generation: 1}
	for i := range 300 {
		doc.Rules = append(doc.Rules, egressrules.Entry{ID: uint32(i + 1), Rule: egressrules.Rule{
			Dst: fmt.Sprintf("host%d.example.test", i), Proto: egressrules.HTTPS, Port: egressrules.Port(443), Action: egressrules.Allow}})
	}
	doc.Rules = append(doc.Rules, egressrules.Entry{ID: 1000, Rule: egressrules.Rule{
		Dst: ".pkg.example.test", Proto: egressrules.HTTPS, Port: egressrules.Port(443), Action: egressrules.Allow}})
	pol, err := doc.Compile()
	if err != nil {
		b.Fatal(err)
	}
	hello := clientHello(b, &tls.Config{ServerName: "a.b.pkg.example.test"})
	r := bytes.NewReader(hello)
	times := make([]time.Duration, 0, 1<<16)
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(hello)
		t0 := time.Now()
		_, d, err := PeekDecide(r, pol)
		el := time.Since(t0)
		if err != nil || !d.Allow {
			b.Fatalf("%v %+v", err, d)
		}
		if len(times) < cap(times) {
			times = append(times, el)
		}
	}
	slices.Sort(times)
	if len(times) > 0 {
		b.ReportMetric(float64(times[len(times)/2].Nanoseconds()), "p50-ns")
		b.ReportMetric(float64(times[len(times)*99/100].Nanoseconds()), "p99-ns")
	}
}
