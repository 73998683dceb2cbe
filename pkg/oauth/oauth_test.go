package oauth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/oauth"
	"github.com/clawker/clawker-cp/pkg/testkit"
)

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// parseAssertion verifies a compact JWS with pub and returns its claims
// and header.
func parseAssertion(t testing.TB, raw string, pub *ecdsa.PublicKey) (jwt.Claims, jose.Header) {
	t.Helper()
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatalf("parse assertion: %v", err)
	}
	var c jwt.Claims
	if err := tok.Claims(pub, &c); err != nil {
		t.Fatalf("verify assertion: %v", err)
	}
	return c, tok.Headers[0]
}

func TestAssertionClaims(t *testing.T) {
	key := newKey(t)
	iat := time.Unix(1_800_000_000, 0)
	raw, err := oauth.Assertion{ClientID: "clawker-cli", Audience: "https://127.0.0.1:4444/oauth2/token", IssuedAt: iat}.Sign(key)
	if err != nil {
		t.Fatal(err)
	}
	c, h := parseAssertion(t, raw, &key.PublicKey)
	jwk, _ := certs.NewJWK(&key.PublicKey)
	if h.KeyID != jwk.Kid || h.Algorithm != "ES256" || h.ExtraHeaders["typ"] != "JWT" {
		t.Errorf("header kid=%q alg=%q typ=%v; want kid=%q (RFC 7638 thumbprint) ES256 JWT", h.KeyID, h.Algorithm, h.ExtraHeaders["typ"], jwk.Kid)
	}
	if c.Issuer != "clawker-cli" || c.Subject != "clawker-cli" {
		t.Errorf("iss=%q sub=%q, want clawker-cli for both", c.Issuer, c.Subject)
	}
	if len(c.Audience) != 1 || c.Audience[0] != "https://127.0.0.1:4444/oauth2/token" {
		t.Errorf("aud = %v", c.Audience)
	}
	if c.IssuedAt.Time() != iat || c.Expiry.Time() != iat.Add(60*time.Second) {
		t.Errorf("iat=%v exp=%v, want %v and +60s", c.IssuedAt.Time(), c.Expiry.Time(), iat)
	}
	if len(c.ID) < 20 {
		t.Errorf("jti %q is too short to be 128 random bits", c.ID)
	}
	raw2, _ := oauth.Assertion{ClientID: "clawker-cli", Audience: "x", IssuedAt: iat}.Sign(key)
	if c2, _ := parseAssertion(t, raw2, &key.PublicKey); c2.ID == c.ID {
		t.Error("two assertions share a jti")
	}
	// Another key does not verify it.
	if tok, _ := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256}); tok.Claims(&newKey(t).PublicKey, &jwt.Claims{}) == nil {
		t.Error("assertion verified with a foreign key")
	}
}

// fakeHydra is a token endpoint that checks each request as Hydra would
// (form fields, assertion signature, aud, fresh jti) and issues tokens.
type fakeHydra struct {
	t        testing.TB
	pub      *ecdsa.PublicKey
	srv      *httptest.Server
	url      string
	lifetime int64
	delay    time.Duration
	fail     atomic.Value // func(w) bool: answer instead of issuing

	mu       sync.Mutex
	jtis     map[string]bool
	issued   int
	lastForm map[string][]string
}

func newFakeHydra(t testing.TB, pub *ecdsa.PublicKey) *fakeHydra {
	f := &fakeHydra{t: t, pub: pub, lifetime: 100, jtis: map[string]bool{}}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes refused on purpose
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	f.url = f.srv.URL + "/oauth2/token"
	return f
}

