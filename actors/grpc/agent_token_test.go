package grpc_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	cpgrpc "github.com/clawker/clawker-cp/actors/grpc"
	"github.com/clawker/clawker-cp/actors/registry"
	"github.com/clawker/clawker-cp/pkg/adminclient/adminclienttest"
	"github.com/clawker/clawker-cp/pkg/agentdb"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/oauth"
	"github.com/clawker/clawker-cp/pkg/oauth/hydratest"
	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

// fakeRegistry is a real actor answering Get and Register from a map, as
// the registry would (a second certificate for a bound container aside).
type fakeRegistry struct {
	mu        sync.Mutex
	rows      map[string]agentdb.Agent // by key
	registers int
	gets      int
	dbErr     error // when set, Get and Register answer it
}

func (r *fakeRegistry) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *registry.Get:
		r.mu.Lock()
		defer r.mu.Unlock()
		r.gets++
		if r.dbErr != nil {
			ctx.Respond(&registry.GetResult{Err: r.dbErr})
			return
		}
		a, ok := r.rows[m.Key]
		if !ok {
			ctx.Respond(&registry.GetResult{Err: fmt.Errorf("%w: %s", agentdb.ErrNotFound, m.Key)})
			return
		}
		ctx.Respond(&registry.GetResult{Agent: a})
	case *registry.Register:
		r.mu.Lock()
		defer r.mu.Unlock()
		r.registers++
		if r.dbErr != nil {
			ctx.Respond(&registry.RegisterResult{Err: r.dbErr})
			return
		}
		a := m.Agent
		a.Key = agentdb.Key(a.Thumbprint, a.ContainerID)
		a.LeafThumbprint = ""
		old, exists := r.rows[a.Key]
		if !exists && m.MayCreate != nil {
			// As the registry: asked only for a new binding, off the lock.
			r.mu.Unlock()
			err := m.MayCreate(context.Background())
			r.mu.Lock()
			if err != nil {
				ctx.Respond(&registry.RegisterResult{Err: err})
				return
			}
		}
		switch {
		case exists:
			a = old
		default:
			r.rows[a.Key] = a
		}
		ctx.Respond(&registry.RegisterResult{Agent: a, Created: !exists})
	}
}

func (r *fakeRegistry) counts() (rows, registers int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.rows), r.registers
}

// requests is how many Get and Register requests reached the registry.
func (r *fakeRegistry) requests() (gets, registers int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gets, r.registers
}

// fakeIntrospector answers from a table of tokens; unknown tokens are
// inactive; down makes every call fail (Hydra unreachable).
type fakeIntrospector struct {
	mu     sync.Mutex
	tokens map[string]*oauth.Introspection
	down   bool
	calls  int
}

func (f *fakeIntrospector) Introspect(_ context.Context, token string) (*oauth.Introspection, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.down {
		return nil, errors.New("introspection endpoint http://127.0.0.1:4445/admin/oauth2/introspect: connection refused")
	}
	if in, ok := f.tokens[token]; ok {
		return in, nil
	}
	return &oauth.Introspection{Active: false}, nil
}

func (f *fakeIntrospector) setDown(down bool) {
	f.mu.Lock()
	f.down = down
	f.mu.Unlock()
}

func activeToken(client, scope string) *oauth.Introspection {
	return &oauth.Introspection{Active: true, ClientID: client, Subject: client, Scope: scope, TokenUse: "access_token",
		TokenType: "Bearer", Expiry: time.Now().Add(time.Hour).Unix(), IssuedAt: time.Now().Unix()}
}

// agentFixture is the real grpc actor's AgentService wired to a fake
// registry and, unless nil, an introspector.
type agentFixture struct {
	m       *certs.Material
	addr    string
	reg     *fakeRegistry
	logs    *observer.ObservedLogs
	authDir string // the CP's server bundle (its signing.jwk.json verifies assertions)
}

func startAgentService(t *testing.T, in cpgrpc.TokenIntrospector) *agentFixture {
	t.Helper()
	return startAgentServiceWith(t, func(c *cpgrpc.Config) { c.Introspector = in })
}

// startAgentServiceWith starts the servers over a fake registry, with
// adjust applied to their config.
func startAgentServiceWith(t *testing.T, adjust func(*cpgrpc.Config)) *agentFixture {
	t.Helper()
	home := adminclienttest.NewHome(t)
	m := home.EnsureAuth(t)
	paths := home.Paths(t)
	if err := m.WriteServerBundle(paths.CPAuthDir); err != nil {
		t.Fatal(err)
	}
	ports := cptest.FreePorts(t, 2)
	sys := newTestSystem(t)
	reg := &fakeRegistry{rows: map[string]agentdb.Agent{}}
	regPID := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return reg }))
	core, logs := observer.New(zapcore.DebugLevel)
	cfg := cpgrpc.Config{
		BindHost:  "127.0.0.1",
		AgentPort: ports[0], AdminPort: ports[1], AuthDir: paths.CPAuthDir, Registry: regPID,
		Heartbeat: time.Second, RequestTimeout: requestTimeout,
		Log: zap.New(core),
	}
	adjust(&cfg)
	spawnGRPC(t, sys, cfg)
	return &agentFixture{m: m, addr: cptest.Loopback(ports[0]), reg: reg, logs: logs, authDir: paths.CPAuthDir}
}

