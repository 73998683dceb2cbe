package grpc_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	ggrpc "google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cpgrpc "github.com/clawker/clawker-cp/actors/grpc"
	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/oauth"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// TestAdminScopesCoverEveryMethod walks the AdminService descriptor: a
// new RPC in admin.proto without a scope-map entry fails here (and is
// refused at run time), and so does a map entry for a method that no
// longer exists. The CLI's idea of which methods are public must agree.
func TestAdminScopesCoverEveryMethod(t *testing.T) {
	scopes := cpgrpc.AdminScopes()
	svc := adminv1.File_admin_v1_admin_proto.Services().ByName("AdminService")
	if svc == nil {
		t.Fatal("AdminService not in admin.proto's descriptor")
	}
	seen := map[string]bool{}
	for i := range svc.Methods().Len() {
		m := svc.Methods().Get(i)
		full := "/" + string(svc.FullName()) + "/" + string(m.Name())
		seen[full] = true
		scope, ok := scopes[full]
		if !ok {
			t.Errorf("%s has no entry in the AdminService scope map (actors/grpc/authz.go): add one, %q or ScopePublic", full, oauth.ScopeAdmin)
			continue
		}
		if public := scope == cpgrpc.ScopePublic; public != adminclient.IsPublic(full) {
			t.Errorf("%s: public on the CP = %v, adminclient.IsPublic = %v", full, public, adminclient.IsPublic(full))
		}
	}
	for full := range scopes {
		if !seen[full] {
			t.Errorf("scope map entry %s matches no AdminService method", full)
		}
	}
	if scopes[adminv1.AdminService_GetSystemTime_FullMethodName] != cpgrpc.ScopePublic {
		t.Error("GetSystemTime must stay public: the clock-sync gate calls it before a token can be had")
	}
	for full, scope := range scopes {
		if scope != cpgrpc.ScopePublic && scope != oauth.ScopeAdmin {
			t.Errorf("%s requires %q; every non-public AdminService method requires %q", full, scope, oauth.ScopeAdmin)
		}
	}
}

// fakeIntrospection is Hydra's introspection endpoint with a table of
// tokens.
type fakeIntrospection struct {
	srv   *httptest.Server
	calls atomic.Int64
	delay atomic.Int64 // nanoseconds
	stop  chan struct{}
	mu    sync.Mutex
	table map[string]map[string]any
}

func newFakeIntrospection(t *testing.T) *fakeIntrospection {
	f := &fakeIntrospection{table: map[string]map[string]any{}, stop: make(chan struct{})}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.calls.Add(1)
		if d := time.Duration(f.delay.Load()); d > 0 {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			case <-f.stop:
				return
			}
		}
		if r.URL.Path != oauth.IntrospectPath || r.ParseForm() != nil {
			http.Error(w, "bad request", 400)
			return
		}
		tok := r.PostForm.Get("token")
		if tok == "explode" {
			http.Error(w, `{"error":"server_error"}`, 500)
			return
		}
		f.mu.Lock()
		ans, ok := f.table[tok]
		f.mu.Unlock()
		if !ok {
			ans = map[string]any{"active": false}
		}
		_ = json.NewEncoder(w).Encode(ans)
	}))
	t.Cleanup(f.srv.Close)
	t.Cleanup(func() { close(f.stop) }) // runs first: unblocks delayed handlers
	return f
}

func (f *fakeIntrospection) set(tok string, ans map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.table[tok] = ans
}

