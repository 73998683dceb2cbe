package adminclient_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/adminclient/adminclienttest"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

func dial(t *testing.T, h *adminclienttest.Home) (*adminclient.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return adminclient.Dial(ctx, h.Paths(t), h.Settings(t))
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("Dial succeeded; want an error containing %q", parts)
	}
	t.Log(err)
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q\ndoes not contain %q", err, p)
		}
	}
}

func TestDialListAgents(t *testing.T) {
	h := adminclienttest.NewHome(t)
	srv := adminclienttest.Serve(t, h.EnsureAuth(t))
	srv.SetAgents(&adminv1.Agent{Project: "myapp", AgentName: "dev"})
	h.SetAdminPort(t, srv.Port)

	c, err := dial(t, h)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if want := fmt.Sprintf("127.0.0.1:%d", srv.Port); c.Addr() != want {
		t.Errorf("Addr = %q, want %q", c.Addr(), want)
	}
	if n := srv.Calls("GetSystemTime"); n != 1 {
		t.Errorf("Dial made %d probe calls, want 1", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), adminclient.CallTimeout)
	defer cancel()
	resp, err := c.ListAgents(ctx, &adminv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Agents) != 1 || resp.Agents[0].AgentName != "dev" {
		t.Errorf("ListAgents = %v", resp.Agents)
	}
}

func TestDialNoAuthMaterial(t *testing.T) {
	h := adminclienttest.NewHome(t)
	h.SetAdminPort(t, adminclienttest.FreePort(t))
	_, err := dial(t, h)
	wantErr(t, err, "no CLI auth material in "+h.Paths(t).AuthDir, `run "clawker auth rotate"`)
}

func TestDialBrokenAuthMaterial(t *testing.T) {
	h := adminclienttest.NewHome(t)
	h.EnsureAuth(t)
	h.SetAdminPort(t, adminclienttest.FreePort(t))
	if err := os.Remove(filepath.Join(h.Paths(t).AuthDir, "cli.key")); err != nil {
		t.Fatal(err)
	}
	_, err := dial(t, h)
	wantErr(t, err, "cli.key", `run "clawker auth rotate"`)
}

func TestDialNotRunning(t *testing.T) {
	h := adminclienttest.NewHome(t)
	h.EnsureAuth(t)
	port := adminclienttest.FreePort(t)
	h.SetAdminPort(t, port)
	start := time.Now()
	_, err := dial(t, h)
	wantErr(t, err, fmt.Sprintf(`the control plane is not running (nothing answers at 127.0.0.1:%d); start it with "clawker controlplane up"`, port))
	if d := time.Since(start); d > adminclient.ProbeTimeout {
		t.Errorf("Dial took %s to notice a refused connection", d)
	}
}

func TestDialServerFromOtherCA(t *testing.T) {
	h := adminclienttest.NewHome(t)
	h.EnsureAuth(t)
	other := adminclienttest.NewHome(t)
	srv := adminclienttest.Serve(t, other.EnsureAuth(t))
	h.SetAdminPort(t, srv.Port)
	_, err := dial(t, h)
	wantErr(t, err, "clawker's CA did not sign", "clawker controlplane down")
	if n := srv.Calls("GetSystemTime") + srv.Calls("ListAgents"); n != 0 {
		t.Errorf("an untrusted server received %d calls", n)
	}
}

func TestDialServerDistrustsCLI(t *testing.T) {
	h := adminclienttest.NewHome(t)
	m := h.EnsureAuth(t)
	other := adminclienttest.NewHome(t).EnsureAuth(t)
	// The CP's own cert is the one the CLI trusts, but it verifies clients
	// against another CA: a CP that kept an old bundle after a rotation of
	// only the CA would look like this.
	cfg, err := m.ServerTLSConfig("clawker-cli")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(other.CA)
	cfg.ClientCAs = pool
	srv := adminclienttest.ServeTLS(t, cfg)
	h.SetAdminPort(t, srv.Port)
	_, err = dial(t, h)
	wantErr(t, err, "refused the connection", "may not trust this CLI's certificate")
}
