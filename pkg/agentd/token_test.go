//go:build linux

package agentd

import (
	"crypto/ecdsa"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/oauth"
)

// testAudience is the token endpoint as Hydra names itself; the fake
// endpoint is reached at another URL, as clawkerd reaches Hydra on
// clawker-net.
const testAudience = "https://127.0.0.1:4444/oauth2/token"

// tokenEndpoint is a fake Hydra token endpoint for clawker-agent: TLS with
// the control plane's server certificate; it checks the form and the
// assertion (ES256 under the CLI's signing key, iss = sub = clawker-agent,
// aud testAudience, a jti it has not seen) as Hydra does, and issues
// "agent-token-<n>".
type tokenEndpoint struct {
	url string
	pub *ecdsa.PublicKey

	mu       sync.Mutex
	requests int
	issued   int
	jtis     map[string]bool
	// fail, when set, answers the n-th request (1-based) instead of
	// checking it: status and body; status 0 issues normally.
	fail func(n int) (int, string)
}

func serveTokenEndpoint(t *testing.T, m *certs.Material) *tokenEndpoint {
	t.Helper()
	e := &tokenEndpoint{pub: &m.SigningKey.PublicKey, jtis: map[string]bool{}}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(e.serve))
	// On 127.0.0.2, an address the certificate does not name (as the
	// control plane's clawker-net address need not be): clawkerd verifies
	// the endpoint as --server-name.
	if ln, err := net.Listen("tcp", "127.0.0.2:0"); err == nil {
		srv.Listener.Close()
		srv.Listener = ln
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{m.Server.Raw}, PrivateKey: m.ServerKey, Leaf: m.Server}}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	e.url = srv.URL + "/oauth2/token"
	return e
}

func (e *tokenEndpoint) serve(w http.ResponseWriter, r *http.Request) {
	answer := func(code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(v)
	}
	refuse := func(code int, err, desc string) {
		answer(code, map[string]string{"error": err, "error_description": desc})
	}
	e.mu.Lock()
	e.requests++
	n := e.requests
	fail := e.fail
	e.mu.Unlock()
	if fail != nil {
		if code, body := fail(n); code != 0 {
			w.WriteHeader(code)
			_, _ = io.WriteString(w, body)
			return
		}
	}
	if r.Method != http.MethodPost || r.URL.Path != "/oauth2/token" || r.ParseForm() != nil {
		refuse(400, "invalid_request", "not a token request")
		return
	}
	f := r.PostForm
	if f.Get("grant_type") != "client_credentials" || f.Get("client_assertion_type") != oauth.AssertionType ||
		f.Get("client_id") != oauth.ClientAgent || f.Get("scope") != oauth.ScopeAgentRegister {
		refuse(400, "invalid_request", fmt.Sprintf("unexpected form %v", f))
		return
	}
	tok, err := jwt.ParseSigned(f.Get("client_assertion"), []jose.SignatureAlgorithm{jose.ES256})
	var c jwt.Claims
	if err == nil {
		err = tok.Claims(e.pub, &c)
	}
	if err == nil {
		err = c.ValidateWithLeeway(jwt.Expected{Issuer: oauth.ClientAgent, Subject: oauth.ClientAgent, AnyAudience: jwt.Audience{testAudience}}, 0)
	}
	if err != nil {
		refuse(401, "invalid_client", err.Error())
		return
	}
	e.mu.Lock()
	seen := e.jtis[c.ID]
	e.jtis[c.ID] = true
	if !seen {
		e.issued++
	}
	issued := e.issued
	e.mu.Unlock()
	if seen {
		refuse(400, "jti_known", "The jti was already used.")
		return
	}
	answer(200, map[string]any{"access_token": fmt.Sprintf("agent-token-%d", issued), "token_type": "bearer",
		"expires_in": 3599, "scope": oauth.ScopeAgentRegister})
}

func (e *tokenEndpoint) counts() (requests, issued int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.requests, e.issued
}

// withToken writes a client assertion minted as `clawker run` mints it
// (agentrun.AgentAssertion: clawker-agent, aud testAudience, iat now)
// valid ttl from iat, and points e's config at it and at the endpoint.
func (e *testEnv) withToken(endpoint *tokenEndpoint, iat time.Time, ttl time.Duration) string {
	e.t.Helper()
	jws, err := oauth.Assertion{ClientID: oauth.ClientAgent, Audience: testAudience, IssuedAt: iat, TTL: ttl, ContainerID: testContainerID}.Sign(e.m.SigningKey)
	if err != nil {
		e.t.Fatal(err)
	}
	path := e.path("agent.assertion")
	if err := os.WriteFile(path, []byte(jws), 0o400); err != nil {
		e.t.Fatal(err)
	}
	e.cfg.AssertionFile, e.cfg.TokenURL, e.cfg.TokenAudience = path, endpoint.url, testAudience
	return path
}

