package grpc

import (
	"context"
	"crypto/sha256"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	ggrpc "google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/clawker/clawker-cp/pkg/oauth"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// ScopePublic marks a method that needs no bearer token. The admin
// listener's mTLS (CLI certificate only) still applies to it.
const ScopePublic = ""

// adminScopes is the scope each AdminService method requires, keyed by
// full method name. A method missing here is refused (fail closed), and
// TestAdminScopesCoverEveryMethod fails for an RPC added to admin.proto
// without an entry.
var adminScopes = map[string]string{
	// The CLI's clock-sync gate polls it before a token can be had: a
	// lagging CP clock makes Hydra refuse the assertion's iat.
	adminv1.AdminService_GetSystemTime_FullMethodName: ScopePublic,

	adminv1.AdminService_ListAgents_FullMethodName:         oauth.ScopeAdmin,
	adminv1.AdminService_FirewallEnable_FullMethodName:     oauth.ScopeAdmin,
	adminv1.AdminService_FirewallDisable_FullMethodName:    oauth.ScopeAdmin,
	adminv1.AdminService_FirewallBypass_FullMethodName:     oauth.ScopeAdmin,
	adminv1.AdminService_FirewallSyncRoutes_FullMethodName: oauth.ScopeAdmin,
	adminv1.AdminService_FirewallStatus_FullMethodName:     oauth.ScopeAdmin,

	adminv1.AdminService_FirewallInit_FullMethodName:            oauth.ScopeAdmin,
	adminv1.AdminService_FirewallRemove_FullMethodName:          oauth.ScopeAdmin,
	adminv1.AdminService_FirewallAddRules_FullMethodName:        oauth.ScopeAdmin,
	adminv1.AdminService_FirewallRemoveRule_FullMethodName:      oauth.ScopeAdmin,
	adminv1.AdminService_FirewallListRules_FullMethodName:       oauth.ScopeAdmin,
	adminv1.AdminService_FirewallReload_FullMethodName:          oauth.ScopeAdmin,
	adminv1.AdminService_FirewallResolveHostname_FullMethodName: oauth.ScopeAdmin,
	adminv1.AdminService_FirewallRotateCA_FullMethodName:        oauth.ScopeAdmin,
	adminv1.AdminService_FirewallDenied_FullMethodName:          oauth.ScopeAdmin,
}

// AdminScopes returns a copy of the AdminService's method-to-scope map
// (ScopePublic for methods that need no token).
func AdminScopes() map[string]string {
	out := make(map[string]string, len(adminScopes))
	for k, v := range adminScopes {
		out[k] = v
	}
	return out
}

// TokenIntrospector answers whether a bearer token is active and what it
// grants (*oauth.Introspector asks Hydra). An error means "no answer".
type TokenIntrospector interface {
	Introspect(ctx context.Context, token string) (*oauth.Introspection, error)
}

// Defaults of AuthzConfig.
const (
	DefaultIntrospectTimeout = 2 * time.Second
	// maxCacheEntries bounds the positive cache; past it the cache is
	// emptied (the CLI holds one token at a time, so this never happens in
	// normal use).
	maxCacheEntries = 1024
	// maxTokenLen refuses absurd headers before they reach Hydra.
	maxTokenLen = 4096
)

// AuthzConfig configures the AdminService's token check.
type AuthzConfig struct {
	// Introspector validates tokens. Nil refuses every non-public call.
	Introspector TokenIntrospector
	// Ready reports whether the CP finished starting; until then every
	// non-public method answers FailedPrecondition. Nil means ready.
	Ready func() bool
	// Scopes maps full method names to required scopes; nil: AdminScopes().
	Scopes map[string]string
	// IntrospectTimeout bounds one introspection; zero:
	// DefaultIntrospectTimeout. Past it the call is refused.
	IntrospectTimeout time.Duration
	// CacheTTL keeps a positive introspection for at most this long (and
	// never past the token's exp): a token revoked in Hydra is refused at
	// most CacheTTL later. Zero disables the cache: every call asks Hydra.
	CacheTTL time.Duration
	// Now replaces time.Now (tests).
	Now func() time.Time
	Log *zap.Logger
}

// Authz is the AdminService's authorization: per-method scopes checked
// against Hydra's introspection of the caller's bearer token. Every doubt
// refuses the call.
type Authz struct {
	cfg AuthzConfig

	mu    sync.Mutex
	cache map[[sha256.Size]byte]cachedGrant
}

type cachedGrant struct {
	in    *oauth.Introspection
	until time.Time
}

// NewAuthz returns the interceptors' state.
func NewAuthz(cfg AuthzConfig) *Authz {
	if cfg.Scopes == nil {
		cfg.Scopes = adminScopes
	}
	if cfg.IntrospectTimeout <= 0 {
		cfg.IntrospectTimeout = DefaultIntrospectTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	return &Authz{cfg: cfg, cache: map[[sha256.Size]byte]cachedGrant{}}
}

// UnaryInterceptor checks each unary call before its handler runs.
func (a *Authz) UnaryInterceptor() ggrpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *ggrpc.UnaryServerInfo, handler ggrpc.UnaryHandler) (any, error) {
		if err := a.authorize(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamInterceptor checks each stream before its handler runs (the
// AdminService has no streams today; a future one is covered).
func (a *Authz) StreamInterceptor() ggrpc.StreamServerInterceptor {
	return func(srv any, ss ggrpc.ServerStream, info *ggrpc.StreamServerInfo, handler ggrpc.StreamHandler) error {
		if err := a.authorize(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return handler(srv, ss)
	}
}

// ServerOptions are the options to pass to the admin server's NewServer.
func (a *Authz) ServerOptions() []ggrpc.ServerOption {
	return []ggrpc.ServerOption{ggrpc.ChainUnaryInterceptor(a.UnaryInterceptor()), ggrpc.ChainStreamInterceptor(a.StreamInterceptor())}
}

// authorize decides one call, in this order: a method without a policy
// is refused; a public method passes; before ready, FailedPrecondition;
// then the bearer token must be present, well formed, active (per Hydra,
// asked within IntrospectTimeout), unexpired, an access token, and carry
// the method's scope.
func (a *Authz) authorize(ctx context.Context, method string) error {
	scope, mapped := a.cfg.Scopes[method]
	if !mapped {
		return a.refuse(ctx, method, codes.PermissionDenied, "unmapped_method", "no authorization policy for this method", nil)
	}
	if scope == ScopePublic {
		return nil
	}
	if a.cfg.Ready != nil && !a.cfg.Ready() {
		return status.Error(codes.FailedPrecondition, "the control plane is starting; retry when it is ready")
	}
	token, reason := bearerToken(ctx)
	if reason != "" {
		return a.refuse(ctx, method, codes.Unauthenticated, reason, "missing or malformed bearer token", nil)
	}
	in, reason, msg, err := a.check(ctx, token, scope)
	switch {
	case err != nil:
		return a.refuse(ctx, method, codes.Unauthenticated, "introspection_failed", "the token could not be validated", err)
	case reason == "scope_missing":
		return a.refuse(ctx, method, codes.PermissionDenied, reason, msg, nil,
			zap.String("client_id", in.ClientID), zap.String("scope", in.Scope), zap.String("required", scope))
	case reason != "":
		return a.refuse(ctx, method, codes.Unauthenticated, reason, msg, nil, zap.String("client_id", in.ClientID))
	}
	return nil
}

// check decides whether token grants scope: it must be active (per
// Hydra, asked within IntrospectTimeout), unexpired, an access token, and
// carry scope. A refusal comes back as a reason (token_inactive,
// token_expired, not_access_token, scope_missing) and a message, with the
// introspection; err means Hydra gave no answer (in is nil).
func (a *Authz) check(ctx context.Context, token, scope string) (in *oauth.Introspection, reason, msg string, err error) {
	in, err = a.introspect(ctx, token)
	if err != nil {
		return nil, "", "", err
	}
	now := a.cfg.Now()
	switch {
	case !in.Active:
		return in, "token_inactive", "the token is not active (expired, revoked or unknown)", nil
	case in.Expiry != 0 && !now.Before(in.ExpiresAt()):
		return in, "token_expired", "the token has expired", nil
	case in.TokenUse != "" && in.TokenUse != "access_token":
		return in, "not_access_token", "the token is not an access token", nil
	case !in.HasScope(scope):
		return in, "scope_missing", "the token lacks scope " + scope, nil
	}
	return in, "", "", nil
}

// introspect asks the introspector, or the positive cache when enabled.
// Only active answers are cached, each until min(now+CacheTTL, exp).
func (a *Authz) introspect(ctx context.Context, token string) (*oauth.Introspection, error) {
	if a.cfg.Introspector == nil {
		return nil, status.Error(codes.Unavailable, "no token introspector configured")
	}
	key := sha256.Sum256([]byte(token))
	if a.cfg.CacheTTL > 0 {
		now := a.cfg.Now()
		a.mu.Lock()
		g, ok := a.cache[key]
		if ok && !now.Before(g.until) {
			delete(a.cache, key)
			ok = false
		}
		a.mu.Unlock()
		if ok {
			return g.in, nil
		}
	}
	ictx, cancel := context.WithTimeout(ctx, a.cfg.IntrospectTimeout)
	defer cancel()
	in, err := a.cfg.Introspector.Introspect(ictx, token)
	if err != nil {
		return nil, err
	}
	if a.cfg.CacheTTL > 0 && in.Active && in.Expiry != 0 {
		now := a.cfg.Now()
		until := now.Add(a.cfg.CacheTTL)
		if exp := in.ExpiresAt(); exp.Before(until) {
			until = exp
		}
		if now.Before(until) {
			a.mu.Lock()
			if len(a.cache) >= maxCacheEntries {
				clear(a.cache)
			}
			a.cache[key] = cachedGrant{in: in, until: until}
			a.mu.Unlock()
		}
	}
	return in, nil
}

// Forget empties the positive cache (e.g. after `clawker auth rotate` or
// when Hydra restarts and forgets every token).
func (a *Authz) Forget() {
	a.mu.Lock()
	defer a.mu.Unlock()
	clear(a.cache)
}

// bearerToken extracts the token of the one authorization header, or
// says why there is none.
func bearerToken(ctx context.Context) (token, reason string) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	switch {
	case len(vals) == 0:
		return "", "token_missing"
	case len(vals) > 1:
		return "", "token_malformed"
	}
	scheme, tok, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return "", "token_malformed"
	}
	if tok == "" || len(tok) > maxTokenLen {
		return "", "token_malformed"
	}
	for i := 0; i < len(tok); i++ {
		// RFC 6750 b64token characters only.
		c := tok[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("-._~+/=", c) >= 0) {
			return "", "token_malformed"
		}
	}
	return tok, ""
}

// refuse logs event=admin_auth_failed and returns the status. The token
// itself is never logged.
func (a *Authz) refuse(ctx context.Context, method string, code codes.Code, reason, msg string, err error, fields ...zap.Field) error {
	fs := append([]zap.Field{
		zap.String("event", "admin_auth_failed"), zap.String("reason", reason), zap.String("method", method), zap.String("code", code.String()),
	}, fields...)
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		fs = append(fs, zap.String("peer", p.Addr.String()))
	}
	if err != nil {
		fs = append(fs, zap.Error(err))
	}
	a.cfg.Log.Warn("admin call refused", fs...)
	return status.Errorf(code, "%s (%s)", msg, reason)
}
