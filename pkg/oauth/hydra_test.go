package oauth_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/oauth"
	"github.com/clawker/clawker-cp/pkg/oauth/hydratest"
)

// TestTokenSourceWithHydra: concurrent callers share one exchange, the
// token introspects as an active clawker-cli access token with scope
// admin, and the source refreshes it at 80% of Hydra's ttl.access_token.
func TestTokenSourceWithHydra(t *testing.T) {
	dir := t.TempDir()
	if _, err := certs.Ensure(dir, certs.Options{}); err != nil {
		t.Fatal(err)
	}
	m, err := certs.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	h := hydratest.Start(t, m, hydratest.Options{AccessTokenTTL: 5 * time.Second})
	h.RegisterClawkerClients(t, m.SigningJWK)
	ts, err := oauth.NewTokenSource(oauth.Config{
		TokenURL: h.TokenURL, ClientID: oauth.ClientCLI, Scopes: []string{oauth.ScopeAdmin},
		Key: m.SigningKey, RootCAs: h.CA, ServerName: h.ServerName,
	})
	if err != nil {
		t.Fatal(err)
	}
	intro, err := oauth.NewIntrospector(h.AdminURL, nil, "")
	if err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	got := make([]string, 16)
	for i := range got {
		wg.Go(func() {
			tok, err := ts.Token(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = tok.AccessToken
		})
	}
	wg.Wait()
	first := got[0]
	for _, g := range got {
		if g != first {
			t.Fatalf("concurrent callers got different tokens: %q vs %q", g, first)
		}
	}
	in, err := intro.Introspect(context.Background(), first)
	if err != nil {
		t.Fatal(err)
	}
	if !in.Active || in.ClientID != oauth.ClientCLI || !in.HasScope(oauth.ScopeAdmin) || in.TokenUse != "access_token" {
		t.Fatalf("introspection = %+v", in)
	}
	if ttl := time.Until(in.ExpiresAt()); ttl > 5*time.Second || ttl < 3*time.Second {
		t.Errorf("exp in %v, want about 5s", ttl)
	}

	// Hydra's expires_in is whole seconds (4 or 5): the refresh is due
	// 3.2 to 4 s after the exchange; by 4.5 s a new token is in use.
	deadline := time.Now().Add(4500 * time.Millisecond)
	var second string
	for time.Now().Before(deadline) && second == "" {
		tok, err := ts.Token(context.Background())
		if err != nil {
			t.Fatalf("while refreshing: %v", err)
		}
		if tok.AccessToken != first {
			second = tok.AccessToken
		}
		time.Sleep(50 * time.Millisecond)
	}
	if second == "" {
		t.Fatal("no refresh before the token's expiry")
	}
	if in, err := intro.Introspect(context.Background(), second); err != nil || !in.Active {
		t.Fatalf("refreshed token: %+v %v", in, err)
	}
	if in, err := intro.Introspect(context.Background(), "ory_at_bogus.bogus"); err != nil || in.Active {
		t.Fatalf("bogus token: %+v %v", in, err)
	}
}

// BenchmarkTokenExchangeWithHydra is the CLI's cold-start cost: mint an
// assertion and exchange it at Hydra over TLS (connection reused).
func BenchmarkTokenExchangeWithHydra(b *testing.B) {
	dir := b.TempDir()
	if _, err := certs.Ensure(dir, certs.Options{}); err != nil {
		b.Fatal(err)
	}
	m, err := certs.Load(dir)
	if err != nil {
		b.Fatal(err)
	}
	h := hydratest.Start(b, m, hydratest.Options{})
	h.RegisterClawkerClients(b, m.SigningJWK)
	ts, err := oauth.NewTokenSource(oauth.Config{
		TokenURL: h.TokenURL, ClientID: oauth.ClientCLI, Scopes: []string{oauth.ScopeAdmin},
		Key: m.SigningKey, RootCAs: h.CA, ServerName: h.ServerName,
	})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		ts.Invalidate()
		if _, err := ts.Token(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAudienceWithHydra: the assertion's aud must be Hydra's own token URL
// (urls.self.public + oauth2/token), whatever address the exchange is
// posted to; Config.Audience decouples the two.
func TestAudienceWithHydra(t *testing.T) {
	dir := t.TempDir()
	if _, err := certs.Ensure(dir, certs.Options{}); err != nil {
		t.Fatal(err)
	}
	m, err := certs.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	h := hydratest.Start(t, m, hydratest.Options{})
	h.RegisterClawkerClients(t, m.SigningJWK)
	// The server certificate names localhost too: another spelling of the
	// same endpoint.
	other := strings.Replace(h.TokenURL, "127.0.0.1", "localhost", 1)
	source := func(audience string) *oauth.TokenSource {
		ts, err := oauth.NewTokenSource(oauth.Config{
			TokenURL: other, Audience: audience, ClientID: oauth.ClientAgent, Scopes: []string{oauth.ScopeAgentRegister},
			Key: m.SigningKey, RootCAs: h.CA, ServerName: h.ServerName,
		})
		if err != nil {
			t.Fatal(err)
		}
		return ts
	}
	_, err = source("").Token(context.Background())
	var oe *oauth.Error
	if !errors.As(err, &oe) || oe.Kind != oauth.KindRefused {
		t.Fatalf("aud = the posted URL %s: %v, want Hydra's refusal", other, err)
	}
	t.Log(err)
	if _, err := source(h.TokenURL).Token(context.Background()); err != nil {
		t.Fatalf("aud = Hydra's token URL, posted to %s: %v", other, err)
	}
}
