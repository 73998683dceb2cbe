package oauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Defaults of Config.
const (
	DefaultExchangeTimeout = 5 * time.Second
	DefaultRefreshFraction = 0.8
	// retryAfterFailure spaces background refreshes after a failed one,
	// while the cached token is still good.
	retryAfterFailure = time.Second
	// minRemaining is the least validity a cached token must have left to
	// be handed out while a refresh runs: less, and the caller waits for
	// the new token instead of racing the expiry on the wire.
	minRemaining = 5 * time.Second
	maxResponse  = 1 << 20
)

// Config describes one OAuth2 client of Hydra.
type Config struct {
	// TokenURL is where the exchange is posted, e.g.
	// https://127.0.0.1:4444/oauth2/token.
	TokenURL string
	// Audience is the assertion's aud: Hydra's token endpoint spelled as
	// Hydra computes it (urls.self.public + "oauth2/token"), which differs
	// from TokenURL when Hydra is reached by another address (an agent
	// dialing the control plane on clawker-net). Empty: TokenURL.
	Audience string
	ClientID string
	Scopes   []string
	// Key signs the client assertions; its public half is the client's
	// JWKS in Hydra.
	Key *ecdsa.PrivateKey
	// RootCAs verifies the token endpoint's certificate (the clawker CA).
	// Required unless HTTPClient is set: system roots are never used.
	RootCAs *x509.CertPool
	// ServerName is the name the endpoint's certificate must carry;
	// empty: the host of TokenURL.
	ServerName string
	// HTTPClient replaces the TLS client built from RootCAs (tests).
	HTTPClient *http.Client
	// Timeout bounds one exchange; zero: DefaultExchangeTimeout.
	Timeout time.Duration
	// AssertionTTL is the assertion's exp - iat; zero: DefaultAssertionTTL.
	AssertionTTL time.Duration
	// RefreshFraction of a token's lifetime after which it is refreshed;
	// zero: DefaultRefreshFraction.
	RefreshFraction float64
	// Now replaces time.Now (tests).
	Now func() time.Time
	// ContainerID, for clawker-agent, is the container the assertions
	// name (ContainerClaim): the token makes that container's binding
	// only, and Token.Assertion carries the assertion to show it.
	ContainerID string
}

// Token is an access token and when it stops being valid.
type Token struct {
	AccessToken string
	Expiry      time.Time
	Scope       string // as granted, space-separated
	// Assertion is the client assertion it was exchanged for, kept when
	// Config.ContainerID is set (the control plane verifies its container
	// claim beside the token, AgentAssertionHeader).
	Assertion string
}

// TokenSource hands out access tokens, exchanging a new client assertion
// when the cached token has lived RefreshFraction of its lifetime. It is
// safe for concurrent use: concurrent callers share one exchange.
type TokenSource struct {
	cfg    Config
	client *http.Client

	mu        sync.Mutex
	tok       *Token
	refreshAt time.Time
	retryAt   time.Time // no background refresh before this (after a failure)
	inflight  *exchange
}

type exchange struct {
	done chan struct{}
	tok  *Token
	err  error
}

