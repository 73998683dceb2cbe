package ory

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/clawker/clawker-cp/pkg/certs"
)

// Client is an OAuth2 client as Hydra's admin API spells it, restricted to
// the fields clawker sets.
type Client struct {
	ClientID                    string      `json:"client_id"`
	ClientName                  string      `json:"client_name,omitempty"`
	GrantTypes                  []string    `json:"grant_types"`
	ResponseTypes               []string    `json:"response_types,omitempty"`
	Scope                       string      `json:"scope"`
	Audience                    []string    `json:"audience,omitempty"`
	TokenEndpointAuthMethod     string      `json:"token_endpoint_auth_method"`
	TokenEndpointAuthSigningAlg string      `json:"token_endpoint_auth_signing_alg,omitempty"`
	JWKS                        *certs.JWKS `json:"jwks,omitempty"`
}

// ClawkerClients are the two clients clawker registers: clawker-cli (scope
// admin) and clawker-agent (scope agent:self:register). Both use the
// client_credentials grant and authenticate with a client assertion
// (private_key_jwt, ES256) signed by the CLI's signing key, whose public
// half is jwks: the CLI mints the agents' assertions too.
func ClawkerClients(jwks *certs.JWKS) []Client {
	mk := func(id, name, scope string) Client {
		return Client{
			ClientID:                    id,
			ClientName:                  name,
			GrantTypes:                  []string{"client_credentials"},
			Scope:                       scope,
			TokenEndpointAuthMethod:     "private_key_jwt",
			TokenEndpointAuthSigningAlg: "ES256",
			JWKS:                        jwks,
		}
	}
	return []Client{
		mk(ClientCLI, "clawker CLI", ScopeAdmin),
		mk(ClientAgent, "clawker agent (clawkerd)", ScopeAgentRegister),
	}
}

// ErrClientNotFound is GetClient's answer for an unknown client id.
var ErrClientNotFound = errors.New("ory: no such OAuth2 client")

// APIError is a non-2xx answer of Hydra's admin API.
type APIError struct {
	Method, URL string
	Status      int
	Body        string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("hydra admin: %s %s: HTTP %d: %s", e.Method, e.URL, e.Status, e.Body)
}

// Admin is a client of Hydra's admin API.
type Admin struct {
	BaseURL string // e.g. http://127.0.0.1:4445
	HTTP    *http.Client
}

// NewAdmin returns an Admin for baseURL with a 5 s timeout per request and
// no proxy.
func NewAdmin(baseURL string) *Admin {
	c := newHTTPClient(nil)
	c.Timeout = 5 * time.Second
	return &Admin{BaseURL: baseURL, HTTP: c}
}

func (a *Admin) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	u := a.BaseURL + path
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := a.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("hydra admin: %s %s: %w", method, u, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("hydra admin: %s %s: reading the answer: %w", method, u, err)
	}
	if res.StatusCode/100 != 2 {
		return &APIError{Method: method, URL: u, Status: res.StatusCode, Body: string(bytes.TrimSpace(data))}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("hydra admin: %s %s: decoding the answer: %w", method, u, err)
		}
	}
	return nil
}

func clientPath(id string) string { return "/admin/clients/" + url.PathEscape(id) }

// UpsertClient creates c, or replaces the client with its id if one exists.
func (a *Admin) UpsertClient(ctx context.Context, c Client) error {
	err := a.do(ctx, http.MethodPost, "/admin/clients", c, nil)
	var apiErr *APIError
	if errors.As(err, &apiErr) && apiErr.Status == http.StatusConflict {
		err = a.do(ctx, http.MethodPut, clientPath(c.ClientID), c, nil)
	}
	if err != nil {
		return fmt.Errorf("registering OAuth2 client %s: %w", c.ClientID, err)
	}
	return nil
}

// GetClient reads the client with id back.
func (a *Admin) GetClient(ctx context.Context, id string) (*Client, error) {
	var c Client
	err := a.do(ctx, http.MethodGet, clientPath(id), nil, &c)
	var apiErr *APIError
	if errors.As(err, &apiErr) && apiErr.Status == http.StatusNotFound {
		return nil, fmt.Errorf("%w: %s", ErrClientNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// DeleteClient removes the client with id; an unknown id is not an error.
func (a *Admin) DeleteClient(ctx context.Context, id string) error {
	err := a.do(ctx, http.MethodDelete, clientPath(id), nil, nil)
	var apiErr *APIError
	if errors.As(err, &apiErr) && apiErr.Status == http.StatusNotFound {
		return nil
	}
	return err
}

// RegisterClawkerClients upserts ClawkerClients(jwks).
func (a *Admin) RegisterClawkerClients(ctx context.Context, jwks *certs.JWKS) error {
	if jwks == nil || len(jwks.Keys) == 0 {
		return errors.New("ory: no signing key to register the clients with")
	}
	for _, c := range ClawkerClients(jwks) {
		if err := a.UpsertClient(ctx, c); err != nil {
			return err
		}
	}
	return nil
}