func (f *fakeHydra) serve(w http.ResponseWriter, r *http.Request) {
	if f.delay > 0 {
		time.Sleep(f.delay)
	}
	if fn, _ := f.fail.Load().(func(http.ResponseWriter) bool); fn != nil && fn(w) {
		return
	}
	refuse := func(code int, e, desc string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": e, "error_description": desc})
	}
	if err := r.ParseForm(); err != nil || r.Method != http.MethodPost {
		refuse(400, "invalid_request", "bad form")
		return
	}
	f.mu.Lock()
	f.lastForm = r.PostForm
	f.mu.Unlock()
	if r.PostForm.Get("grant_type") != "client_credentials" || r.PostForm.Get("client_assertion_type") != oauth.AssertionType {
		refuse(400, "invalid_request", "grant or assertion type")
		return
	}
	tok, err := jwt.ParseSigned(r.PostForm.Get("client_assertion"), []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		refuse(401, "invalid_client", "Unable to verify the integrity of the 'client_assertion' value.")
		return
	}
	var c jwt.Claims
	if err := tok.Claims(f.pub, &c); err != nil {
		refuse(401, "invalid_client", "Unable to verify the integrity of the 'client_assertion' value.")
		return
	}
	// Time: the tests' clocks are fake; iat and exp are checked by Hydra.
	if err := c.Validate(jwt.Expected{Issuer: "clawker-cli", Subject: "clawker-cli", AnyAudience: jwt.Audience{f.url}, Time: c.IssuedAt.Time()}); err != nil {
		refuse(401, "invalid_client", err.Error())
		return
	}
	f.mu.Lock()
	seen := f.jtis[c.ID]
	f.jtis[c.ID] = true
	f.issued++
	n := f.issued
	f.mu.Unlock()
	if seen {
		refuse(400, "jti_known", "The jti was already used.")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"access_token": fmt.Sprintf("tok-%d", n), "token_type": "bearer", "expires_in": f.lifetime, "scope": r.PostForm.Get("scope"),
	})
}

