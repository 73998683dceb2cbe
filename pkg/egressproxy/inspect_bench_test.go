package egressproxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
)

// Inspection benchmarks: every figure has its "direct" twin in the same
// run, against the same 127.0.0.1 upstream (HTTP/1.1 on both legs, so the
// difference is the proxy's termination, decision and re-encryption).

// benchUpstream serves /small (a short body) and /bytes/N (N bytes) over
// TLS with a leaf of w.ca for name.
func benchUpstream(w *inspectWorld, name string) string {
	leaf := w.ca.leaf(w.t, name)
	chunk := make([]byte, 256<<10)
	mux := http.NewServeMux()
	mux.HandleFunc("/small", func(rw http.ResponseWriter, r *http.Request) { io.WriteString(rw, "ok") })
	mux.HandleFunc("/bytes/{n}", func(rw http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.PathValue("n"), 10, 64)
		rw.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			k := min(n, int64(len(chunk)))
			if _, err := rw.Write(chunk[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		w.t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{leaf}},
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){}} // HTTP/1.1 only
	go srv.ServeTLS(ln, "", "")
	w.t.Cleanup(func() { srv.Close() })
	w.host(name, 443, ln.Addr().String())
	return ln.Addr().String()
}

// benchClient is an HTTP/1.1 keep-alive client: "direct" dials the
// upstream trusting w.ca, "inspected" dials the proxy trusting the
// firewall CA.
func benchClient(w *inspectWorld, mode, direct string) *http.Client {
	target, roots := w.addr, w.agentCA
	if mode == "direct" {
		target, roots = direct, w.ca.pool
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", target)
		},
		TLSClientConfig: &tls.Config{RootCAs: roots},
		TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{},
		ReadBufferSize:  256 << 10,
	}
	w.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func benchGet(b *testing.B, c *http.Client, url string, want int64) {
	resp, err := c.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || (want >= 0 && n != want) {
		b.Fatalf("GET %s: %d, %d bytes, %v", url, resp.StatusCode, n, err)
	}
}

func inspectBenchWorld(b *testing.B) (*inspectWorld, string) {
	w := newInspectWorld(b)
	w.proxy.cfg.Logf = func(string, ...any) {}
	w.proxy.cfg.AccessLog = nil
	direct := benchUpstream(w, "api.example.test")
	w.setPolicy(loopback, inspected("api.example.test", "", allowPath("/small", "GET"), allowPath("/bytes/", "GET")))
	return w, direct
}

// BenchmarkInspectedRequest: one small GET on a kept-alive connection.
func BenchmarkInspectedRequest(b *testing.B) {
	w, direct := inspectBenchWorld(b)
	for _, mode := range []string{"direct", "inspected"} {
		b.Run(mode, func(b *testing.B) {
			c := benchClient(w, mode, direct)
			benchGet(b, c, "https://api.example.test/small", 2) // connection up
			for b.Loop() {
				benchGet(b, c, "https://api.example.test/small", 2)
			}
		})
	}
}

// BenchmarkInspectedDownload: one large body per op on a kept-alive
// connection. The size is 1 GiB unless -short (256 MiB).
func BenchmarkInspectedDownload(b *testing.B) {
	w, direct := inspectBenchWorld(b)
	size, name := int64(1<<30), "1GiB"
	if testing.Short() {
		size, name = 256<<20, "256MiB"
	}
	for _, mode := range []string{"direct", "inspected"} {
		b.Run(name+"/"+mode, func(b *testing.B) {
			c := benchClient(w, mode, direct)
			benchGet(b, c, "https://api.example.test/small", 2)
			b.SetBytes(size)
			cpu0 := cpuTime()
			for b.Loop() {
				benchGet(b, c, fmt.Sprintf("https://api.example.test/bytes/%d", size), size)
			}
			mib := float64(b.N) * float64(size) / (1 << 20)
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/mib, "cpu-µs/MiB")
		})
	}
}

// BenchmarkInspectionLeaf: a new agent connection to an inspected name
// (TLS handshake with the proxy, one request), with the name's leaf cached
// vs minted for it (the cache emptied before each connection).
func BenchmarkInspectionLeaf(b *testing.B) {
	w, _ := inspectBenchWorld(b)
	for _, mode := range []string{"cached", "fresh"} {
		b.Run(mode, func(b *testing.B) {
			warm := benchClient(w, "inspected", "") // the leaf cached
			benchGet(b, warm, "https://api.example.test/small", 2)
			mints0 := w.proxy.Stats().LeavesMinted
			for b.Loop() {
				if mode == "fresh" {
					w.proxy.leaves.mu.Lock()
					w.proxy.leaves.leaves = map[string]*tls.Certificate{}
					w.proxy.leaves.mu.Unlock()
				}
				c := benchClient(w, "inspected", "")
				c.Transport.(*http.Transport).DisableKeepAlives = true
				benchGet(b, c, "https://api.example.test/small", 2)
			}
			b.ReportMetric(float64(w.proxy.Stats().LeavesMinted-mints0)/float64(b.N), "mints/op")
		})
	}
}

// BenchmarkLeafFor isolates the leaf step of a new inspected connection:
// a cache hit vs a mint (P-256 key and signature).
func BenchmarkLeafFor(b *testing.B) {
	w := newInspectWorld(b)
	for _, mode := range []string{"cached", "fresh"} {
		b.Run(mode, func(b *testing.B) {
			if _, err := w.proxy.leafFor("api.example.test"); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if mode == "fresh" {
					w.proxy.leaves.mu.Lock()
					clear(w.proxy.leaves.leaves)
					w.proxy.leaves.mu.Unlock()
				}
				if _, err := w.proxy.leafFor("api.example.test"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