func bearerOf(r registration) string {
	if len(r.auth) != 1 {
		return strings.Join(r.auth, ",")
	}
	return r.auth[0]
}

// clawkerd's constants are pkg/oauth's, which it does not import.
func TestTokenConstants(t *testing.T) {
	if clientAssertionType != oauth.AssertionType || agentScope != oauth.ScopeAgentRegister {
		t.Errorf("assertion type %q scope %q, want pkg/oauth's %q %q", clientAssertionType, agentScope, oauth.AssertionType, oauth.ScopeAgentRegister)
	}
}

// The assertion is exchanged once, before the first Register, which
// carries the token; after a reconnect (the binding exists) Register goes
// without one and nothing is exchanged again.
func TestAgentTokenExchangedOnce(t *testing.T) {
	e := newEnv(t)
	tokens := serveTokenEndpoint(t, e.m)
	path := e.withToken(tokens, time.Now(), 10*time.Minute)
	e.run()
	s1 := e.cp.nextSession(t)
	regs := e.cp.registrations()
	if len(regs) != 1 || bearerOf(regs[0]) != "Bearer agent-token-1" {
		t.Fatalf("registrations %+v, want one with Bearer agent-token-1", regs)
	}
	// Beside the token, the assertion it came from (its container claim
	// binds the token to this container).
	jws, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := regs[0].assertion; len(got) != 1 || got[0] != string(jws) {
		t.Errorf("the Register carried assertion %q, want the file's", got)
	}
	if assertionHeader != oauth.AgentAssertionHeader {
		t.Errorf("assertion header %q, want pkg/oauth's %q", assertionHeader, oauth.AgentAssertionHeader)
	}
	if ev := e.logs.waitEvent(t, "agent_token_obtained"); ev["scope"] != oauth.ScopeAgentRegister || ev["attempt"] != float64(1) {
		t.Errorf("agent_token_obtained = %v", ev)
	}
	if ev := e.logs.waitEvent(t, "registered"); ev["with_token"] != true {
		t.Errorf("registered = %v", ev)
	}
	if ev := e.logs.waitEvent(t, "clawkerd_starting"); ev["agent_token"] != true {
		t.Errorf("clawkerd_starting = %v", ev)
	}

	e.cp.stop()
	<-s1.done
	e.cp.start()
	e.cp.nextSession(t)
	regs = e.cp.registrations()
	if len(regs) < 2 {
		t.Fatalf("%d Register calls after the restart", len(regs))
	}
	for _, r := range regs[1:] {
		if len(r.auth) != 0 || len(r.assertion) != 0 {
			t.Errorf("a Register after the first successful one carried %q %q", r.auth, r.assertion)
		}
	}
	if req, issued := tokens.counts(); req != 1 || issued != 1 {
		t.Errorf("%d exchanges (%d issued), want exactly one", req, issued)
	}
	if n := len(e.logs.events(t, "agent_token_failed")); n != 0 {
		t.Errorf("%d agent_token_failed", n)
	}
}

// A failed exchange (the endpoint down, or refusing while the client is
// not registered yet) is logged and tried again with the backoff; no
// Register happens without the token meanwhile.
func TestAgentTokenExchangeRetried(t *testing.T) {
	e := newEnv(t)
	tokens := serveTokenEndpoint(t, e.m)
	tokens.fail = func(n int) (int, string) {
		switch n {
		case 1:
			return http.StatusBadGateway, "upstream down"
		case 2:
			return http.StatusUnauthorized, `{"error":"invalid_client","error_description":"Client authentication failed"}`
		}
		return 0, ""
	}
	e.withToken(tokens, time.Now(), 10*time.Minute)
	e.run()
	e.cp.nextSession(t)
	regs := e.cp.registrations()
	if len(regs) != 1 || bearerOf(regs[0]) != "Bearer agent-token-1" {
		t.Fatalf("registrations %+v, want one, with the token", regs)
	}
	failed := e.logs.events(t, "agent_token_failed")
	if len(failed) != 2 {
		t.Fatalf("%d agent_token_failed, want 2: %v", len(failed), failed)
	}
	if msg, _ := failed[1]["error"].(string); !strings.Contains(msg, "invalid_client") || failed[1]["attempt"] != float64(2) ||
		failed[1]["level"] != "WARN" || failed[1]["assertion_expires_in"] == nil {
		t.Errorf("second failure = %v", failed[1])
	}
	if ev := e.logs.waitEvent(t, "agent_token_obtained"); ev["attempt"] != float64(3) {
		t.Errorf("agent_token_obtained = %v", ev)
	}
}