// NewTokenSource checks cfg and returns a TokenSource. It makes no request.
func NewTokenSource(cfg Config) (*TokenSource, error) {
	u, err := url.Parse(cfg.TokenURL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("oauth: token URL %q is not an absolute URL", cfg.TokenURL)
	}
	if cfg.ClientID == "" {
		return nil, errors.New("oauth: client id is required")
	}
	if cfg.Key == nil {
		return nil, errors.New("oauth: signing key is required")
	}
	if cfg.Audience == "" {
		cfg.Audience = cfg.TokenURL
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultExchangeTimeout
	}
	if cfg.AssertionTTL <= 0 {
		cfg.AssertionTTL = DefaultAssertionTTL
	}
	if cfg.RefreshFraction <= 0 || cfg.RefreshFraction >= 1 {
		cfg.RefreshFraction = DefaultRefreshFraction
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	client := cfg.HTTPClient
	if client == nil {
		if u.Scheme != "https" {
			return nil, fmt.Errorf("oauth: token URL %q: want https", cfg.TokenURL)
		}
		if cfg.RootCAs == nil {
			return nil, errors.New("oauth: RootCAs (the clawker CA) is required")
		}
		client = &http.Client{
			Transport: &http.Transport{
				TLSClientConfig:   &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: cfg.RootCAs, ServerName: cfg.ServerName},
				ForceAttemptHTTP2: true,
				MaxIdleConns:      2,
				IdleConnTimeout:   30 * time.Second,
			},
			// A redirect would carry the assertion elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return &TokenSource{cfg: cfg, client: client}, nil
}

// ClientID is the client this source authenticates as.
func (s *TokenSource) ClientID() string { return s.cfg.ClientID }

// Token returns a valid access token: the cached one while it is fresh,
// otherwise the result of an exchange (shared with concurrent callers).
// Between the refresh point and expiry the cached token is still returned
// and the exchange runs in the background; a failed background refresh is
// retried, and reported once the token is about to expire.
func (s *TokenSource) Token(ctx context.Context) (*Token, error) {
	s.mu.Lock()
	now := s.cfg.Now()
	if s.tok != nil && now.Before(s.refreshAt) {
		t := s.tok
		s.mu.Unlock()
		return t, nil
	}
	if s.tok != nil && s.tok.Expiry.Sub(now) > minRemaining {
		t := s.tok
		if s.inflight == nil && !now.Before(s.retryAt) {
			s.startLocked()
		}
		s.mu.Unlock()
		return t, nil
	}
	x := s.inflight
	if x == nil {
		x = s.startLocked()
	}
	s.mu.Unlock()
	select {
	case <-x.done:
		return x.tok, x.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Invalidate drops the cached token, e.g. after the server answered
// Unauthenticated to it (Hydra restarted and forgot it): the next Token
// call exchanges a new assertion.
func (s *TokenSource) Invalidate() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tok = nil
	s.retryAt = time.Time{}
}

// startLocked runs one exchange detached from any caller's context, so a
// caller that gives up does not fail the others sharing it.
func (s *TokenSource) startLocked() *exchange {
	x := &exchange{done: make(chan struct{})}
	s.inflight = x
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
		defer cancel()
		start := s.cfg.Now()
		tok, lifetime, err := s.exchange(ctx)
		s.mu.Lock()
		if err == nil {
			s.tok = tok
			s.refreshAt = start.Add(time.Duration(float64(lifetime) * s.cfg.RefreshFraction))
			s.retryAt = time.Time{}
		} else {
			s.retryAt = s.cfg.Now().Add(retryAfterFailure)
		}
		s.inflight = nil
		x.tok, x.err = tok, err
		s.mu.Unlock()
		close(x.done)
	}()
	return x
}

type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope"`
}

type errorResponse struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
	Hint        string `json:"error_hint"`
}

// exchange trades a fresh client assertion for an access token. The
// expiry is counted from before the request left, so it errs early.
func (s *TokenSource) exchange(ctx context.Context) (*Token, time.Duration, error) {
	start := s.cfg.Now()
	assertion, err := Assertion{ClientID: s.cfg.ClientID, Audience: s.cfg.Audience, IssuedAt: start, TTL: s.cfg.AssertionTTL,
		ContainerID: s.cfg.ContainerID}.Sign(s.cfg.Key)
	if err != nil {
		return nil, 0, &Error{Kind: KindAssertion, URL: s.cfg.TokenURL, ClientID: s.cfg.ClientID, Err: err}
	}
	form := url.Values{
		"grant_type":            {"client_credentials"},
		"client_id":             {s.cfg.ClientID},
		"client_assertion_type": {AssertionType},
		"client_assertion":      {assertion},
	}
	if len(s.cfg.Scopes) > 0 {
		form.Set("scope", strings.Join(s.cfg.Scopes, " "))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, 0, &Error{Kind: KindBadResponse, URL: s.cfg.TokenURL, ClientID: s.cfg.ClientID, Err: err}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, 0, transportError(s.cfg.TokenURL, s.cfg.ClientID, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return nil, 0, transportError(s.cfg.TokenURL, s.cfg.ClientID, err)
	}
	bad := func(err error) (*Token, time.Duration, error) {
		return nil, 0, &Error{Kind: KindBadResponse, URL: s.cfg.TokenURL, ClientID: s.cfg.ClientID, StatusCode: resp.StatusCode, Err: err}
	}
	if resp.StatusCode != http.StatusOK {
		var e errorResponse
		if json.Unmarshal(body, &e) != nil || e.Error == "" {
			return bad(fmt.Errorf("no OAuth2 error in the body: %q", truncate(body, 200)))
		}
		desc := e.Description
		if e.Hint != "" && !strings.Contains(desc, e.Hint) {
			desc = strings.TrimSpace(desc + " " + e.Hint)
		}
		return nil, 0, &Error{Kind: KindRefused, URL: s.cfg.TokenURL, ClientID: s.cfg.ClientID, StatusCode: resp.StatusCode, Code: e.Error, Description: desc}
	}
	var tr tokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		return bad(fmt.Errorf("malformed token response: %w", err))
	}
	switch {
	case tr.AccessToken == "":
		return bad(errors.New("no access_token"))
	case !strings.EqualFold(tr.TokenType, "bearer"):
		return bad(fmt.Errorf("token_type %q, want bearer", tr.TokenType))
	case tr.ExpiresIn <= 0:
		return bad(fmt.Errorf("expires_in %d, want a positive lifetime", tr.ExpiresIn))
	}
	lifetime := time.Duration(tr.ExpiresIn) * time.Second
	tok := &Token{AccessToken: tr.AccessToken, Expiry: start.Add(lifetime), Scope: tr.Scope}
	if s.cfg.ContainerID != "" {
		tok.Assertion = assertion
	}
	return tok, lifetime, nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
