package clawkercli_test

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/clawker/clawker-cp/pkg/adminclient/adminclienttest"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/clawkercli"
	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// fakeProxy stands in for the control plane's Oathkeeper: TLS with a
// server certificate, bearer tokens checked against the fake Hydra's
// (TokenEndpoint.Introspect, as Oathkeeper asks Hydra), 401 otherwise.
type fakeProxy struct {
	port int

	mu    sync.Mutex
	auths []string // the Authorization header of every request
}

func (p *fakeProxy) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.auths...)
}

// serveProxy serves routes behind the token check, with serverMat's server
// certificate; te nil refuses every token.
func serveProxy(t *testing.T, serverMat *certs.Material, te *adminclienttest.TokenEndpoint, routes map[string]func(w http.ResponseWriter)) *fakeProxy {
	t.Helper()
	p := &fakeProxy{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		p.mu.Lock()
		p.auths = append(p.auths, auth)
		p.mu.Unlock()
		tok, ok := strings.CutPrefix(auth, "Bearer ")
		active := false
		if ok && te != nil {
			in, err := te.Introspect(r.Context(), tok)
			active = err == nil && in.Active
		}
		if !active {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":{"code":401,"status":"Unauthorized","message":"Access credentials are invalid"}}`)
			return
		}
		h, found := routes[r.URL.Path]
		if r.Method != http.MethodGet || !found {
			http.NotFound(w, r)
			return
		}
		h(w)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{serverMat.Server.Raw}, PrivateKey: serverMat.ServerKey, Leaf: serverMat.Server}}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	p.port = srv.Listener.Addr().(*net.TCPAddr).Port
	return p
}