// Past the assertion's exp clawkerd gives up on the token, says so, and
// registers without one (an existing binding is accepted so).
func TestAgentTokenAssertionExpired(t *testing.T) {
	t.Run("before the first try", func(t *testing.T) {
		e := newEnv(t)
		tokens := serveTokenEndpoint(t, e.m)
		e.withToken(tokens, time.Now().Add(-11*time.Minute), 10*time.Minute)
		e.run()
		e.cp.nextSession(t)
		if regs := e.cp.registrations(); len(regs) != 1 || len(regs[0].auth) != 0 {
			t.Fatalf("registrations %+v, want one without a token", regs)
		}
		ev := e.logs.waitEvent(t, "agent_token_abandoned")
		if ev["reason"] != "assertion_expired" || ev["level"] != "ERROR" || ev["attempts"] != float64(0) {
			t.Errorf("agent_token_abandoned = %v", ev)
		}
		if req, _ := tokens.counts(); req != 0 {
			t.Errorf("%d exchanges of an expired assertion", req)
		}
	})
	t.Run("while retrying", func(t *testing.T) {
		e := newEnv(t)
		tokens := serveTokenEndpoint(t, e.m)
		tokens.fail = func(int) (int, string) { return http.StatusServiceUnavailable, "down" }
		e.withToken(tokens, time.Now(), 2*time.Second)
		e.run()
		e.cp.nextSession(t)
		if regs := e.cp.registrations(); len(regs) != 1 || len(regs[0].auth) != 0 {
			t.Fatalf("registrations %+v, want one without a token", regs)
		}
		ev := e.logs.waitEvent(t, "agent_token_abandoned")
		if ev["reason"] != "assertion_expired" || ev["attempts"].(float64) < 1 {
			t.Errorf("agent_token_abandoned = %v", ev)
		}
		if len(e.logs.events(t, "agent_token_failed")) == 0 {
			t.Error("no agent_token_failed before giving up")
		}
		if abandoned, registered := e.logs.index(t, "agent_token_abandoned"), e.logs.index(t, "registered"); registered < abandoned {
			t.Errorf("registered (line %d) before giving up on the token (line %d)", registered, abandoned)
		}
	})
}

// An assertion the endpoint has seen (clawkerd started again in the same
// container) is not tried again: clawkerd registers without a token at
// once, as a restarted agent with an existing binding must.
func TestAgentTokenAssertionUsed(t *testing.T) {
	e := newEnv(t)
	tokens := serveTokenEndpoint(t, e.m)
	e.withToken(tokens, time.Now(), 10*time.Minute)
	first := e.run()
	e.cp.nextSession(t)
	first.cancel()
	first.wait(t)

	e.logs = &logSink{}
	e.cfg.Logger = NewLogger(e.logs)
	e.run()
	e.cp.nextSession(t)
	regs := e.cp.registrations()
	if len(regs) != 2 || bearerOf(regs[0]) != "Bearer agent-token-1" || len(regs[1].auth) != 0 {
		t.Fatalf("registrations %+v: want the first with the token, the second without", regs)
	}
	ev := e.logs.waitEvent(t, "agent_token_abandoned")
	if ev["reason"] != "assertion_used" || !strings.Contains(ev["error"].(string), "jti_known") {
		t.Errorf("agent_token_abandoned = %v", ev)
	}
	if req, issued := tokens.counts(); req != 2 || issued != 1 {
		t.Errorf("%d requests, %d issued; want 2 and 1", req, issued)
	}
}

// Without --assertion nothing changes: no exchange, no authorization on
// Register.
func TestNoAssertionNoToken(t *testing.T) {
	e := newEnv(t)
	e.run()
	e.cp.nextSession(t)
	if regs := e.cp.registrations(); len(regs) != 1 || len(regs[0].auth) != 0 {
		t.Fatalf("registrations %+v", regs)
	}
	if ev := e.logs.waitEvent(t, "clawkerd_starting"); ev["agent_token"] != false {
		t.Errorf("clawkerd_starting = %v", ev)
	}
	for _, ev := range []string{"agent_token_obtained", "agent_token_failed", "agent_token_abandoned"} {
		if n := len(e.logs.events(t, ev)); n != 0 {
			t.Errorf("%d %s without an assertion", n, ev)
		}
	}
}

