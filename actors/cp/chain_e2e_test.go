package cp_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/clawker/clawker-cp/pkg/agentdb"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cptest"
	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

// TestThreeDayOldAgentRegistersAfterRestart: an agent whose chain was
// minted three days ago (certs.DefaultAgentChain with its start 72 h back,
// as `clawker run` would have minted it then) and whose binding the
// registry has held since then re-registers with a control plane started
// now: the real clawkerd presents the leaf of its chain valid now, the
// registry finds the binding by the key (created=false, registered_at
// three days back) with no token, though the CP runs Ory and would refuse
// a new binding without one. Its first leaf alone, long expired, is
// refused in the handshake (the age is real), and a leaf of another key
// for the same container is refused (container_bound).
func TestThreeDayOldAgentRegistersAfterRestart(t *testing.T) {
	t.Parallel()
	w := newWorld(t, fastSessions(heartbeat))
	id := certs.AgentIdentity{Project: "proj", Agent: "old", ContainerID: cptest.RandomContainerID(t)}
	minted := time.Now().Add(-72 * time.Hour)
	chain := certs.DefaultAgentChain
	chain.Start = minted
	chainPEM, keyPEM, err := w.m.MintAgentChain(id, chain)
	if err != nil {
		t.Fatal(err)
	}
	leaves := parseLeaves(t, chainPEM)
	files := cptest.AgentFiles{ID: id, Leaf: leaves[0], Dir: t.TempDir()}
	files.CA, files.Cert, files.Key = filepath.Join(files.Dir, "ca.crt"), filepath.Join(files.Dir, "agent.crt"), filepath.Join(files.Dir, "agent.key")
	writeFile(t, files.CA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: w.m.CA.Raw}))
	writeFile(t, files.Cert, chainPEM)
	writeFile(t, files.Key, keyPEM)

	// The binding as the control plane of three days ago wrote it, when
	// the agent registered with its first leaf.
	db, err := agentdb.Open(context.Background(), w.paths.RegistryDB)
	if err != nil {
		t.Fatal(err)
	}
	bound, _, err := db.Register(context.Background(), agentdb.Agent{Project: id.Project, AgentName: id.Agent, ContainerID: id.ContainerID,
		Thumbprint: certs.KeyThumbprint(leaves[0]), RegisteredAt: minted})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	r := w.start(t)
	// The first leaf alone: expired a day ago.
	first := tlsPEM(t, leaves[0])
	cfg, err := certs.AgentClientTLSConfig(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: w.m.CA.Raw}), first, keyPEM, certs.ServerCommonName)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := registerOnce(t, w.agentAddr(), cfg, id); err == nil {
		t.Fatal("the chain's first leaf, expired a day ago, was accepted")
	}

	// The real clawkerd, without a token.
	d := cptest.StartClawkerd(t, w.home, w.bin, cptest.ClawkerdConfig{CPAddr: w.agentAddr(), Files: files, Heartbeat: heartbeat, MaxBackoff: maxBackoff})
	r.waitConnected(t, files.Name())
	listed := r.waitListedConnected(t, files, true)
	if listed.GetKey() != bound.Key || listed.GetKey() != agentdb.Key(certs.KeyThumbprint(leaves[3]), id.ContainerID) ||
		!listed.GetRegisteredAt().AsTime().Equal(minted.UTC()) {
		t.Errorf("listed key %s registered %v; want the three-day-old binding %s registered %v",
			listed.GetKey(), listed.GetRegisteredAt().AsTime(), bound.Key, minted.UTC())
	}
	reg := r.events("agent_registered")
	if len(reg) == 0 || reg[0]["created"] != false || reg[0]["leaf_thumbprint"] != certs.Thumbprint(leaves[3]) {
		t.Errorf("agent_registered %v; want created=false with the leaf valid now (leaf 4 of the chain, %s…)", reg, certs.Thumbprint(leaves[3])[:12])
	}
	if got := d.EventCount("registered"); got < 1 {
		t.Errorf("clawkerd logged %d registered lines", got)
	}
	if got := d.EventCount("agent_certs_exhausted"); got != 0 {
		t.Errorf("clawkerd logged agent_certs_exhausted with 28 days of chain left")
	}

	// A leaf of another key for the same container.
	other, _ := cptest.AgentTLSConfig(t, w.m, id)
	_, err = registerOnce(t, w.agentAddr(), other, id)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "already bound") {
		t.Errorf("a leaf of another key for the bound container: %v; want PermissionDenied, already bound", err)
	}
	if f := r.events("register_failed"); len(f) == 0 || f[len(f)-1]["reason"] != "container_bound" {
		t.Errorf("register_failed %v; want reason container_bound", f)
	}
}

func parseLeaves(t *testing.T, chainPEM []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for rest := chainPEM; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			return out
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

func tlsPEM(t *testing.T, c *x509.Certificate) []byte {
	t.Helper()
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// registerOnce calls Register once as id over a fresh connection.
func registerOnce(t *testing.T, addr string, cfg *tls.Config, id certs.AgentIdentity) (*agentv1.RegisterResponse, error) {
	t.Helper()
	conn := cptest.DialGRPC(t, addr, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), waitShort)
	defer cancel()
	return agentv1.NewAgentServiceClient(conn).Register(ctx, &agentv1.RegisterRequest{Project: id.Project, AgentName: id.Agent})
}