func (f *fakeIntrospection) introspector(t *testing.T) *oauth.Introspector {
	in, err := oauth.NewIntrospector(f.srv.URL, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func active(scope string, exp time.Time) map[string]any {
	return map[string]any{"active": true, "scope": scope, "client_id": "clawker-cli", "exp": exp.Unix(), "token_use": "access_token"}
}

// call runs the unary interceptor for method with the given authorization
// header values and reports the status code and whether the handler ran.
func call(a *cpgrpc.Authz, method string, auth ...string) (codes.Code, bool, error) {
	ctx := context.Background()
	if len(auth) > 0 {
		md := metadata.MD{}
		for _, v := range auth {
			md.Append("authorization", v)
		}
		ctx = metadata.NewIncomingContext(ctx, md)
	}
	ran := false
	_, err := a.UnaryInterceptor()(ctx, nil, &ggrpc.UnaryServerInfo{FullMethod: method}, func(context.Context, any) (any, error) {
		ran = true
		return "ok", nil
	})
	return status.Code(err), ran, err
}

func TestAuthzDecisions(t *testing.T) {
	f := newFakeIntrospection(t)
	now := time.Now()
	f.set("good", active("admin", now.Add(time.Hour)))
	f.set("agent", map[string]any{"active": true, "scope": "agent:self:register", "client_id": "clawker-agent", "exp": now.Add(time.Hour).Unix()})
	f.set("past", active("admin", now.Add(-time.Second))) // Hydra said active, exp says otherwise
	f.set("refresh", map[string]any{"active": true, "scope": "admin", "exp": now.Add(time.Hour).Unix(), "token_use": "refresh_token"})
	f.set("admins", active("openid admin offline", now.Add(time.Hour)))
	core, logs := observer.New(zap.DebugLevel)
	var ready atomic.Bool
	ready.Store(true)
	a := cpgrpc.NewAuthz(cpgrpc.AuthzConfig{Introspector: f.introspector(t), Ready: ready.Load, Log: zap.New(core)})

	list := adminv1.AdminService_ListAgents_FullMethodName
	clock := adminv1.AdminService_GetSystemTime_FullMethodName
	cases := []struct {
		name, method string
		auth         []string
		want         codes.Code
		reason       string
	}{
		{"valid admin token", list, []string{"Bearer good"}, codes.OK, ""},
		{"scheme is case-insensitive", list, []string{"bearer good"}, codes.OK, ""},
		{"admin among other scopes", adminv1.AdminService_FirewallBypass_FullMethodName, []string{"Bearer admins"}, codes.OK, ""},
		{"public method without token", clock, nil, codes.OK, ""},
		{"public method with a bad token", clock, []string{"Bearer nope"}, codes.OK, ""},
		{"absent token", list, nil, codes.Unauthenticated, "token_missing"},
		{"empty header", list, []string{""}, codes.Unauthenticated, "token_malformed"},
		{"basic auth", list, []string{"Basic Z29vZA=="}, codes.Unauthenticated, "token_malformed"},
		{"bearer without token", list, []string{"Bearer "}, codes.Unauthenticated, "token_malformed"},
		{"token with a space", list, []string{"Bearer go od"}, codes.Unauthenticated, "token_malformed"},
		{"token with a control char", list, []string{"Bearer go\x01od"}, codes.Unauthenticated, "token_malformed"},
		{"oversized token", list, []string{"Bearer " + strings.Repeat("a", 5000)}, codes.Unauthenticated, "token_malformed"},
		{"two authorization headers", list, []string{"Bearer good", "Bearer good"}, codes.Unauthenticated, "token_malformed"},
		{"unknown token", list, []string{"Bearer nope"}, codes.Unauthenticated, "token_inactive"},
		{"exp in the past", list, []string{"Bearer past"}, codes.Unauthenticated, "token_expired"},
		{"refresh token", list, []string{"Bearer refresh"}, codes.Unauthenticated, "not_access_token"},
		{"wrong scope", list, []string{"Bearer agent"}, codes.PermissionDenied, "scope_missing"},
		{"introspection error", list, []string{"Bearer explode"}, codes.Unauthenticated, "introspection_failed"},
		{"unmapped method", "/clawker.admin.v1.AdminService/Shutdown", []string{"Bearer good"}, codes.PermissionDenied, "unmapped_method"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := logs.Len()
			code, ran, err := call(a, c.method, c.auth...)
			if code != c.want {
				t.Fatalf("code %v (%v), want %v", code, err, c.want)
			}
			if ran != (c.want == codes.OK) {
				t.Errorf("handler ran = %v with code %v", ran, code)
			}
			if c.reason == "" {
				if logs.Len() != before {
					t.Errorf("an allowed call logged %v", logs.All()[before:])
				}
				return
			}
			if !strings.Contains(err.Error(), c.reason) {
				t.Errorf("message %q lacks the reason %q", err, c.reason)
			}
			entries := logs.All()[before:]
			if len(entries) != 1 {
				t.Fatalf("%d log entries, want 1 admin_auth_failed", len(entries))
			}
			fields := entries[0].ContextMap()
			if fields["event"] != "admin_auth_failed" || fields["reason"] != c.reason || fields["method"] != c.method {
				t.Errorf("log fields %v", fields)
			}
			for _, v := range fields {
				if s, ok := v.(string); ok && len(c.auth) > 0 && strings.Contains(s, "good") {
					t.Errorf("the token leaked into the log: %v", fields)
				}
			}
		})
	}

	t.Run("before ready", func(t *testing.T) {
		ready.Store(false)
		defer ready.Store(true)
		calls := f.calls.Load()
		if code, _, err := call(a, list, "Bearer good"); code != codes.FailedPrecondition {
			t.Errorf("admin method before ready: %v, want FailedPrecondition", err)
		}
		if code, _, _ := call(a, list); code != codes.FailedPrecondition {
			t.Errorf("admin method before ready, no token: %v, want FailedPrecondition", code)
		}
		if code, ran, err := call(a, clock); code != codes.OK || !ran {
			t.Errorf("GetSystemTime before ready: %v", err)
		}
		if f.calls.Load() != calls {
			t.Error("Hydra was asked before ready")
		}
	})
	t.Run("no introspector", func(t *testing.T) {
		b := cpgrpc.NewAuthz(cpgrpc.AuthzConfig{})
		if code, _, _ := call(b, list, "Bearer good"); code != codes.Unauthenticated {
			t.Errorf("without an introspector: %v, want Unauthenticated", code)
		}
		if code, _, _ := call(b, clock); code != codes.OK {
			t.Errorf("public method without an introspector: %v", code)
		}
	})
}

func TestAuthzIntrospectionTimeoutFailsClosedQuickly(t *testing.T) {
	f := newFakeIntrospection(t)
	f.set("good", active("admin", time.Now().Add(time.Hour)))
	f.delay.Store(int64(2 * time.Second))
	core, logs := observer.New(zap.DebugLevel)
	a := cpgrpc.NewAuthz(cpgrpc.AuthzConfig{Introspector: f.introspector(t), IntrospectTimeout: 150 * time.Millisecond, Log: zap.New(core)})
	start := time.Now()
	code, ran, err := call(a, adminv1.AdminService_FirewallDisable_FullMethodName, "Bearer good")
	took := time.Since(start)
	if code != codes.Unauthenticated || ran {
		t.Fatalf("hung introspection: %v (ran=%v), want Unauthenticated", err, ran)
	}
	if took > time.Second {
		t.Errorf("refusal took %v with a 150ms introspection bound", took)
	}
	if e := logs.FilterField(zap.String("reason", "introspection_failed")).All(); len(e) != 1 {
		t.Errorf("want one introspection_failed line, got %v", logs.All())
	}
	t.Logf("refused in %v: %v", took, err)
}

func TestAuthzPositiveCache(t *testing.T) {
	f := newFakeIntrospection(t)
	var mu sync.Mutex
	t0 := time.Unix(time.Now().Unix(), 0) // whole seconds, as exp is
	now := t0
	clk := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	f.set("good", active("admin", t0.Add(10*time.Second)))
	f.set("agent", map[string]any{"active": true, "scope": "agent:self:register", "exp": t0.Add(time.Hour).Unix()})
	a := cpgrpc.NewAuthz(cpgrpc.AuthzConfig{Introspector: f.introspector(t), CacheTTL: 3 * time.Second, Now: clk})
	list := adminv1.AdminService_ListAgents_FullMethodName

	for range 5 {
		if code, _, err := call(a, list, "Bearer good"); code != codes.OK {
			t.Fatal(err)
		}
	}
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("%d introspections for 5 calls within the cache TTL, want 1", n)
	}
	// Revoked in Hydra: honoured once the TTL has passed.
	f.set("good", map[string]any{"active": false})
	advance(2 * time.Second)
	if code, _, _ := call(a, list, "Bearer good"); code != codes.OK {
		t.Fatalf("within the TTL the cached grant answers: %v", code)
	}
	advance(1500 * time.Millisecond)
	if code, _, _ := call(a, list, "Bearer good"); code != codes.Unauthenticated {
		t.Fatalf("revoked token after the TTL: %v, want Unauthenticated", code)
	}
	// Negative answers are never cached: re-activated, it passes at once.
	f.set("good", active("admin", t0.Add(4*time.Second))) // the clock is at t0+3.5s
	if code, _, _ := call(a, list, "Bearer good"); code != codes.OK {
		t.Fatalf("re-activated: %v", code)
	}
	// Never beyond exp: exp is ~0.5s ahead of the clock now, the TTL 3s.
	calls := f.calls.Load()
	advance(600 * time.Millisecond)
	if code, _, _ := call(a, list, "Bearer good"); code != codes.Unauthenticated {
		t.Fatalf("past exp: %v, want Unauthenticated", code)
	}
	if f.calls.Load() != calls+1 {
		t.Error("the cache answered past the token's exp")
	}
	// A cached grant without the scope is still refused.
	for range 2 {
		if code, _, _ := call(a, list, "Bearer agent"); code != codes.PermissionDenied {
			t.Fatalf("cached wrong-scope token: %v", code)
		}
	}
	// Forget empties the cache.
	f.set("good", active("admin", t0.Add(time.Hour)))
	call(a, list, "Bearer good")
	calls = f.calls.Load()
	a.Forget()
	call(a, list, "Bearer good")
	if f.calls.Load() != calls+1 {
		t.Error("Forget did not empty the cache")
	}
}

