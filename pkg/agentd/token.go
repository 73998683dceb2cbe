package agentd

// The agent's token.
//
// When the control plane runs Ory, it creates a new binding (a certificate
// and container it has not registered yet) only for a Register that
// carries an access token of client clawker-agent with scope
// agent:self:register. `clawker run` mints the means to get one on the
// host, where the CLI's signing key lives: a client assertion (RFC 7523,
// private_key_jwt) for clawker-agent, aud Hydra's token endpoint as Hydra
// names itself, a random jti, valid ten minutes. It is copied in beside
// the certificate (--assertion), and clawkerd is told where Hydra's token
// endpoint is reachable from the container (--token-url: the control
// plane's address on clawker-net) and which audience the assertion must
// name (--token-audience).
//
// Before its first Register, clawkerd posts the assertion there once
// (client_credentials, TLS verified with --ca as --server-name, like the
// agent port) and sends the access token as "authorization: Bearer" on
// Register, with the assertion itself as "clawker-agent-assertion" (`clawker
// run` minted it after the container was created and it names the
// container, which the control plane checks against the certificate's:
// a token makes its own container's binding only), until one succeeds; the binding then exists, and every later
// Register (reconnects, a restarted control plane) goes without a token:
// the certificate minted for this container is the proof.
//
// A failed exchange is logged (agent_token_failed) and tried again with
// the reconnect backoff until the assertion expires. Past its exp, or when
// Hydra says its jti was used already (clawkerd started again in the same
// container), clawkerd gives up on the token (agent_token_abandoned) and
// registers without one: the control plane accepts that for an existing
// binding and refuses it, for good, for a new one.
//
// clawkerd does not verify the assertion (Hydra does): it reads sub, aud
// and exp from it, with the standard library, so that it needs no JOSE
// library.

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
)

const (
	// clientAssertionType is RFC 7523's client_assertion_type (the same
	// as pkg/oauth's AssertionType, which clawkerd does not import).
	clientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	// assertionHeader carries the assertion on Register (pkg/oauth's
	// AgentAssertionHeader).
	assertionHeader = "clawker-agent-assertion"
	// agentScope is the scope the token is asked for, the one the control
	// plane requires of a Register that creates a binding.
	agentScope = "agent:self:register"
	// exchangeTimeout bounds one exchange, connection included.
	exchangeTimeout = 10 * time.Second
	// maxTokenResponse bounds what is read of the endpoint's answer.
	maxTokenResponse = 1 << 20
	// maxAssertion bounds the assertion file.
	maxAssertion = 16 << 10
)

// assertion is the client assertion as far as clawkerd reads it.
type assertion struct {
	jws      string
	clientID string // sub (= iss)
	audience []string
	exp      time.Time
}

