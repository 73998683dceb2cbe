package agentrun

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/clawker/clawker-cp/pkg/oauth"
)

const (
	testTokenURL = "https://172.30.0.202:4444/oauth2/token"
	testAudience = "https://127.0.0.1:4444/oauth2/token"
)

// With Spec.Token (the control plane runs Ory), Create copies a client
// assertion for clawker-agent beside the certificate, with the same mode
// and owner, and tells clawkerd where to exchange it.
func TestCreateAgentToken(t *testing.T) {
	d := newFake()
	d.images["agent:1"] = fakeImage{Entrypoint: []string{"/agent"}, User: "1000:1001"}
	s := testSpec(t, "agent:1")
	s.Token = &Token{URL: testTokenURL, Audience: testAudience}
	before := time.Now()
	res, err := Create(context.Background(), d, s)
	if err != nil {
		t.Fatal(err)
	}
	c := d.containers[res.ID]
	var names []string
	var body []byte
	for _, e := range c.Copied {
		names = append(names, e.Header.Name)
		if e.Header.Name == "clawker/agent.assertion" {
			body = e.Body
			if e.Header.Mode != 0o400 || e.Header.Uid != 1000 || e.Header.Gid != 1001 {
				t.Errorf("assertion: mode %o owner %d:%d, want 0400 1000:1001", e.Header.Mode, e.Header.Uid, e.Header.Gid)
			}
		}
	}
	if !slices.Equal(names, []string{"clawker/", "clawker/clawkerd", "clawker/ca.crt", "clawker/agent.crt", "clawker/agent.key", "clawker/agent.assertion"}) {
		t.Fatalf("copied %q", names)
	}

	// Signed by the CLI's signing key (the JWKS Hydra holds for
	// clawker-agent), naming clawker-agent and Hydra's own token URL.
	tok, err := jwt.ParseSigned(string(body), []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	var cl jwt.Claims
	if err := tok.Claims(&s.Auth.SigningKey.PublicKey, &cl); err != nil {
		t.Fatalf("signature: %v", err)
	}
	// It names the container it was minted for, as the CP verifies it.
	if got, err := oauth.VerifyAgentAssertion(string(body), s.Auth.SigningJWK); err != nil || got.ContainerID != res.ID {
		t.Errorf("container claim %+v (%v), want %s", got, err, res.ID)
	}
	if kid := tok.Headers[0].KeyID; kid != s.Auth.SigningJWK.Keys[0].Kid {
		t.Errorf("kid %q, want the JWKS's %q", kid, s.Auth.SigningJWK.Keys[0].Kid)
	}
	if cl.Issuer != oauth.ClientAgent || cl.Subject != oauth.ClientAgent || !slices.Equal([]string(cl.Audience), []string{testAudience}) || len(cl.ID) < 16 {
		t.Errorf("claims %+v", cl)
	}
	exp := cl.Expiry.Time()
	if life := exp.Sub(before); life < AssertionValidity-2*time.Second || life > AssertionValidity+time.Second {
		t.Errorf("exp %s is %s from the start, want about %s", exp, life, AssertionValidity)
	}
	if !exp.Equal(res.AssertionNotAfter) || exp.Sub(cl.IssuedAt.Time()) != AssertionValidity {
		t.Errorf("exp %s, iat %s, result says %s", exp, cl.IssuedAt.Time(), res.AssertionNotAfter)
	}

	env := c.Opts.Config.Env
	for _, want := range []string{
		"CLAWKERD_TOKEN_URL=" + testTokenURL, "CLAWKERD_TOKEN_AUDIENCE=" + testAudience, "CLAWKERD_ASSERTION=/clawker/agent.assertion",
	} {
		if !slices.Contains(env, want) {
			t.Errorf("env %q lacks %q", env, want)
		}
	}

	// Two agents, two assertions: each jti is good for one exchange.
	s.Agent = "review"
	res2, err := Create(context.Background(), d, s)
	if err != nil {
		t.Fatal(err)
	}
	other := d.containers[res2.ID].Copied
	if b := other[len(other)-1].Body; string(b) == string(body) {
		t.Error("the second agent got the first one's assertion")
	}
}

// Without Spec.Token (no Ory) nothing of the token is there: no file
// (TestCreateInjectsCredentials lists every entry), no setting.
func TestCreateWithoutAgentToken(t *testing.T) {
	d := newFake()
	d.images["agent:1"] = fakeImage{Entrypoint: []string{"/agent"}}
	res, err := Create(context.Background(), d, testSpec(t, "agent:1"))
	if err != nil {
		t.Fatal(err)
	}
	c := d.containers[res.ID]
	if slices.ContainsFunc(c.Copied, func(e tarEntry) bool { return strings.Contains(e.Header.Name, "assertion") }) ||
		slices.ContainsFunc(c.Opts.Config.Env, func(e string) bool {
			return strings.HasPrefix(e, EnvTokenURL) || strings.HasPrefix(e, EnvTokenAudience) || strings.HasPrefix(e, EnvAssertion)
		}) || !res.AssertionNotAfter.IsZero() {
		t.Errorf("copied %v, env %q, assertion exp %s", c.Copied, c.Opts.Config.Env, res.AssertionNotAfter)
	}
}

// A token without its endpoint, or without a signing key to mint the
// assertion, is refused before any container exists.
func TestCreateAgentTokenRefusals(t *testing.T) {
	d := newFake()
	d.images["agent:1"] = fakeImage{Entrypoint: []string{"/agent"}}
	s := testSpec(t, "agent:1")
	s.Token = &Token{URL: testTokenURL}
	if _, err := Create(context.Background(), d, s); err == nil || !strings.Contains(err.Error(), "audience") {
		t.Errorf("no audience: %v", err)
	}
	s.Token = &Token{URL: testTokenURL, Audience: testAudience}
	m := *s.Auth
	m.SigningKey = nil
	s.Auth = &m
	if _, err := Create(context.Background(), d, s); err == nil || !strings.Contains(err.Error(), "signing key") {
		t.Errorf("no signing key: %v", err)
	}
	if len(d.containers) != 0 || slices.Contains(d.calls, "ContainerCreate") {
		t.Errorf("calls %v", d.calls)
	}
}

// AgentAssertion's validity defaults to AssertionValidity; a custom one
// is honoured.
func TestAgentAssertionValidity(t *testing.T) {
	m := testAuth(t)
	now := time.Date(2026, 5, 12, 9, 0, 0, 0, time.UTC)
	for _, c := range []struct{ in, want time.Duration }{{0, AssertionValidity}, {time.Minute, time.Minute}} {
		jws, exp, err := AgentAssertion(m.SigningKey, testAudience, testCID, now, c.in)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := jwt.ParseSigned(jws, []jose.SignatureAlgorithm{jose.ES256})
		if err != nil {
			t.Fatal(err)
		}
		var cl jwt.Claims
		var priv struct {
			Container string `json:"clawker_container"`
		}
		if err := tok.Claims(&m.SigningKey.PublicKey, &cl, &priv); err != nil {
			t.Fatal(err)
		}
		if priv.Container != testCID {
			t.Errorf("container claim %q, want %s", priv.Container, testCID)
		}
		if !exp.Equal(now.Add(c.want)) || !cl.Expiry.Time().Equal(exp) || !cl.IssuedAt.Time().Equal(now) {
			t.Errorf("validity %s: exp %s (claim %s), iat %s", c.in, exp, cl.Expiry.Time(), cl.IssuedAt.Time())
		}
	}
	if _, _, err := AgentAssertion(nil, testAudience, testCID, now, 0); err == nil {
		t.Error("no key: no error")
	}
	if _, _, err := AgentAssertion(m.SigningKey, testAudience, "", now, 0); err == nil {
		t.Error("no container: no error")
	}
}

// testCID is a container id for the assertions minted here.
var testCID = strings.Repeat("c1", 32)