func TestAuthzStreamInterceptor(t *testing.T) {
	f := newFakeIntrospection(t)
	f.set("good", active("admin", time.Now().Add(time.Hour)))
	a := cpgrpc.NewAuthz(cpgrpc.AuthzConfig{Introspector: f.introspector(t), Scopes: map[string]string{"/s/Watch": oauth.ScopeAdmin}})
	run := func(auth string) codes.Code {
		ctx := context.Background()
		if auth != "" {
			ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", auth))
		}
		err := a.StreamInterceptor()(nil, &stream{ctx: ctx}, &ggrpc.StreamServerInfo{FullMethod: "/s/Watch"}, func(any, ggrpc.ServerStream) error { return nil })
		return status.Code(err)
	}
	if c := run("Bearer good"); c != codes.OK {
		t.Errorf("stream with a valid token: %v", c)
	}
	if c := run(""); c != codes.Unauthenticated {
		t.Errorf("stream without a token: %v", c)
	}
	err := a.StreamInterceptor()(nil, &stream{ctx: context.Background()}, &ggrpc.StreamServerInfo{FullMethod: "/s/Other"}, func(any, ggrpc.ServerStream) error { return nil })
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("unmapped stream: %v", err)
	}
}

type stream struct {
	ggrpc.ServerStream
	ctx context.Context
}

func (s *stream) Context() context.Context { return s.ctx }
