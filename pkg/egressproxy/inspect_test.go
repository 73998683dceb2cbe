package egressproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// The inspection world: the test world (servers on 127.0.0.1, names mapped
// by the fake resolver) plus a firewall CA the proxy mints leaves from and
// the agent side trusts, and the test CA (w.ca) as the upstream roots.
type inspectWorld struct {
	*world
	fw      *certs.FirewallCA
	agentCA *x509.CertPool

	mu      sync.Mutex
	denials []Denial
	logs    []string
}

func newInspectWorld(t testing.TB) *inspectWorld {
	t.Helper()
	w := &inspectWorld{world: newWorld(t)}
	fw, _, err := certs.EnsureFirewallCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w.fw = fw
	w.agentCA = x509.NewCertPool()
	w.agentCA.AddCert(fw.Cert)
	// Set before any connection: the fields are read by connection
	// goroutines only.
	w.proxy.cfg.UpstreamRoots = w.ca.pool
	w.proxy.cfg.OnDenied = func(d Denial) {
		w.mu.Lock()
		w.denials = append(w.denials, d)
		w.mu.Unlock()
	}
	w.proxy.cfg.Logf = func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		w.mu.Lock()
		w.logs = append(w.logs, line)
		w.mu.Unlock()
		t.Log(line)
	}
	w.proxy.SetInspectCA(fw)
	return w
}

func (w *inspectWorld) denied() []Denial {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Denial(nil), w.denials...)
}

func (w *inspectWorld) logged(sub string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, l := range w.logs {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}

// upstream is an HTTPS test server (HTTP/1.1 and HTTP/2) with a leaf of
// w.ca for its name; it answers "<name> <proto> <method> <uri> host=<h>"
// and counts the requests it served.
type upstream struct {
	hits atomic.Int64
	mu   sync.Mutex
	uris []string
}

func (u *upstream) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.uris...)
}

func (w *inspectWorld) upstream(name string, cert *tls.Certificate, extra http.Handler) *upstream {
	w.t.Helper()
	if cert == nil {
		c := w.ca.leaf(w.t, name)
		cert = &c
	}
	u := &upstream{}
	h := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		u.mu.Lock()
		u.uris = append(u.uris, r.RequestURI)
		u.mu.Unlock()
		if extra != nil && strings.HasPrefix(r.URL.Path, "/ws") {
			extra.ServeHTTP(rw, r)
			return
		}
		fmt.Fprintf(rw, "%s %s %s %s host=%s", name, r.Proto, r.Method, r.RequestURI, r.Host)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		w.t.Fatal(err)
	}
	srv := &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"h2", "http/1.1"}}}
	go srv.ServeTLS(ln, "", "")
	w.t.Cleanup(func() { srv.Close() })
	w.host(name, 443, ln.Addr().String())
	return u
}

// agent is an HTTPS client whose every connection goes to the proxy and
// that trusts the firewall CA only.
func (w *inspectWorld) agent(h2 bool) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", w.addr)
		},
		TLSClientConfig:   &tls.Config{RootCAs: w.agentCA},
		ForceAttemptHTTP2: h2,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	w.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