// agent is a client with a fresh agent certificate for project p.
func (f *agentFixture) agent(t *testing.T, name string) (agentv1.AgentServiceClient, certs.AgentIdentity) {
	t.Helper()
	id := certs.AgentIdentity{Project: "p", Agent: name, ContainerID: cptest.RandomContainerID(t)}
	cfg, _ := cptest.AgentTLSConfig(t, f.m, id)
	return agentv1.NewAgentServiceClient(cptest.DialGRPC(t, f.addr, cfg)), id
}

// register calls Register as id, with "authorization: <auth>" unless "".
func register(t *testing.T, c agentv1.AgentServiceClient, id certs.AgentIdentity, auth string) (*agentv1.RegisterResponse, error) {
	t.Helper()
	return registerWith(t, c, id, auth, "")
}

// registerWith is register with the client assertion the token came from
// (clawker-agent-assertion) unless "".
func registerWith(t *testing.T, c agentv1.AgentServiceClient, id certs.AgentIdentity, auth, assertion string) (*agentv1.RegisterResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if auth != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", auth)
	}
	if assertion != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, oauth.AgentAssertionHeader, assertion)
	}
	return c.Register(ctx, &agentv1.RegisterRequest{Project: id.Project, AgentName: id.Agent})
}

// assertion is a clawker-agent client assertion for containerID, as
// `clawker run` mints it (the home's signing key), issued at iat.
func (f *agentFixture) assertion(t *testing.T, containerID string, iat time.Time) string {
	t.Helper()
	jws, err := oauth.Assertion{ClientID: oauth.ClientAgent, Audience: "https://127.0.0.1:4444/oauth2/token", IssuedAt: iat,
		TTL: 10 * time.Minute, ContainerID: containerID}.Sign(f.m.SigningKey)
	if err != nil {
		t.Fatal(err)
	}
	return jws
}

// refusedFor is the register_failed line about agent name ("p.<name>").
func (f *agentFixture) refusedFor(t *testing.T, name string) map[string]any {
	t.Helper()
	for _, e := range f.logs.FilterField(zap.String("event", "register_failed")).All() {
		if ctx := e.ContextMap(); ctx["agent"] == "p."+name {
			return ctx
		}
	}
	t.Fatalf("no register_failed line for p.%s", name)
	return nil
}

