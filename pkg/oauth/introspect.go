package oauth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// IntrospectPath is Hydra's RFC 7662 endpoint on its admin port.
const IntrospectPath = "/admin/oauth2/introspect"

// Introspection is Hydra's answer about one token (RFC 7662 section 2.2).
type Introspection struct {
	Active    bool   `json:"active"`
	Scope     string `json:"scope"`
	ClientID  string `json:"client_id"`
	Subject   string `json:"sub"`
	Expiry    int64  `json:"exp"`
	IssuedAt  int64  `json:"iat"`
	TokenType string `json:"token_type"`
	// TokenUse is Hydra's "access_token" or "refresh_token".
	TokenUse string `json:"token_use"`
}

// HasScope reports whether scope is one of the granted scopes.
func (i *Introspection) HasScope(scope string) bool {
	for _, s := range strings.Fields(i.Scope) {
		if s == scope {
			return true
		}
	}
	return false
}

// ExpiresAt is exp as a time (zero when Hydra sent none).
func (i *Introspection) ExpiresAt() time.Time {
	if i.Expiry == 0 {
		return time.Time{}
	}
	return time.Unix(i.Expiry, 0)
}

// Introspector asks Hydra's admin API about bearer tokens.
type Introspector struct {
	url    string
	client *http.Client
}

// NewIntrospector returns an Introspector for adminURL (Hydra's admin
// base URL, http or https). rootCAs verifies an https admin endpoint;
// serverName, when set, is the name its certificate must carry. Each
// request's bound comes from the caller's context.
func NewIntrospector(adminURL string, rootCAs *x509.CertPool, serverName string) (*Introspector, error) {
	u, err := url.Parse(adminURL)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("oauth: hydra admin URL %q is not an absolute http(s) URL", adminURL)
	}
	if u.Scheme == "https" && rootCAs == nil {
		return nil, errors.New("oauth: an https hydra admin URL needs the clawker CA")
	}
	tr := &http.Transport{
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        16,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}
	if u.Scheme == "https" {
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: rootCAs, ServerName: serverName}
	}
	return &Introspector{
		url: strings.TrimSuffix(u.String(), "/") + IntrospectPath,
		client: &http.Client{
			Transport:     tr,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// URL is the introspection endpoint asked.
func (c *Introspector) URL() string { return c.url }

// Introspect asks whether token is active and what it grants. An error
// means no answer was had (unreachable, timeout, non-200, bad JSON); the
// caller must then refuse the token.
func (c *Introspector) Introspect(ctx context.Context, token string) (*Introspection, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, strings.NewReader(url.Values{"token": {token}}.Encode()))
	if err != nil {
		return nil, fmt.Errorf("introspection request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("introspection endpoint %s: %w", c.url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return nil, fmt.Errorf("introspection endpoint %s: reading the answer: %w", c.url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("introspection endpoint %s: HTTP %d: %s", c.url, resp.StatusCode, truncate(body, 200))
	}
	var out Introspection
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("introspection endpoint %s: malformed answer: %w", c.url, err)
	}
	return &out, nil
}