func TestParseArgsToken(t *testing.T) {
	env := map[string]string{
		"CLAWKERD_ASSERTION": "/clawker/agent.assertion", "CLAWKERD_TOKEN_URL": "https://172.30.0.202:4444/oauth2/token",
		"CLAWKERD_TOKEN_AUDIENCE": testAudience,
	}
	cfg, _, err := ParseArgs(fullArgs, envMap(env))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AssertionFile != "/clawker/agent.assertion" || cfg.TokenURL != "https://172.30.0.202:4444/oauth2/token" || cfg.TokenAudience != testAudience {
		t.Errorf("cfg = %+v", cfg)
	}
	cfg, _, err = ParseArgs(append(append([]string{}, fullArgs...), "--token-url", "https://cp:1/t"), envMap(env))
	if err != nil || cfg.TokenURL != "https://cp:1/t" {
		t.Errorf("flag over env: %q %v", cfg.TokenURL, err)
	}

	for _, tc := range []struct {
		name string
		args []string
		flag string
	}{
		{"url without assertion", []string{"--token-url", "https://cp:4444/oauth2/token"}, "assertion"},
		{"audience without assertion", []string{"--token-audience", testAudience}, "assertion"},
		{"assertion without url", []string{"--assertion", "/a/x"}, "token-url"},
		{"plain http", []string{"--assertion", "/a/x", "--token-url", "http://cp:4444/oauth2/token"}, "token-url"},
		{"not a URL", []string{"--assertion", "/a/x", "--token-url", "cp:4444"}, "token-url"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseArgs(append(append([]string{}, fullArgs...), tc.args...), envMap(nil))
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Flag != tc.flag || !strings.Contains(err.Error(), settingFor(tc.flag).env) {
				t.Errorf("err = %v, want a ConfigError naming --%s", err, tc.flag)
			}
		})
	}
}

// An unreadable or malformed assertion, or one addressed elsewhere, is a
// configuration error found before anything is dialled.
func TestRunTokenConfigErrors(t *testing.T) {
	e := newEnv(t)
	tokens := serveTokenEndpoint(t, e.m)
	good := e.withToken(tokens, time.Now(), 10*time.Minute)
	garbage := e.path("garbage")
	if err := os.WriteFile(garbage, []byte("not.a-jwt"), 0o400); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"missing file", func(c *Config) { c.AssertionFile = e.path("nope") }, "--assertion"},
		{"not a JWS", func(c *Config) { c.AssertionFile = garbage }, "not a client assertion"},
		{"another audience", func(c *Config) { c.AssertionFile = good; c.TokenAudience = "https://elsewhere/oauth2/token" }, "--token-audience"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.cfg
			tc.mutate(&cfg)
			sink := &logSink{}
			cfg.Logger = NewLogger(sink)
			if code := Run(t.Context(), cfg, nil); code != ExitConfig {
				t.Fatalf("exit code %d, want %d", code, ExitConfig)
			}
			if ev := sink.events(t, "config_invalid"); len(ev) != 1 || !strings.Contains(ev[0]["error"].(string), tc.want) {
				t.Errorf("config_invalid = %v, want it to mention %s", ev, tc.want)
			}
		})
	}
	if req, _ := tokens.counts(); req != 0 || len(e.cp.registrations()) != 0 {
		t.Errorf("%d exchanges, %d Register calls with a bad config", req, len(e.cp.registrations()))
	}
}

func TestParseAssertion(t *testing.T) {
	m := newEnv(t).m
	iat := time.Unix(1_800_000_000, 0)
	jws, err := oauth.Assertion{ClientID: oauth.ClientAgent, Audience: testAudience, IssuedAt: iat, TTL: 10 * time.Minute}.Sign(m.SigningKey)
	if err != nil {
		t.Fatal(err)
	}
	a, err := parseAssertion([]byte(jws + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a.jws != jws || a.clientID != oauth.ClientAgent || len(a.audience) != 1 || a.audience[0] != testAudience || !a.exp.Equal(iat.Add(10*time.Minute)) {
		t.Errorf("parsed %+v", a)
	}
	enc := func(claims string) string {
		return "eyJhbGciOiJFUzI1NiJ9." + base64.RawURLEncoding.EncodeToString([]byte(claims)) + ".c2ln"
	}
	if a, err := parseAssertion([]byte(enc(`{"iss":"c","sub":"c","aud":["x","y"],"exp":1900000000}`))); err != nil || len(a.audience) != 2 {
		t.Errorf("aud as a list: %+v %v", a, err)
	}
	for _, bad := range []string{
		"", "a.b", "a..c", enc(`{"iss":"c","sub":"c","aud":"x"}`), enc(`{"iss":"c","sub":"d","aud":"x","exp":1}`),
		enc(`{"iss":"c","sub":"c","exp":1}`), enc(`not json`), "a.!!!.c",
	} {
		if _, err := parseAssertion([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