// With Hydra (an introspector), a new binding needs a clawker-agent
// token; re-registering an existing one does not.
func TestRegisterAgentToken(t *testing.T) {
	in := &fakeIntrospector{tokens: map[string]*oauth.Introspection{
		"agent-token":    activeToken(oauth.ClientAgent, oauth.ScopeAgentRegister),
		"admin-token":    activeToken(oauth.ClientCLI, oauth.ScopeAdmin),
		"expired-token":  {Active: true, ClientID: oauth.ClientAgent, Scope: oauth.ScopeAgentRegister, TokenUse: "access_token", Expiry: time.Now().Add(-time.Minute).Unix()},
		"refresh-token":  {Active: true, ClientID: oauth.ClientAgent, Scope: oauth.ScopeAgentRegister, TokenUse: "refresh_token"},
		"inactive-token": {Active: false},
	}}
	f := startAgentService(t, in)

	t.Run("new binding without a token", func(t *testing.T) {
		c, id := f.agent(t, "tokenless")
		_, err := register(t, c, id, "")
		wantCode(t, err, codes.PermissionDenied, oauth.ClientAgent, oauth.ScopeAgentRegister)
		if l := f.refusedFor(t, "tokenless"); l["reason"] != "agent_token_missing" || l["container_id"] != id.ContainerID {
			t.Errorf("register_failed = %v", l)
		}
	})
	t.Run("new binding with a clawker-agent token", func(t *testing.T) {
		c, id := f.agent(t, "good")
		_, before := f.reg.requests()
		resp, err := registerWith(t, c, id, "Bearer agent-token", f.assertion(t, id.ContainerID, time.Now()))
		if err != nil {
			t.Fatal(err)
		}
		// The lookup, the token and the insert: one registry request.
		if _, after := f.reg.requests(); after != before+1 {
			t.Errorf("a new binding took %d registry requests, want 1", after-before)
		}
		if l := f.logs.FilterField(zap.String("event", "agent_registered")).FilterField(zap.String("agent", "p.good")).All(); len(l) != 1 ||
			l[0].ContextMap()["created"] != true {
			t.Errorf("agent_registered = %v", l)
		}
		// Registering again (a reconnect, a control plane restart whose
		// Hydra forgot every token): no token needed, none checked, and
		// one registry request.
		calls := in.calls
		gets, registers := f.reg.requests()
		resp2, err := register(t, c, id, "")
		if err != nil {
			t.Fatalf("re-register without a token: %v", err)
		}
		if resp2.GetAgentKey() != resp.GetAgentKey() || in.calls != calls {
			t.Errorf("re-register: key %s (first %s), %d introspections", resp2.GetAgentKey(), resp.GetAgentKey(), in.calls-calls)
		}
		if g, r := f.reg.requests(); g != gets || r != registers+1 {
			t.Errorf("re-register asked the registry %d Gets and %d Registers, want 0 and 1", g-gets, r-registers)
		}
		// A stale token on a re-registration is not even looked at.
		if _, err := register(t, c, id, "Bearer inactive-token"); err != nil {
			t.Errorf("re-register with a stale token: %v", err)
		}
		if in.calls != calls {
			t.Errorf("a re-registration's token was introspected %d times", in.calls-calls)
		}
	})
	for _, tc := range []struct {
		name, auth, why string
	}{
		{"admin", "Bearer admin-token", "scope_missing"},
		{"inactive", "Bearer inactive-token", "token_inactive"},
		{"expired", "Bearer expired-token", "token_expired"},
		{"refresh", "Bearer refresh-token", "not_access_token"},
		{"malformed", "Bearer not a token", "token_malformed"},
		{"basic", "Basic YWdlbnQ6c2VjcmV0", "token_malformed"},
	} {
		t.Run("new binding with a refused token: "+tc.name, func(t *testing.T) {
			c, id := f.agent(t, tc.name)
			_, err := register(t, c, id, tc.auth)
			wantCode(t, err, codes.PermissionDenied, tc.why)
			if l := f.refusedFor(t, tc.name); l["reason"] != "agent_token_invalid" {
				t.Errorf("register_failed = %v", l)
			}
		})
	}
	// The token is bound to its container: the assertion it was exchanged
	// for must name the certificate's container and have been valid when
	// the token was issued.
	for _, tc := range []struct {
		name      string
		assertion func(id certs.AgentIdentity) string
		why       string
	}{
		{"another container's token", func(certs.AgentIdentity) string {
			return f.assertion(t, cptest.RandomContainerID(t), time.Now())
		}, "minted for container"},
		{"no assertion", func(certs.AgentIdentity) string { return "" }, "needs, beside the token"},
		{"an assertion of another key", func(id certs.AgentIdentity) string {
			other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			jws, err := oauth.Assertion{ClientID: oauth.ClientAgent, Audience: "https://127.0.0.1:4444/oauth2/token", ContainerID: id.ContainerID}.Sign(other)
			if err != nil {
				t.Fatal(err)
			}
			return jws
		}, "not the CLI's signing key"},
		{"an assertion older than the token", func(id certs.AgentIdentity) string {
			return f.assertion(t, id.ContainerID, time.Now().Add(-time.Hour))
		}, "not exchanged for that assertion"},
		{"a clawker-cli assertion", func(id certs.AgentIdentity) string {
			jws, err := oauth.Assertion{ClientID: oauth.ClientCLI, Audience: "https://127.0.0.1:4444/oauth2/token", ContainerID: id.ContainerID}.Sign(f.m.SigningKey)
			if err != nil {
				t.Fatal(err)
			}
			return jws
		}, "want clawker-agent"},
	} {
		t.Run("new binding with a good token: "+tc.name, func(t *testing.T) {
			name := strings.ReplaceAll(strings.ReplaceAll(tc.name, " ", "-"), "'", "")
			c, id := f.agent(t, name)
			_, err := registerWith(t, c, id, "Bearer agent-token", tc.assertion(id))
			wantCode(t, err, codes.PermissionDenied, tc.why)
			if l := f.refusedFor(t, name); l["reason"] != "token_container_mismatch" || l["container_id"] != id.ContainerID {
				t.Errorf("register_failed = %v", l)
			}
		})
	}
	t.Run("introspection down", func(t *testing.T) {
		in.setDown(true)
		defer in.setDown(false)
		c, id := f.agent(t, "unlucky")
		_, err := register(t, c, id, "Bearer agent-token")
		wantCode(t, err, codes.Unavailable, "retry")
		if l := f.refusedFor(t, "unlucky"); l["reason"] != "introspection_failed" {
			t.Errorf("register_failed = %v", l)
		}
		// clawkerd retries; Hydra is back.
		in.setDown(false)
		if _, err := registerWith(t, c, id, "Bearer agent-token", f.assertion(t, id.ContainerID, time.Now())); err != nil {
			t.Errorf("after Hydra came back: %v", err)
		}
	})
	t.Run("registry down", func(t *testing.T) {
		f.reg.mu.Lock()
		f.reg.dbErr = errors.New("database is locked")
		f.reg.mu.Unlock()
		defer func() { f.reg.mu.Lock(); f.reg.dbErr = nil; f.reg.mu.Unlock() }()
		c, id := f.agent(t, "later")
		_, err := register(t, c, id, "Bearer agent-token")
		wantCode(t, err, codes.Unavailable)
	})

	// Only the two good agents made bindings: a refused token's request
	// wrote nothing; no RPC asked a Get.
	if rows, _ := f.reg.counts(); rows != 2 {
		t.Errorf("%d bindings, want 2 (good, unlucky)", rows)
	}
	if gets, _ := f.reg.requests(); gets != 0 {
		t.Errorf("%d registry Gets for Register RPCs, want 0", gets)
	}
	for _, e := range f.logs.All() {
		if strings.Contains(fmt.Sprint(e.ContextMap()), "agent-token") {
			t.Errorf("a token was logged: %v", e.ContextMap())
		}
	}
}