// parseAssertion reads the claims of a compact JWS without verifying its
// signature.
func parseAssertion(b []byte) (assertion, error) {
	jws := strings.TrimSpace(string(b))
	parts := strings.Split(jws, ".")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return assertion{}, errors.New("not a compact JWS (header.payload.signature)")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return assertion{}, fmt.Errorf("payload: %v", err)
	}
	var c struct {
		Iss string          `json:"iss"`
		Sub string          `json:"sub"`
		Aud json.RawMessage `json:"aud"`
		Exp json.Number     `json:"exp"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return assertion{}, fmt.Errorf("claims: %v", err)
	}
	a := assertion{jws: jws, clientID: c.Sub}
	if a.clientID == "" || c.Iss != c.Sub {
		return assertion{}, fmt.Errorf("iss %q and sub %q must both name the client", c.Iss, c.Sub)
	}
	var one string
	if err := json.Unmarshal(c.Aud, &one); err == nil {
		a.audience = []string{one}
	} else if err := json.Unmarshal(c.Aud, &a.audience); err != nil || len(a.audience) == 0 {
		return assertion{}, errors.New("no aud")
	}
	exp, err := c.Exp.Float64()
	if err != nil || exp <= 0 {
		return assertion{}, errors.New("no exp")
	}
	a.exp = time.Unix(int64(exp), 0)
	return a, nil
}

// tokenState is where the agent's token stands.
type tokenState int

const (
	tokenPending   tokenState = iota // no token yet; the next Register exchanges first
	tokenHeld                        // a token, sent on every Register until one succeeds
	tokenSpent                       // a Register succeeded: the binding exists
	tokenAbandoned                   // assertion expired or used: register without a token
)

// agentToken is the exchange and its outcome. Only the connect loop's
// goroutine touches it.
type agentToken struct {
	url       string
	assertion assertion
	client    *http.Client

	state    tokenState
	token    string
	attempts int
}

// agentToken reads the assertion and prepares its exchange; nil without
// --assertion. tlsCfg is the agent port's client config: its roots and
// server name verify the token endpoint too (no client certificate is
// presented there).
func (c Config) agentToken(tlsCfg *tls.Config) (*agentToken, error) {
	if c.AssertionFile == "" {
		return nil, nil
	}
	f, err := os.Open(c.AssertionFile)
	if err != nil {
		return nil, configErr("assertion", "%v", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxAssertion+1))
	if err != nil {
		return nil, configErr("assertion", "%v", err)
	}
	if len(b) > maxAssertion {
		return nil, configErr("assertion", "%s is larger than %d bytes", c.AssertionFile, maxAssertion)
	}
	as, err := parseAssertion(b)
	if err != nil {
		return nil, configErr("assertion", "%s is not a client assertion: %v", c.AssertionFile, err)
	}
	if c.TokenAudience != "" && !slices.Contains(as.audience, c.TokenAudience) {
		return nil, configErr("token-audience", "%q, but the assertion in %s is addressed to %q", c.TokenAudience, c.AssertionFile, as.audience)
	}
	return &agentToken{
		url:       c.TokenURL,
		assertion: as,
		client: &http.Client{
			Timeout: exchangeTimeout,
			Transport: &http.Transport{
				// No Proxy: an HTTPS_PROXY in the image's environment must
				// not see the assertion.
				TLSClientConfig:   &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: tlsCfg.RootCAs, ServerName: tlsCfg.ServerName},
				ForceAttemptHTTP2: true,
				IdleConnTimeout:   30 * time.Second,
			},
			// A redirect would carry the assertion elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// exchangeError is a failed exchange.
type exchangeError struct {
	status      int    // HTTP status; 0 without an answer
	code        string // OAuth2 error, e.g. invalid_client, jti_known
	description string
	err         error // transport or decoding error
}

func (e *exchangeError) Error() string {
	switch {
	case e.code != "":
		msg := fmt.Sprintf("token endpoint refused: HTTP %d %s", e.status, e.code)
		if e.description != "" {
			msg += ": " + e.description
		}
		return msg
	case e.status != 0:
		return fmt.Sprintf("token endpoint: HTTP %d: %v", e.status, e.err)
	}
	return fmt.Sprintf("token endpoint unreachable: %v", e.err)
}

// jtiKnown reports Hydra's refusal of an assertion whose jti it has seen:
// this assertion was exchanged already and never will be again.
func (e *exchangeError) jtiKnown() bool { return e.code == "jti_known" }

// issued is an access token as the endpoint issued it.
type issued struct {
	token     string
	scope     string
	expiresIn time.Duration
}

// exchange posts the assertion once (client_credentials, private_key_jwt).
func (t *agentToken) exchange(ctx context.Context) (issued, error) {
	form := url.Values{
		"grant_type":            {"client_credentials"},
		"client_id":             {t.assertion.clientID},
		"client_assertion_type": {clientAssertionType},
		"client_assertion":      {t.assertion.jws},
		"scope":                 {agentScope},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, strings.NewReader(form.Encode()))
	if err != nil {
		return issued{}, &exchangeError{err: err}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := t.client.Do(req)
	if err != nil {
		return issued{}, &exchangeError{err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse))
	if err != nil {
		return issued{}, &exchangeError{status: resp.StatusCode, err: err}
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		if json.Unmarshal(body, &e) != nil || e.Error == "" {
			return issued{}, &exchangeError{status: resp.StatusCode, err: fmt.Errorf("no OAuth2 error in %q", truncate(body, 200))}
		}
		return issued{}, &exchangeError{status: resp.StatusCode, code: e.Error, description: e.Description}
	}
	var tr struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int64  `json:"expires_in"`
		Scope       string `json:"scope"`
	}
	switch err := json.Unmarshal(body, &tr); {
	case err != nil:
		return issued{}, &exchangeError{status: resp.StatusCode, err: fmt.Errorf("malformed token response: %v", err)}
	case tr.AccessToken == "" || !strings.EqualFold(tr.TokenType, "bearer"):
		return issued{}, &exchangeError{status: resp.StatusCode, err: fmt.Errorf("no bearer access_token (token_type %q)", tr.TokenType)}
	}
	return issued{token: tr.AccessToken, scope: tr.Scope, expiresIn: time.Duration(tr.ExpiresIn) * time.Second}, nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// errNoToken ends an attempt whose exchange failed while the assertion is
// still good: the connect loop tries again after its backoff.
var errNoToken = errors.New("no agent token yet")

// bearer is the token to send on the next Register, "" for none. The
// first call exchanges the assertion; a failure that is worth another try
// returns an error wrapping errNoToken.
func (a *agent) bearer(ctx context.Context) (string, error) {
	t := a.token
	if t == nil {
		return "", nil
	}
	switch t.state {
	case tokenHeld:
		return t.token, nil
	case tokenSpent, tokenAbandoned:
		return "", nil
	}
	exp := t.assertion.exp
	if !time.Now().Before(exp) {
		t.abandon()
		a.log.error("agent_token_abandoned", "the client assertion expired before it could be exchanged; registering without a token: "+
			"the control plane accepts that for this agent's existing binding only, and refuses to create one",
			"reason", "assertion_expired", "assertion_exp", exp.UTC().Format(time.RFC3339), "attempts", t.attempts, "token_url", t.url)
		return "", nil
	}
	t.attempts++
	xctx, cancel := context.WithTimeout(ctx, exchangeTimeout)
	tok, err := t.exchange(xctx)
	cancel()
	if err == nil {
		t.state, t.token = tokenHeld, tok.token
		t.client.CloseIdleConnections()
		a.log.info("agent_token_obtained", "exchanged the client assertion for an access token", "token_url", t.url,
			"scope", tok.scope, "expires_in", tok.expiresIn.String(), "attempt", t.attempts)
		return t.token, nil
	}
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	var xe *exchangeError
	if errors.As(err, &xe) && xe.jtiKnown() {
		t.abandon()
		a.log.warn("agent_token_abandoned", "the client assertion was exchanged already (clawkerd started again in this container?); "+
			"registering without a token: the control plane accepts that for this agent's existing binding only",
			"reason", "assertion_used", "token_url", t.url, "error", err.Error(), "attempt", t.attempts)
		return "", nil
	}
	left := time.Until(exp)
	a.log.warn("agent_token_failed", "cannot exchange the client assertion for an access token, will retry until it expires",
		"token_url", t.url, "error", err.Error(), "attempt", t.attempts,
		"assertion_expires_in", left.Round(time.Second).String(), "assertion_exp", exp.UTC().Format(time.RFC3339))
	return "", fmt.Errorf("%w: %v", errNoToken, err)
}

// abandon stops trying: the token is never had.
func (t *agentToken) abandon() {
	t.state = tokenAbandoned
	t.client.CloseIdleConnections()
}

// registered records a successful Register: the binding exists, and no
// later Register needs the token.
func (a *agent) registered() {
	if t := a.token; t != nil && t.state == tokenHeld {
		t.state, t.token = tokenSpent, ""
	}
}