// countingHealth is a health port that counts the requests it gets and
// answers routes (404 elsewhere).
func countingHealth(t *testing.T, routes map[string]func(w http.ResponseWriter)) (int, *int) {
	t.Helper()
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		mu.Unlock()
		if h, ok := routes[r.URL.Path]; ok {
			h(w)
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port, &n
}

// writePorts writes h's settings.yaml pointing the health port, Oathkeeper
// and Hydra's public port at the given ports.
func writePorts(t *testing.T, h *adminclienttest.Home, health, proxy, hydra int) {
	t.Helper()
	p := h.Paths(t)
	if err := os.MkdirAll(p.ConfigDir, 0o700); err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf("control_plane:\n  health_port: %d\n  oathkeeper_port: %d\n  hydra_public_port: %d\n", health, proxy, hydra)
	if err := os.WriteFile(p.SettingsFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
}

// debugHome is a home with settings from writePorts; withAuth creates the
// CLI's material.
func debugHome(t *testing.T, health, proxy, hydra int, withAuth bool) *adminclienttest.Home {
	t.Helper()
	h := adminclienttest.NewHome(t)
	if withAuth {
		h.EnsureAuth(t)
	}
	writePorts(t, h, health, proxy, hydra)
	return h
}

func runIn(h *adminclienttest.Home, args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := clawkercli.Run(clawkercli.Env{Stdout: &stdout, Stderr: &stderr, Getenv: h.Getenv}, append([]string{"clawker"}, args...))
	return code, stdout.String(), stderr.String()
}

// distinctDead returns a port nothing listens on that differs from others.
func distinctDead(t *testing.T, others ...int) int {
	t.Helper()
	for {
		p := deadPort(t)
		clash := false
		for _, o := range others {
			clash = clash || o == p
		}
		if !clash {
			return p
		}
	}
}

// TestDebugThroughOathkeeper: with a proxy on oathkeeper_port, tree and
// state get a token from Hydra (client clawker-cli, private_key_jwt) and
// read /debug/* through the proxy with it; the health port is not asked.
func TestDebugThroughOathkeeper(t *testing.T) {
	// The material first: the fake Hydra and proxy serve its certificate.
	h := adminclienttest.NewHome(t)
	m := h.EnsureAuth(t)
	te := adminclienttest.ServeTokenEndpoint(t, m)
	state := `{"containers":[],"sessions":[],"future_field":1}`
	proxy := serveProxy(t, m, te, map[string]func(http.ResponseWriter){
		"/debug/actors": jsonAnswer(t, http.StatusOK, sampleTree()),
		"/debug/state":  func(w http.ResponseWriter) { _, _ = io.WriteString(w, state) },
	})
	health, asked := countingHealth(t, nil)
	writePorts(t, h, health, proxy.port, te.Port)

	code, stdout, stderr := runIn(h, "controlplane", "tree", "--format", "json")
	if code != 0 {
		t.Fatalf("tree: exit %d, stderr %q", code, stderr)
	}
	var back cpapi.ActorNode
	if err := json.Unmarshal([]byte(stdout), &back); err != nil || back.Name != sampleTree().Name || len(back.Children) != len(sampleTree().Children) {
		t.Errorf("tree --format json: %q (%v)", stdout, err)
	}
	code, stdout, stderr = runIn(h, "controlplane", "tree")
	if code != 0 {
		t.Fatalf("tree: exit %d, stderr %q", code, stderr)
	}
	golden(t, "tree_text", stdout)

	code, stdout, stderr = runIn(h, "controlplane", "state", "--format", "json")
	if code != 0 || stdout != state+"\n" {
		t.Errorf("state --format json: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}

	seen := proxy.seen()
	if len(seen) != 3 {
		t.Fatalf("the proxy got %d requests, want 3: %q", len(seen), seen)
	}
	for _, a := range seen {
		if !strings.HasPrefix(a, "Bearer fake-token-") {
			t.Errorf("the proxy got Authorization %q, want a bearer token from the token endpoint", a)
		}
	}
	if n := te.Issued(); n != 3 {
		t.Errorf("the token endpoint issued %d tokens, want one per invocation (3)", n)
	}
	if *asked != 0 {
		t.Errorf("the health port was asked %d times, want 0 (the proxy answered)", *asked)
	}
}

// TestDebugFallsBackToHealthPort: nothing on oathkeeper_port (a control
// plane without Ory): tree reads the health port, and asks no token.
func TestDebugFallsBackToHealthPort(t *testing.T) {
	health, asked := countingHealth(t, map[string]func(http.ResponseWriter){"/debug/actors": jsonAnswer(t, http.StatusOK, sampleTree())})
	h0 := adminclienttest.NewHome(t)
	te := adminclienttest.ServeTokenEndpoint(t, h0.EnsureAuth(t))
	h := debugHome(t, health, distinctDead(t, health, te.Port), te.Port, true)
	code, stdout, stderr := runIn(h, "controlplane", "tree")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	golden(t, "tree_text", stdout)
	if *asked != 1 || te.Issued() != 0 {
		t.Errorf("health port asked %d times (want 1), tokens issued %d (want 0)", *asked, te.Issued())
	}
}

// TestDebugHealthPort404: the proxy refuses the connection and the health
// port does not serve /debug/* (a control plane in its container whose
// Oathkeeper is down): the error names both and the way to look closer.
func TestDebugHealthPort404(t *testing.T) {
	health, _ := countingHealth(t, nil)
	proxy := distinctDead(t, health)
	h := debugHome(t, health, proxy, distinctDead(t, health, proxy), false)
	code, _, stderr := runIn(h, "controlplane", "state")
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	for _, want := range []string{
		"http://127.0.0.1:" + strconv.Itoa(health) + "/debug/state", "404",
		"https://127.0.0.1:" + strconv.Itoa(proxy), "Oathkeeper", "`clawker controlplane status`",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr %q lacks %q", stderr, want)
		}
	}
}

// TestDebugNothingAnswers: neither the proxy nor the health port answers.
func TestDebugNothingAnswers(t *testing.T) {
	health := deadPort(t)
	proxy := distinctDead(t, health)
	h := debugHome(t, health, proxy, distinctDead(t, health, proxy), false)
	code, _, stderr := runIn(h, "controlplane", "tree")
	if code != 1 || !strings.HasPrefix(stderr, "clawker: the control plane is not running") ||
		!strings.Contains(stderr, "https://127.0.0.1:"+strconv.Itoa(proxy)) || !strings.Contains(stderr, "http://127.0.0.1:"+strconv.Itoa(health)) ||
		!strings.Contains(stderr, "`clawker controlplane up`") || strings.Count(stderr, "\n") != 1 {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

// TestDebugProxyRefusesToken: the proxy answers 401 to the token (a
// control plane whose Hydra does not know it): the error names the URL and
// the restart that fixes a rotated key.
func TestDebugProxyRefusesToken(t *testing.T) {
	h := adminclienttest.NewHome(t)
	m := h.EnsureAuth(t)
	te := adminclienttest.ServeTokenEndpoint(t, m)
	proxy := serveProxy(t, m, nil, nil)
	health, asked := countingHealth(t, nil)
	writePorts(t, h, health, proxy.port, te.Port)
	code, stdout, stderr := runIn(h, "controlplane", "tree")
	if code != 1 || stdout != "" {
		t.Fatalf("exit %d, stdout %q", code, stdout)
	}
	url := "https://127.0.0.1:" + strconv.Itoa(proxy.port) + "/debug/actors"
	for _, want := range []string{url, "401", "clawker auth rotate", "clawker controlplane down"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr %q lacks %q", stderr, want)
		}
	}
	if *asked != 0 {
		t.Errorf("the health port was asked %d times after the proxy answered", *asked)
	}
}

// TestDebugProxyWithOtherCertificate: a service on oathkeeper_port whose
// certificate clawker's CA did not sign is refused before any token is
// asked for.
func TestDebugProxyWithOtherCertificate(t *testing.T) {
	h := adminclienttest.NewHome(t)
	m := h.EnsureAuth(t)
	te := adminclienttest.ServeTokenEndpoint(t, m)
	other := adminclienttest.NewHome(t).EnsureAuth(t)
	proxy := serveProxy(t, other, te, nil)
	health, _ := countingHealth(t, nil)
	writePorts(t, h, health, proxy.port, te.Port)
	code, _, stderr := runIn(h, "controlplane", "state")
	if code != 1 || !strings.Contains(stderr, "https://127.0.0.1:"+strconv.Itoa(proxy.port)) ||
		!strings.Contains(stderr, "not the control plane's") || !strings.Contains(stderr, "clawker auth rotate") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	if te.Issued() != 0 || len(proxy.seen()) != 0 {
		t.Errorf("tokens issued %d, proxy requests %d: want none", te.Issued(), len(proxy.seen()))
	}
}

// TestDebugProxyWithoutMaterial: a proxy answers but the CLI has no auth
// material: the fix is `clawker auth rotate`.
func TestDebugProxyWithoutMaterial(t *testing.T) {
	m := adminclienttest.NewHome(t).EnsureAuth(t)
	proxy := serveProxy(t, m, nil, nil)
	health, _ := countingHealth(t, nil)
	h := debugHome(t, health, proxy.port, distinctDead(t, health, proxy.port), false)
	code, _, stderr := runIn(h, "controlplane", "tree")
	if code != 1 || !strings.Contains(stderr, "no CLI auth material") || !strings.Contains(stderr, `"clawker auth rotate"`) {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

// TestDebugHydraUnreachable: the proxy answers but Hydra's public port
// does not: the error names the URL being read and the token endpoint.
func TestDebugHydraUnreachable(t *testing.T) {
	h := adminclienttest.NewHome(t)
	m := h.EnsureAuth(t)
	proxy := serveProxy(t, m, nil, nil)
	health, _ := countingHealth(t, nil)
	hydra := distinctDead(t, health, proxy.port)
	writePorts(t, h, health, proxy.port, hydra)
	code, _, stderr := runIn(h, "controlplane", "tree")
	for _, want := range []string{
		"https://127.0.0.1:" + strconv.Itoa(proxy.port) + "/debug/actors", "access token",
		"https://127.0.0.1:" + strconv.Itoa(hydra) + "/oauth2/token", "`clawker controlplane status`",
	} {
		if code != 1 || !strings.Contains(stderr, want) {
			t.Errorf("exit %d, stderr %q lacks %q", code, stderr, want)
		}
	}
	if len(proxy.seen()) != 0 {
		t.Errorf("the proxy got %d requests without a token", len(proxy.seen()))
	}
}