// Without Hydra (no introspector) nothing changes: a certificate alone
// makes a binding, and a token sent anyway is ignored.
func TestRegisterWithoutIntrospector(t *testing.T) {
	f := startAgentService(t, nil)
	c, id := f.agent(t, "plain")
	if _, err := register(t, c, id, ""); err != nil {
		t.Fatal(err)
	}
	c, id = f.agent(t, "extra")
	if _, err := register(t, c, id, "Bearer whatever"); err != nil {
		t.Fatal(err)
	}
	if rows, _ := f.reg.counts(); rows != 2 {
		t.Errorf("%d bindings", rows)
	}
}

// With a real Hydra: a clawker-agent token (client_credentials, the
// CLI's signing key) creates a binding; the CLI's admin token does not.
func TestRegisterAgentTokenWithHydra(t *testing.T) {
	e := startHydraEnv(t, hydratest.Options{})
	f := startAgentService(t, e.intro)
	token := func(id, scope string) string {
		tok, err := e.source(t, id, e.m.SigningKey, scope).Token(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return "Bearer " + tok.AccessToken
	}
	// Two homes: f's CA signs the agent certificates, e's signing key is
	// the JWKS of Hydra's clients; the service only asks Hydra.
	c, id := f.agent(t, "admin")
	_, err := register(t, c, id, token(oauth.ClientCLI, oauth.ScopeAdmin))
	wantCode(t, err, codes.PermissionDenied, "scope_missing")
	// The service verifies assertions with the JWKS Hydra's clients hold.
	jwks, err := json.Marshal(e.m.SigningJWK)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.authDir, certs.SigningJWKSFile), jwks, 0o644); err != nil {
		t.Fatal(err)
	}
	// A clawker-agent token for container A, with its assertion, presented
	// with B's certificate: refused.
	agentToken := func(containerID string) (string, string) {
		ts, err := oauth.NewTokenSource(oauth.Config{TokenURL: e.hydra.TokenURL, ClientID: oauth.ClientAgent, Scopes: []string{oauth.ScopeAgentRegister},
			Key: e.m.SigningKey, RootCAs: e.hydra.CA, ServerName: e.hydra.ServerName, ContainerID: containerID})
		if err != nil {
			t.Fatal(err)
		}
		tok, err := ts.Token(context.Background())
		if err != nil {
			t.Fatalf("a clawker-agent token from Hydra: %v\nhydra:\n%s", err, e.hydra.Tail(20))
		}
		return "Bearer " + tok.AccessToken, tok.Assertion
	}
	c, id = f.agent(t, "borrower")
	auth, assertion := agentToken(cptest.RandomContainerID(t))
	_, err = registerWith(t, c, id, auth, assertion)
	wantCode(t, err, codes.PermissionDenied, "minted for container")
	if l := f.refusedFor(t, "borrower"); l["reason"] != "token_container_mismatch" {
		t.Errorf("register_failed = %v", l)
	}
	c, id = f.agent(t, "agent")
	auth, assertion = agentToken(id.ContainerID)
	if _, err := registerWith(t, c, id, auth, assertion); err != nil {
		t.Fatalf("Register with a clawker-agent token from Hydra: %v\nhydra:\n%s", err, e.hydra.Tail(20))
	}
	if rows, _ := f.reg.counts(); rows != 1 {
		t.Errorf("%d bindings, want 1", rows)
	}
}
