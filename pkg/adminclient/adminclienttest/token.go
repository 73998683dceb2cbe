package adminclienttest

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/oauth"
)

// TokenEndpoint is a fake Hydra token endpoint for adminclient.WithOAuth:
// it verifies each client assertion (ES256 under the material's signing
// JWKS, iss = sub = clawker-cli, aud = its own URL, fresh jti) and issues
// "fake-token-<n>" with scope admin. Hydra itself is exercised by the
// tests in actors/grpc and pkg/oauth.
type TokenEndpoint struct {
	Port int
	URL  string // https://127.0.0.1:<port>/oauth2/token

	mu     sync.Mutex
	issued int
	jtis   map[string]bool
	tokens map[string]time.Time // issued token -> exp
}

// ServeTokenEndpoint serves TLS with m's server certificate, as the
// control plane's Hydra does, on a loopback port. Point settings at it
// with Home.SetPorts.
func ServeTokenEndpoint(t testing.TB, m *certs.Material) *TokenEndpoint {
	t.Helper()
	pub, err := m.SigningJWK.Keys[0].PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &TokenEndpoint{Port: lis.Addr().(*net.TCPAddr).Port, jtis: map[string]bool{}, tokens: map[string]time.Time{}}
	e.URL = fmt.Sprintf("https://127.0.0.1:%d/oauth2/token", e.Port)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		refuse := func(code int, e, desc string) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": e, "error_description": desc})
		}
		if r.URL.Path != "/oauth2/token" || r.ParseForm() != nil || r.PostForm.Get("client_assertion_type") != oauth.AssertionType {
			refuse(400, "invalid_request", "not a client_credentials request with a client assertion")
			return
		}
		tok, err := jwt.ParseSigned(r.PostForm.Get("client_assertion"), []jose.SignatureAlgorithm{jose.ES256})
		var c jwt.Claims
		if err == nil {
			err = tok.Claims(pub, &c)
		}
		if err == nil {
			err = c.Validate(jwt.Expected{Issuer: oauth.ClientCLI, Subject: oauth.ClientCLI, AnyAudience: jwt.Audience{e.URL}})
		}
		if err != nil {
			refuse(401, "invalid_client", "Unable to verify the integrity of the 'client_assertion' value: "+err.Error())
			return
		}
		e.mu.Lock()
		seen := e.jtis[c.ID]
		e.jtis[c.ID] = true
		if !seen {
			e.issued++
		}
		access := fmt.Sprintf("fake-token-%d", e.issued)
		if !seen {
			e.tokens[access] = time.Now().Add(time.Hour)
		}
		e.mu.Unlock()
		if seen {
			refuse(400, "jti_known", "The jti was already used.")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": access, "token_type": "bearer", "expires_in": 3600, "scope": oauth.ScopeAdmin})
	}))
	srv.Listener = lis
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{{Certificate: [][]byte{m.Server.Raw}, PrivateKey: m.ServerKey, Leaf: m.Server}}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return e
}

// Issued is how many tokens the endpoint has issued.
func (e *TokenEndpoint) Issued() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.issued
}

// Introspect answers as Hydra's introspection would for the tokens this
// endpoint issued (active, clawker-cli, scope admin, for an hour) and any
// other (inactive). It lets a control plane under test check tokens
// without Hydra (grpc.AuthzConfig.Introspector).
func (e *TokenEndpoint) Introspect(_ context.Context, token string) (*oauth.Introspection, error) {
	e.mu.Lock()
	exp, ok := e.tokens[token]
	e.mu.Unlock()
	if !ok || !time.Now().Before(exp) {
		return &oauth.Introspection{Active: false}, nil
	}
	return &oauth.Introspection{
		Active: true, Scope: oauth.ScopeAdmin, ClientID: oauth.ClientCLI, Subject: oauth.ClientCLI,
		Expiry: exp.Unix(), TokenType: "Bearer", TokenUse: "access_token",
	}, nil
}

// Revoke makes token inactive.
func (e *TokenEndpoint) Revoke(token string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.tokens, token)
}
