//go:build linux

package agentd

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/oauth"
	"github.com/clawker/clawker-cp/pkg/oauth/hydratest"
)

// TestAgentTokenWithHydra is the agent's token end to end against a real
// Hydra set up as the control plane sets it up: an assertion minted as
// `clawker run` mints it (clawker-agent, aud Hydra's own token URL, valid
// ten minutes) is exchanged by clawkerd at another spelling of the
// endpoint, the token it sends on Register introspects as an active
// clawker-agent access token with scope agent:self:register, and a
// clawkerd started again with the same assertion is told its jti is known
// and registers without a token.
func TestAgentTokenWithHydra(t *testing.T) {
	e := newEnv(t)
	h := hydratest.Start(t, e.m, hydratest.Options{})
	h.RegisterClawkerClients(t, e.m.SigningJWK)

	// As agentrun.AgentAssertion mints it (that package embeds the
	// binaries: too heavy for this test).
	jws, err := oauth.Assertion{ClientID: oauth.ClientAgent, Audience: h.TokenURL, IssuedAt: time.Now().Truncate(time.Second), TTL: 10 * time.Minute,
		ContainerID: testContainerID}.Sign(e.m.SigningKey)
	if err != nil {
		t.Fatal(err)
	}
	path := e.path("agent.assertion")
	if err := os.WriteFile(path, []byte(jws), 0o400); err != nil {
		t.Fatal(err)
	}
	// Reached as "localhost": the audience, not the URL posted to, is what
	// Hydra checks.
	e.cfg.AssertionFile, e.cfg.TokenAudience = path, h.TokenURL
	e.cfg.TokenURL = strings.Replace(h.TokenURL, "127.0.0.1", "localhost", 1)

	first := e.run()
	e.cp.nextSession(t)
	regs := e.cp.registrations()
	if len(regs) != 1 || len(regs[0].auth) != 1 || !strings.HasPrefix(regs[0].auth[0], "Bearer ") {
		t.Fatalf("registrations %+v, want one with a bearer token", regs)
	}
	intro, err := oauth.NewIntrospector(h.AdminURL, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in, err := intro.Introspect(ctx, strings.TrimPrefix(regs[0].auth[0], "Bearer "))
	if err != nil {
		t.Fatal(err)
	}
	if !in.Active || in.ClientID != oauth.ClientAgent || !in.HasScope(oauth.ScopeAgentRegister) || in.HasScope(oauth.ScopeAdmin) || in.TokenUse != "access_token" {
		t.Errorf("introspection = %+v, want an active clawker-agent access token with scope %s only", in, oauth.ScopeAgentRegister)
	}
	first.cancel()
	first.wait(t)

	// The same container started again: Hydra refuses the known jti.
	e.logs = &logSink{}
	e.cfg.Logger = NewLogger(e.logs)
	e.run()
	e.cp.nextSession(t)
	regs = e.cp.registrations()
	if len(regs) != 2 || len(regs[1].auth) != 0 {
		t.Fatalf("registrations %+v, want a second one without a token", regs)
	}
	if ev := e.logs.waitEvent(t, "agent_token_abandoned"); ev["reason"] != "assertion_used" {
		t.Errorf("agent_token_abandoned = %v", ev)
	}
	if n := len(e.logs.events(t, "agent_token_failed")); n != 0 {
		t.Errorf("%d agent_token_failed: a used assertion is not retried", n)
	}
}
