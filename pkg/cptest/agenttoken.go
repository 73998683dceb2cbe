package cptest

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/oauth"
)

// HydraPublic is Hydra's public port (the token endpoint).
func (p Ports) HydraPublic() int { return p["control_plane.hydra_public_port"] }

// HydraTokenURL is the token endpoint of a control plane on this home, as
// Hydra names itself and as a process on the host reaches it:
// https://127.0.0.1:<hydra_public_port>/oauth2/token.
func (h *Home) HydraTokenURL(t testing.TB) string {
	t.Helper()
	return "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(h.Ports(t).HydraPublic())) + "/oauth2/token"
}

// AgentToken is what clawkerd needs to get its clawker-agent token before
// its first Register (--assertion, --token-url, --token-audience): a
// control plane running Ory refuses a new binding without one.
type AgentToken struct {
	Assertion string // the file
	URL       string
	Audience  string
}

// AssertionValidity is how long WriteAgentToken's assertions are valid,
// as `clawker run`'s are (agentrun.AssertionValidity; that package embeds
// the binaries, so cptest does not import it).
const AssertionValidity = 10 * time.Minute

// WriteAgentToken mints a clawker-agent client assertion as `clawker run`
// does (signed with m's signing key, aud the home's Hydra token URL, a
// random jti, valid AssertionValidity, for the container named by the
// agent certificate in dir/agent.crt) into dir/agent.assertion (0400),
// for a clawkerd on the host that exchanges it on loopback. One per
// directory, as one per container: when the file exists it is reused,
// and a clawkerd started again with it registers its existing binding
// without a token, as a restarted agent does.
func WriteAgentToken(t testing.TB, h *Home, m *certs.Material, dir string) AgentToken {
	t.Helper()
	url := h.HydraTokenURL(t)
	path := filepath.Join(dir, "agent.assertion")
	if _, err := os.Stat(path); err == nil {
		return AgentToken{Assertion: path, URL: url, Audience: url}
	}
	id, err := agentIDOf(filepath.Join(dir, "agent.crt"))
	if err != nil {
		t.Fatalf("cptest: the agent's container: %v", err)
	}
	jws, err := oauth.Assertion{ClientID: oauth.ClientAgent, Audience: url, IssuedAt: time.Now().Truncate(time.Second), TTL: AssertionValidity,
		ContainerID: id.ContainerID}.Sign(m.SigningKey)
	if err != nil {
		t.Fatalf("cptest: minting an agent assertion: %v", err)
	}
	if err := os.WriteFile(path, []byte(jws), 0o400); err != nil {
		t.Fatalf("cptest: %v", err)
	}
	return AgentToken{Assertion: path, URL: url, Audience: url}
}

// AgentTokenCreds is a dial option that puts a clawker-agent access token
// for containerID (scope agent:self:register, from the home's Hydra,
// obtained on first use and shared by every connection dialled with it)
// and the assertion it was exchanged for on each call, as clawkerd sends
// them on its first Register. A control plane running Ory needs them for
// a Register that creates a binding: the binding of that container only.
func AgentTokenCreds(t testing.TB, h *Home, m *certs.Material, containerID string) grpc.DialOption {
	t.Helper()
	return grpc.WithPerRPCCredentials(&oauth.PerRPCCredentials{Source: agentTokenSource(t, h, m, containerID)})
}

// AgentTokenCredsFetched is AgentTokenCreds with the token fetched now,
// so that a burst of Registers is not also a burst of token exchanges.
func AgentTokenCredsFetched(t testing.TB, h *Home, m *certs.Material, containerID string) grpc.DialOption {
	t.Helper()
	ts := agentTokenSource(t, h, m, containerID)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := ts.Token(ctx); err != nil {
		t.Fatalf("cptest: a clawker-agent token for container %.12s: %v", containerID, err)
	}
	return grpc.WithPerRPCCredentials(&oauth.PerRPCCredentials{Source: ts})
}

func agentTokenSource(t testing.TB, h *Home, m *certs.Material, containerID string) *oauth.TokenSource {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(m.CA)
	ts, err := oauth.NewTokenSource(oauth.Config{
		TokenURL: h.HydraTokenURL(t), ClientID: oauth.ClientAgent, Scopes: []string{oauth.ScopeAgentRegister},
		Key: m.SigningKey, RootCAs: pool, ServerName: certs.ServerCommonName, ContainerID: containerID,
	})
	if err != nil {
		t.Fatalf("cptest: agent token source: %v", err)
	}
	return ts
}

// agentIDOf reads the identity of the first certificate in path.
func agentIDOf(path string) (certs.AgentIdentity, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return certs.AgentIdentity{}, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return certs.AgentIdentity{}, fmt.Errorf("%s holds no PEM certificate", path)
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return certs.AgentIdentity{}, err
	}
	return certs.ParseAgentIdentity(leaf)
}