func (f *fakeHydra) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.issued
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newSource(t testing.TB, f *fakeHydra, key *ecdsa.PrivateKey, now func() time.Time) *oauth.TokenSource {
	t.Helper()
	ts, err := oauth.NewTokenSource(oauth.Config{
		TokenURL: f.url, ClientID: "clawker-cli", Scopes: []string{"admin"}, Key: key,
		HTTPClient: f.srv.Client(), Now: now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func TestTokenSourceCachesAndRefreshesAt80Percent(t *testing.T) {
	key := newKey(t)
	f := newFakeHydra(t, &key.PublicKey)
	clk := &clock{t: time.Now()}
	ts := newSource(t, f, key, clk.Now)
	ctx := context.Background()

	tok, err := ts.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != "tok-1" || tok.Scope != "admin" || !tok.Expiry.Equal(clk.Now().Add(100*time.Second)) {
		t.Fatalf("token = %+v", tok)
	}
	if got := f.lastForm["scope"]; len(got) != 1 || got[0] != "admin" {
		t.Errorf("scope sent = %v", got)
	}
	if got := f.lastForm["client_id"]; len(got) != 1 || got[0] != "clawker-cli" {
		t.Errorf("client_id sent = %v", got)
	}
	clk.Add(79 * time.Second)
	if tok, _ := ts.Token(ctx); tok.AccessToken != "tok-1" || f.count() != 1 {
		t.Fatalf("before 80%% of the lifetime: token %q after %d exchanges, want the cached tok-1 after 1", tok.AccessToken, f.count())
	}
	// Past 80%: the cached token is still handed out, a refresh starts.
	clk.Add(2 * time.Second)
	if tok, _ := ts.Token(ctx); tok.AccessToken != "tok-1" {
		t.Fatalf("during the refresh: %q, want the still-valid tok-1", tok.AccessToken)
	}
	testkit.WaitFor(t, 5*time.Second, "the refreshed token", func() bool { tok, _ := ts.Token(ctx); return tok.AccessToken == "tok-2" })
	if n := f.count(); n != 2 {
		t.Errorf("%d exchanges, want 2", n)
	}
	// Expired (the refresh point passed and too little is left): the
	// caller waits for a new exchange.
	clk.Add(200 * time.Second)
	if tok, err := ts.Token(ctx); err != nil || tok.AccessToken != "tok-3" {
		t.Fatalf("after expiry: %v %v, want tok-3", tok, err)
	}
	ts.Invalidate()
	if tok, err := ts.Token(ctx); err != nil || tok.AccessToken != "tok-4" {
		t.Fatalf("after Invalidate: %v %v, want tok-4", tok, err)
	}
}

func TestTokenSourceConcurrentCallersShareOneExchange(t *testing.T) {
	key := newKey(t)
	f := newFakeHydra(t, &key.PublicKey)
	f.delay = 100 * time.Millisecond
	ts := newSource(t, f, key, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Go(func() {
			tok, err := ts.Token(context.Background())
			if err == nil && tok.AccessToken != "tok-1" {
				err = fmt.Errorf("got %q", tok.AccessToken)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := f.count(); n != 1 {
		t.Errorf("%d exchanges for 64 concurrent callers, want 1", n)
	}
}

func TestTokenSourceCallerContextDoesNotCancelTheShared(t *testing.T) {
	key := newKey(t)
	f := newFakeHydra(t, &key.PublicKey)
	f.delay = 200 * time.Millisecond
	ts := newSource(t, f, key, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := ts.Token(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("impatient caller: %v, want DeadlineExceeded", err)
	}
	if tok, err := ts.Token(context.Background()); err != nil || tok.AccessToken != "tok-1" {
		t.Fatalf("patient caller: %v %v, want tok-1 from the same exchange", tok, err)
	}
}

func TestTokenSourceErrorsNameWhatFailed(t *testing.T) {
	key := newKey(t)

	t.Run("invalid_client with Hydra's description", func(t *testing.T) {
		f := newFakeHydra(t, &newKey(t).PublicKey) // Hydra knows another key
		_, err := newSource(t, f, key, nil).Token(context.Background())
		var e *oauth.Error
		if !errors.As(err, &e) || e.Kind != oauth.KindRefused || e.Code != "invalid_client" || e.StatusCode != 401 {
			t.Fatalf("err = %#v", err)
		}
		for _, want := range []string{f.url, `"clawker-cli"`, "HTTP 401 invalid_client", "Unable to verify the integrity"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%q does not contain %q", err, want)
			}
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := l.Addr().String()
		l.Close()
		ts, err := oauth.NewTokenSource(oauth.Config{TokenURL: "https://" + addr + "/oauth2/token", ClientID: "clawker-cli", Key: key, RootCAs: x509.NewCertPool()})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err = ts.Token(context.Background())
		var e *oauth.Error
		if !errors.As(err, &e) || e.Kind != oauth.KindUnreachable || !strings.Contains(err.Error(), "unreachable") || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("err = %v", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("a refused connection took %v to report", d)
		}
	})
	t.Run("certificate not signed by the clawker CA", func(t *testing.T) {
		f := newFakeHydra(t, &key.PublicKey)
		dir := t.TempDir()
		if _, err := certs.Ensure(dir, certs.Options{}); err != nil {
			t.Fatal(err)
		}
		m, err := certs.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AddCert(m.CA)
		ts, _ := oauth.NewTokenSource(oauth.Config{TokenURL: f.url, ClientID: "clawker-cli", Key: key, RootCAs: pool})
		_, err = ts.Token(context.Background())
		var e *oauth.Error
		if !errors.As(err, &e) || e.Kind != oauth.KindTLS {
			t.Fatalf("err = %v, want KindTLS", err)
		}
		t.Log(err)
	})
	t.Run("not an OAuth2 answer", func(t *testing.T) {
		f := newFakeHydra(t, &key.PublicKey)
		f.fail.Store(func(w http.ResponseWriter) bool { http.Error(w, "<html>bad gateway</html>", 502); return true })
		_, err := newSource(t, f, key, nil).Token(context.Background())
		var e *oauth.Error
		if !errors.As(err, &e) || e.Kind != oauth.KindBadResponse || e.StatusCode != 502 {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("no expires_in", func(t *testing.T) {
		f := newFakeHydra(t, &key.PublicKey)
		f.fail.Store(func(w http.ResponseWriter) bool {
			_, _ = w.Write([]byte(`{"access_token":"x","token_type":"bearer"}`))
			return true
		})
		_, err := newSource(t, f, key, nil).Token(context.Background())
		if err == nil || !strings.Contains(err.Error(), "expires_in") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("http without a client is refused", func(t *testing.T) {
		if _, err := oauth.NewTokenSource(oauth.Config{TokenURL: "http://127.0.0.1:1/oauth2/token", ClientID: "c", Key: key, RootCAs: x509.NewCertPool()}); err == nil {
			t.Fatal("a plain-http token URL was accepted")
		}
	})
}

func TestTokenSourceKeepsValidTokenWhenRefreshFails(t *testing.T) {
	key := newKey(t)
	f := newFakeHydra(t, &key.PublicKey)
	clk := &clock{t: time.Now()}
	ts := newSource(t, f, key, clk.Now)
	if _, err := ts.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.fail.Store(func(w http.ResponseWriter) bool { http.Error(w, "down", 503); return true })
	clk.Add(85 * time.Second) // refresh due, 15s left
	for range 3 {
		tok, err := ts.Token(context.Background())
		if err != nil || tok.AccessToken != "tok-1" {
			t.Fatalf("refresh failing, token still valid: %v %v", tok, err)
		}
	}
	clk.Add(12 * time.Second) // 3s left: too little to hand out
	if _, err := ts.Token(context.Background()); err == nil {
		t.Fatal("no error once the token is about to expire and the refresh fails")
	}
}

type authInfo struct{ credentials.CommonAuthInfo }

func (authInfo) AuthType() string { return "test" }

func TestPerRPCCredentials(t *testing.T) {
	key := newKey(t)
	f := newFakeHydra(t, &key.PublicKey)
	c := &oauth.PerRPCCredentials{Source: newSource(t, f, key, nil), Public: func(m string) bool { return m == "/svc/Public" }}
	if !c.RequireTransportSecurity() {
		t.Error("RequireTransportSecurity = false")
	}
	secure := authInfo{credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
	ctxFor := func(method string, ai credentials.AuthInfo) context.Context {
		return credentials.NewContextWithRequestInfo(context.Background(), credentials.RequestInfo{Method: method, AuthInfo: ai})
	}
	md, err := c.GetRequestMetadata(ctxFor("/svc/Private", secure))
	if err != nil || md["authorization"] != "Bearer tok-1" {
		t.Fatalf("private method: %v %v", md, err)
	}
	if md, err := c.GetRequestMetadata(ctxFor("/svc/Public", secure)); err != nil || len(md) != 0 {
		t.Fatalf("public method: %v %v, want no metadata", md, err)
	}
	insecure := authInfo{credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}
	if _, err := c.GetRequestMetadata(ctxFor("/svc/Private", insecure)); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("insecure transport: %v, want Unauthenticated", err)
	}
	// Refused by Hydra: Unauthenticated, with Hydra's words.
	other := newFakeHydra(t, &newKey(t).PublicKey)
	c2 := &oauth.PerRPCCredentials{Source: newSource(t, other, key, nil)}
	_, err = c2.GetRequestMetadata(ctxFor("/svc/Private", secure))
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "invalid_client") {
		t.Fatalf("refused: %v", err)
	}
	// Unreachable: Unavailable.
	other.srv.Close()
	c3 := &oauth.PerRPCCredentials{Source: newSource(t, other, key, nil)}
	if _, err := c3.GetRequestMetadata(ctxFor("/svc/Private", secure)); status.Code(err) != codes.Unavailable {
		t.Fatalf("unreachable: %v, want Unavailable", err)
	}
}

func TestIntrospector(t *testing.T) {
	var got atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		got.Store(r.URL.Path + " " + r.PostForm.Get("token"))
		switch r.PostForm.Get("token") {
		case "good":
			_, _ = w.Write([]byte(`{"active":true,"scope":"admin other","client_id":"clawker-cli","exp":1900000000,"token_use":"access_token"}`))
		case "garbage":
			_, _ = w.Write([]byte(`not json`))
		case "500":
			http.Error(w, "boom", 500)
		default:
			_, _ = w.Write([]byte(`{"active":false}`))
		}
	}))
	defer srv.Close()
	in, err := oauth.NewIntrospector(srv.URL+"/", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	r, err := in.Introspect(context.Background(), "good")
	if err != nil || !r.Active || !r.HasScope("admin") || r.HasScope("adm") || r.ClientID != "clawker-cli" || r.ExpiresAt().Unix() != 1900000000 {
		t.Fatalf("good: %+v %v", r, err)
	}
	if p := got.Load().(string); p != oauth.IntrospectPath+" good" {
		t.Errorf("request = %q", p)
	}
	if r, err := in.Introspect(context.Background(), "other"); err != nil || r.Active {
		t.Fatalf("inactive: %+v %v", r, err)
	}
	for _, tok := range []string{"garbage", "500"} {
		if _, err := in.Introspect(context.Background(), tok); err == nil {
			t.Errorf("%s: no error", tok)
		}
	}
	if _, err := oauth.NewIntrospector("https://127.0.0.1:1", nil, ""); err == nil {
		t.Error("https without a CA accepted")
	}
}