func (w *inspectWorld) do(c *http.Client, method, url string) (*http.Response, string) {
	w.t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		w.t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		w.t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// rawRequest sends one HTTP/1.1 request exactly as written (path and Host
// untouched) over TLS with SNI sni, and reads the response.
func (w *inspectWorld) rawRequest(sni, head string) (*http.Response, string) {
	w.t.Helper()
	c, err := w.tlsClient(sni, func(cfg *tls.Config) { cfg.RootCAs = w.agentCA; cfg.NextProtos = []string{"http/1.1"} })
	if err != nil {
		w.t.Fatalf("handshake: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, head); err != nil {
		w.t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		w.t.Fatalf("reading the response to %q: %v", head, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func inspected(name string, def egressrules.Action, prs ...egressrules.PathRule) egressrules.Rule {
	r := httpsRule(name)
	r.PathRules, r.PathDefault = prs, def
	return r
}

func allowPath(p string, methods ...string) egressrules.PathRule {
	return egressrules.PathRule{Path: p, Action: egressrules.Allow, Methods: methods}
}

func denyPath(p string, methods ...string) egressrules.PathRule {
	return egressrules.PathRule{Path: p, Action: egressrules.Deny, Methods: methods}
}

func TestInspectAllowedPathThroughReencryptedLeg(t *testing.T) {
	w := newInspectWorld(t)
	u := w.upstream("api.example.test", nil, nil)
	w.setPolicy(loopback, inspected("api.example.test", "", allowPath("/v1/")))

	c := w.agent(false)
	resp, body := w.do(c, "GET", "https://api.example.test/v1/items?page=2")
	if resp.StatusCode != 200 || body != "api.example.test HTTP/2.0 GET /v1/items?page=2 host=api.example.test" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	// The agent saw a leaf of the firewall CA for the name, not the
	// upstream's; the upstream was verified on the proxy's leg.
	leaf := resp.TLS.PeerCertificates[0]
	if leaf.Issuer.CommonName != w.fw.Cert.Subject.CommonName || leaf.DNSNames[0] != "api.example.test" {
		t.Fatalf("agent saw %s issued by %s", leaf.DNSNames, leaf.Issuer)
	}
	if u.hits.Load() != 1 {
		t.Fatalf("upstream served %d requests, want 1", u.hits.Load())
	}
	l := w.waitLog(func(l logLine) bool { return l.Kind == "request" && l.Path == "/v1/items" })
	if l.Verdict != "allowed" || l.Method != "GET" || l.Status != 200 || l.Host != "api.example.test" || l.Rule != "/v1/" {
		t.Fatalf("request line %+v", l)
	}
	// The connection's own line, at its close: inspected, both directions
	// counted, the upstream it dialled.
	c.Transport.(*http.Transport).CloseIdleConnections()
	cl := w.waitLog(func(l logLine) bool { return l.Kind == "" && l.Host == "api.example.test" })
	if !cl.Inspected || cl.Verdict != "allowed" || cl.Requests != 1 || cl.BytesUp == 0 || cl.BytesDown == 0 || !strings.HasSuffix(cl.Upstream, ":443") {
		t.Fatalf("connection line %+v", cl)
	}
	w.agent(false).Transport.(*http.Transport).CloseIdleConnections()
}

func TestInspectDeniedPath403WithBodyAndDenial(t *testing.T) {
	w := newInspectWorld(t)
	u := w.upstream("api.example.test", nil, nil)
	w.setPolicy(loopback, inspected("api.example.test", "", allowPath("/v1/")))
	c := w.agent(false)

	resp, body := w.do(c, "DELETE", "https://api.example.test/admin/users")
	if resp.StatusCode != 403 {
		t.Fatalf("status %d, body %q", resp.StatusCode, body)
	}
	for _, want := range []string{"api.example.test", "DELETE", "/admin/users",
		"clawker firewall add api.example.test --path /admin/users --action allow --methods DELETE"} {
		if !strings.Contains(body, want) {
			t.Errorf("body %q lacks %q", body, want)
		}
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("content type %q", ct)
	}
	if u.hits.Load() != 0 {
		t.Fatal("a refused request reached the upstream")
	}
	// The same kept-alive connection still serves an allowed path.
	if resp, body := w.do(c, "GET", "https://api.example.test/v1/ok"); resp.StatusCode != 200 {
		t.Fatalf("allowed after a refusal: %d %q", resp.StatusCode, body)
	}
	waitFor(t, 2*time.Second, func() bool { return len(w.denied()) == 1 }, "one denial")
	d := w.denied()[0]
	if d.Where != WherePath || d.Method != "DELETE" || d.Path != "/admin/users" || d.Host != "api.example.test" || d.Proto != "https" ||
		!strings.Contains(d.Allow, "--path /admin/users") || d.Reason == "" || !strings.HasPrefix(d.Src, "127.0.0.1:") {
		t.Fatalf("denial %+v", d)
	}
	l := w.waitLog(func(l logLine) bool { return l.Kind == "request" && l.Verdict == "denied" })
	if l.Method != "DELETE" || l.Path != "/admin/users" || l.Status != 403 {
		t.Fatalf("request line %+v", l)
	}
}

func TestInspectMethodAndRegexRules(t *testing.T) {
	w := newInspectWorld(t)
	u := w.upstream("api.example.test", nil, nil)
	w.setPolicy(loopback, inspected("api.example.test", "",
		allowPath("/v1/", "GET", "HEAD"),
		allowPath(`~^/repos/[^/]+/[^/]+/pulls$`, "POST"),
		denyPath("/v1/secret"),
	))
	c := w.agent(false)
	for _, tc := range []struct {
		method, path string
		code         int
	}{
		{"GET", "/v1/x", 200},
		{"HEAD", "/v1/x", 200},
		{"POST", "/v1/x", 403},                  // method not listed
		{"GET", "/v1/secret/key", 403},          // longer deny prefix wins
		{"POST", "/repos/acme/tool/pulls", 200}, // regex, whole path
		{"POST", "/repos/acme/tool/pulls/1", 403},
		{"GET", "/repos/acme/tool/pulls", 403}, // regex rule is POST only
		{"GET", "/other", 403},                 // path_default deny
	} {
		before := u.hits.Load()
		resp, body := w.do(c, tc.method, "https://api.example.test"+tc.path)
		if resp.StatusCode != tc.code {
			t.Errorf("%s %s: %d %q, want %d", tc.method, tc.path, resp.StatusCode, body, tc.code)
		}
		if reached := u.hits.Load() > before; reached != (tc.code == 200) {
			t.Errorf("%s %s: upstream reached=%v", tc.method, tc.path, reached)
		}
	}
	// A deny path rule's refusal names removing it, not adding an allow.
	_, body := w.do(c, "GET", "https://api.example.test/v1/secret/key")
	if !strings.Contains(body, "clawker firewall remove api.example.test --path /v1/secret") {
		t.Errorf("deny-rule body %q", body)
	}
}

func TestInspectNormalisationAttacksRefused(t *testing.T) {
	w := newInspectWorld(t)
	u := w.upstream("api.example.test", nil, nil)
	w.setPolicy(loopback, inspected("api.example.test", "", allowPath("/v1/")))
	for _, p := range []string{
		"/v1/../admin",
		"//admin",
		"/v1/%2e%2e/admin",
		"/v1/%2E%2E%2Fadmin",
		"/v1/..%2fadmin",
		"/v1/%2e%2e%2f%2e%2e/admin",
		"/v1/..;/admin",
		"/v1/%00",
	} {
		resp, body := w.rawRequest("api.example.test", "GET "+p+" HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n")
		if resp.StatusCode != 403 && resp.StatusCode != 400 {
			t.Errorf("%s: %d %q, want refused", p, resp.StatusCode, body)
		}
	}
	if n := u.hits.Load(); n != 0 {
		t.Fatalf("the upstream served %d normalisation attacks: %v", n, u.seen())
	}
	// What is allowed is forwarded in the normalised form that was decided.
	resp, body := w.rawRequest("api.example.test", "GET /v1//a/./b/%7euser?q=1 HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if got := u.seen(); len(got) != 1 || got[0] != "/v1/a/b/~user?q=1" {
		t.Fatalf("upstream got %v, want the normalised path", got)
	}
}

func TestInspectHTTP2ToAgentAndUpstream(t *testing.T) {
	w := newInspectWorld(t)
	w.upstream("api.example.test", nil, nil)
	w.setPolicy(loopback, inspected("api.example.test", "", allowPath("/v1/")))
	c := w.agent(true)
	resp, body := w.do(c, "GET", "https://api.example.test/v1/h2")
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 || !strings.Contains(body, " HTTP/2.0 GET /v1/h2 ") {
		t.Fatalf("proto %s status %d body %q", resp.Proto, resp.StatusCode, body)
	}
	resp, body = w.do(c, "GET", "https://api.example.test/admin")
	if resp.ProtoMajor != 2 || resp.StatusCode != 403 || !strings.Contains(body, "--path /admin") {
		t.Fatalf("h2 refusal: %s %d %q", resp.Proto, resp.StatusCode, body)
	}
	// Concurrent streams on the one connection.
	var wg sync.WaitGroup
	errs := make(chan string, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get(fmt.Sprintf("https://api.example.test/v1/s%d", i))
			if err != nil {
				errs <- err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(b), fmt.Sprintf("/v1/s%d ", i)) {
				errs <- fmt.Sprintf("stream %d: %d %q", i, resp.StatusCode, b)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// wsEcho is an upstream handler completing a WebSocket-style upgrade and
// echoing every line.
var wsEcho = http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(rw, "want an upgrade", 400)
		return
	}
	conn, brw, err := http.NewResponseController(rw).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
	for {
		line, err := brw.ReadString('\n')
		if err != nil {
			return
		}
		io.WriteString(conn, "echo "+line)
	}
})

func TestInspectWebSocketUpgrade(t *testing.T) {
	w := newInspectWorld(t)
	w.upstream("api.example.test", nil, wsEcho)
	w.setPolicy(loopback, inspected("api.example.test", "", allowPath("/ws/", "GET")))

	c, err := w.tlsClient("api.example.test", func(cfg *tls.Config) { cfg.RootCAs = w.agentCA; cfg.NextProtos = []string{"http/1.1"} })
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /ws/chat HTTP/1.1\r\nHost: api.example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		t.Fatalf("upgrade answered %s %v", resp.Status, resp.Header)
	}
	for _, msg := range []string{"one\n", "two\n"} {
		io.WriteString(c, msg)
		got, err := br.ReadString('\n')
		if err != nil || got != "echo "+msg {
			t.Fatalf("echo of %q: %q %v", msg, got, err)
		}
	}
	// An upgrade on a refused path is refused like any request.
	resp, body := w.rawRequest("api.example.test", "GET /other HTTP/1.1\r\nHost: api.example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	if resp.StatusCode != 403 {
		t.Fatalf("refused upgrade: %d %q", resp.StatusCode, body)
	}
}

func TestInspectUpstreamCertificateNotVerified(t *testing.T) {
	w := newInspectWorld(t)
	other := newTestCA(t) // not among the proxy's upstream roots
	leaf := other.leaf(t, "api.example.test")
	u := w.upstream("api.example.test", &leaf, nil)
	w.setPolicy(loopback, inspected("api.example.test", "", allowPath("/v1/")))
	resp, body := w.do(w.agent(false), "GET", "https://api.example.test/v1/x")
	if resp.StatusCode != 502 || !strings.Contains(body, "does not verify") || !strings.Contains(body, "firewall.upstream_ca") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if u.hits.Load() != 0 {
		t.Fatal("the request reached an upstream whose certificate did not verify")
	}
	waitFor(t, 2*time.Second, func() bool {
		return w.logged("api.example.test: upstream certificate does not verify") && w.logged("unknown authority")
	}, "the verification log line")
	l := w.waitLog(func(l logLine) bool { return l.Kind == "request" })
	if l.Verdict != "error" || l.Status != 502 {
		t.Fatalf("request line %+v", l)
	}

	// A leaf for another name from a trusted CA fails too: ServerName is
	// the inspected name.
	wrong := w.ca.leaf(t, "elsewhere.example.test")
	w.upstream("named.example.test", &wrong, nil)
	w.setPolicy(loopback, inspected("named.example.test", "", allowPath("/")))
	if resp, body := w.do(w.agent(false), "GET", "https://named.example.test/"); resp.StatusCode != 502 {
		t.Fatalf("wrong-name upstream: %d %q", resp.StatusCode, body)
	}
}

func TestInspectHostMustMatchSNI(t *testing.T) {
	w := newInspectWorld(t)
	u := w.upstream("api.example.test", nil, nil)
	w.upstream("other.example.test", nil, nil)
	w.setPolicy(loopback, inspected("api.example.test", egressrules.Allow, allowPath("/")),
		httpsRule("other.example.test"))
	for _, host := range []string{"other.example.test", "api.example.test:8443", "API.example.test.evil"} {
		resp, body := w.rawRequest("api.example.test", "GET / HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\n\r\n")
		if resp.StatusCode != 421 || !strings.Contains(body, "api.example.test") {
			t.Errorf("Host %s: %d %q, want 421", host, resp.StatusCode, body)
		}
	}
	if u.hits.Load() != 0 {
		t.Fatal("a fronted request reached the upstream")
	}
	// Case and the default port are the same host.
	if resp, body := w.rawRequest("api.example.test", "GET / HTTP/1.1\r\nHost: API.Example.Test:443\r\nConnection: close\r\n\r\n"); resp.StatusCode != 200 {
		t.Fatalf("same host spelled otherwise: %d %q", resp.StatusCode, body)
	}
}

func TestInspectOnlyNamesWithPathRules(t *testing.T) {
	w := newInspectWorld(t)
	_, cert := w.tlsServer("plain.example.test", nil, helloHandler("plain"))
	w.upstream("api.example.test", nil, nil)
	w.setPolicy(loopback, inspected("api.example.test", "", allowPath("/")), httpsRule("plain.example.test"))
	c, err := w.tlsClient("plain.example.test", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.ConnectionState().PeerCertificates[0].Raw; string(got) != string(cert.Certificate[0]) {
		t.Fatal("a name without path rules was not passed through")
	}
	if got := roundTrip(t, c); got != "world plain\n" {
		t.Fatalf("reply %q", got)
	}
	c.Close()
	l := w.waitLog(func(l logLine) bool { return l.Host == "plain.example.test" && l.Kind == "" })
	if l.Inspected {
		t.Fatalf("passthrough logged as inspected: %+v", l)
	}
	if n := w.proxy.Stats().LeavesMinted; n != 0 {
		t.Fatalf("%d leaves minted for a passthrough name", n)
	}
}

func TestInspectWithoutCAFailsClosed(t *testing.T) {
	w := newInspectWorld(t)
	u := w.upstream("api.example.test", nil, nil)
	w.setPolicy(loopback, inspected("api.example.test", "", allowPath("/")))
	w.proxy.SetInspectCA(nil)
	_, err := w.tlsClient("api.example.test", func(cfg *tls.Config) { cfg.RootCAs = w.agentCA })
	if err == nil || !strings.Contains(err.Error(), "internal error") {
		t.Fatalf("without a CA: %v, want an internal_error alert", err)
	}
	if u.hits.Load() != 0 {
		t.Fatal("reached the upstream without inspection")
	}
	l := w.waitLog(func(l logLine) bool { return l.Host == "api.example.test" })
	if !strings.Contains(l.Reason, "no firewall CA") {
		t.Fatalf("log %+v", l)
	}
}

func TestInspectLeafCacheAndCAChange(t *testing.T) {
	w := newInspectWorld(t)
	w.upstream("api.example.test", nil, nil)
	w.setPolicy(loopback, inspected("api.example.test", "", allowPath("/")))
	for range 3 {
		c := w.agent(false) // a fresh client: a fresh connection
		if resp, _ := w.do(c, "GET", "https://api.example.test/"); resp.StatusCode != 200 {
			t.Fatal(resp.Status)
		}
	}
	if n := w.proxy.Stats().LeavesMinted; n != 1 {
		t.Fatalf("%d leaves minted for 3 connections to one name, want 1", n)
	}
	// A new CA: the cached leaf goes, the next one chains to the new CA.
	_, fw2, err := certs.RotateFirewallCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w.proxy.SetInspectCA(fw2)
	if w.proxy.InspectCAFingerprint() != fw2.Fingerprint {
		t.Fatal("fingerprint not updated")
	}
	pool := x509.NewCertPool()
	pool.AddCert(fw2.Cert)
	c, err := w.tlsClient("api.example.test", func(cfg *tls.Config) { cfg.RootCAs = pool })
	if err != nil {
		t.Fatalf("handshake trusting the new CA: %v", err)
	}
	c.Close()
	if n := w.proxy.Stats().LeavesMinted; n != 2 {
		t.Fatalf("%d leaves minted, want 2 after the CA change", n)
	}
	// An agent trusting only the old CA now refuses the leaf.
	if _, err := w.tlsClient("api.example.test", func(cfg *tls.Config) { cfg.RootCAs = w.agentCA }); err == nil {
		t.Fatal("a leaf of the new CA verified against the old one")
	}
}

func TestInspectPathRulesChangeOnLiveConnection(t *testing.T) {
	w := newInspectWorld(t)
	w.upstream("api.example.test", nil, nil)
	w.setPolicy(loopback, inspected("api.example.test", "", allowPath("/v1/")))
	c := w.agent(false)
	if resp, _ := w.do(c, "GET", "https://api.example.test/v2/x"); resp.StatusCode != 403 {
		t.Fatal(resp.Status)
	}
	w.setPolicy(loopback, inspected("api.example.test", "", allowPath("/v1/"), allowPath("/v2/")))
	if resp, body := w.do(c, "GET", "https://api.example.test/v2/x"); resp.StatusCode != 200 {
		t.Fatalf("after the rule change: %d %q", resp.StatusCode, body)
	}
	if n := w.proxy.Stats().Accepted; n != 1 {
		t.Fatalf("%d connections, want the one kept alive", n)
	}
}

func TestPlainHTTPPathRules(t *testing.T) {
	w := newInspectWorld(t)
	srv := w.httpServer("plain.example.test", 80)
	r := httpRule("plain.example.test", 80)
	r.PathRules = []egressrules.PathRule{allowPath("/pub/", "GET")}
	w.setPolicy(loopback, r)
	c := w.httpClient(false)
	if code, body := get(t, c, "http://plain.example.test/pub//a/../b"); code != 200 || !strings.HasPrefix(body, "plain.example.test GET /pub/b ") {
		t.Fatalf("%d %q", code, body)
	}
	before := srv.accepts.Load()
	code, body := get(t, c, "http://plain.example.test/private")
	if code != 403 || !strings.Contains(body, "clawker firewall add plain.example.test --proto http --path /private --action allow --methods GET") {
		t.Fatalf("%d %q", code, body)
	}
	if srv.accepts.Load() != before {
		t.Fatal("a refused path reached the server")
	}
	waitFor(t, 2*time.Second, func() bool { return len(w.denied()) == 1 }, "the denial")
	if d := w.denied()[0]; d.Where != WherePath || d.Proto != "http" || d.Method != "GET" || d.Path != "/private" {
		t.Fatalf("denial %+v", d)
	}
}
