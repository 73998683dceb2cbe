package ory_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/oauth"

	"github.com/clawker/clawker-cp/pkg/ory"
	"github.com/clawker/clawker-cp/pkg/ory/orytest"
)

// syncBuf collects the servers' prefixed output.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startServer prepares and starts one real server and waits until ready.
func startServer(t *testing.T, bin string, cfg ory.Config, name string, out *syncBuf) *ory.Process {
	t.Helper()
	spec, err := cfg.Prepare(name)
	if err != nil {
		t.Fatal(err)
	}
	probe, err := cfg.Probe(name)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ory.StartProcess(ory.ProcessConfig{
		Name: name, Path: filepath.Join(bin, name), Args: spec.Args, Env: ory.OfflineEnv, Output: out, Ready: probe,
		User: cfg.User,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(5 * time.Second)
		spec.Files.Remove()
		if t.Failed() {
			t.Logf("%s's output:\n%s", name, out.String())
		}
	})
	begin := time.Now()
	if err := p.WaitReady(context.Background(), 30*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	t.Logf("%s ready in %s", name, time.Since(begin))
	return p
}

func TestRealHydraRegistersClients(t *testing.T) {
	t.Parallel()
	bin := orytest.BinDir(t, ory.Hydra)
	env := orytest.NewEnv(t)
	out := &syncBuf{}
	startServer(t, bin, env.Config, ory.Hydra, out)
	admin := ory.NewAdmin(env.Config.HydraAdminURL())
	ctx := context.Background()
	if err := admin.RegisterClawkerClients(ctx, env.Material.SigningJWK); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	// A second registration replaces, it does not fail.
	if err := admin.RegisterClawkerClients(ctx, env.Material.SigningJWK); err != nil {
		t.Fatalf("upsert: %v", err)
	}
	for _, want := range ory.ClawkerClients(env.Material.SigningJWK) {
		got, err := admin.GetClient(ctx, want.ClientID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Scope != want.Scope || got.TokenEndpointAuthMethod != "private_key_jwt" || got.TokenEndpointAuthSigningAlg != "ES256" ||
			strings.Join(got.GrantTypes, ",") != "client_credentials" || got.JWKS == nil || len(got.JWKS.Keys) != 1 ||
			got.JWKS.Keys[0].Kid != env.Material.SigningJWK.Keys[0].Kid {
			t.Errorf("client %s read back as %+v", want.ClientID, got)
		}
	}
}

func TestRealKratosStarts(t *testing.T) {
	t.Parallel()
	bin := orytest.BinDir(t, ory.Kratos)
	env := orytest.NewEnv(t)
	out := &syncBuf{}
	startServer(t, bin, env.Config, ory.Kratos, out)
	if strings.Contains(out.String(), `"level":"warning"`) {
		t.Errorf("kratos warns about its configuration:\n%s", out.String())
	}
}

// TestRealStack runs the three servers as the auth actor does and checks
// the whole path: clients registered in Hydra, a token exchanged over TLS
// with a client assertion, and Oathkeeper letting an admin token through to
// the internal debug listener's /debug/* while refusing the rest.
func TestRealStack(t *testing.T) {
	t.Parallel()
	bin := orytest.BinDir(t)
	env := orytest.NewEnv(t)
	cfg := env.Config
	out := &syncBuf{}

	// The internal debug listener's stand-in.
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.Ports.Debug)))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"path":%q,"auth":%q}`, r.URL.Path, r.Header.Get("Authorization"))
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })

	begin := time.Now()
	for _, n := range ory.Names {
		startServer(t, bin, cfg, n, out)
	}
	ctx := context.Background()
	if err := ory.NewAdmin(cfg.HydraAdminURL()).RegisterClawkerClients(ctx, env.Material.SigningJWK); err != nil {
		t.Fatal(err)
	}
	t.Logf("stack ready and clients registered in %s", time.Since(begin))

	pool := x509.NewCertPool()
	pool.AddCert(env.Material.CA)
	token := func(client, scope string) string {
		ts, err := oauth.NewTokenSource(oauth.Config{
			TokenURL: cfg.TokenURL(), ClientID: client, Scopes: []string{scope}, Key: env.Material.SigningKey, RootCAs: pool,
		})
		if err != nil {
			t.Fatal(err)
		}
		tok, err := ts.Token(ctx)
		if err != nil {
			t.Fatalf("token for %s: %v\n%s", client, err, out.String())
		}
		return tok.AccessToken
	}
	admin := token(ory.ClientCLI, ory.ScopeAdmin)
	agent := token(ory.ClientAgent, ory.ScopeAgentRegister)

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: pool}}}
	get := func(path, tok string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, cfg.OathkeeperProxyURL()+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	for _, p := range ory.ProtectedPaths {
		if code, body := get(p, admin); code != 200 || !strings.Contains(body, `"path":"`+p+`"`) {
			t.Errorf("GET %s with an admin token: %d %s", p, code, body)
		}
		if code, body := get(p, agent); code != http.StatusForbidden && code != http.StatusUnauthorized {
			t.Errorf("GET %s with an agent token: %d %s", p, code, body)
		}
		if code, body := get(p, ""); code != http.StatusUnauthorized {
			t.Errorf("GET %s without a token: %d %s", p, code, body)
		}
		if code, body := get(p, "not-a-token"); code != http.StatusUnauthorized {
			t.Errorf("GET %s with a bogus token: %d %s", p, code, body)
		}
	}
	if code, body := get("/healthz", admin); code != http.StatusNotFound {
		t.Errorf("GET /healthz through the proxy (no rule): %d %s", code, body)
	}
}
