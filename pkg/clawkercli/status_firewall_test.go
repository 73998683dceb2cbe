package clawkercli

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"

	"github.com/clawker/clawker-cp/pkg/adminclient/adminclienttest"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// The firewall lines of `controlplane status`, read from a fake AdminService
// through the real client (mTLS and a token from a fake Hydra).
func TestStatusFirewallLines(t *testing.T) {
	h := adminclienttest.NewHome(t)
	m := h.EnsureAuth(t)
	srv := adminclienttest.Serve(t, m)
	h.SetPorts(t, srv.Port, adminclienttest.ServeTokenEndpoint(t, m).Port)
	env := Env{Getenv: h.Getenv, AskFirewall: true}
	healthy := func() StatusReport {
		return StatusReport{Container: "running", Healthz: &HealthReport{OK: true, Status: "ok"}}
	}
	// The settings are loaded at each ask, as the verbs' prologue does:
	// the ports change below.
	ask := func(env Env, rep *StatusReport) {
		t.Helper()
		paths, s, err := loadPathsSettings(env)
		if err != nil {
			t.Fatal(err)
		}
		addFirewall(context.Background(), env, paths, s, rep)
	}
	render := func(rep StatusReport) string {
		var b bytes.Buffer
		writeStatus(&b, rep)
		return b.String()
	}

	srv.SetFirewallStatus(&adminv1.FirewallStatusResponse{Enabled: true, Rules: 12,
		Agents: []*adminv1.FirewallAgent{{ContainerId: strings.Repeat("a", 64), CgroupId: 7}}})
	rep := healthy()
	ask(env, &rep)
	if got, want := render(rep), "Container: running\nHealthz: ✓\nFirewall: ✓ (1 agents enforced)\nRules: 12 active\n"; got != want {
		t.Errorf("enabled:\n%s\nwant:\n%s", got, want)
	}

	srv.SetFirewallStatus(&adminv1.FirewallStatusResponse{})
	rep = healthy()
	ask(env, &rep)
	if got := render(rep); !strings.HasSuffix(got, "Healthz: ✓\nFirewall: off (firewall.enable: false)\n") {
		t.Errorf("disabled:\n%s", got)
	}

	// Not asked when /healthz is not green, nor when env says not to.
	rep = StatusReport{Container: "running", Healthz: &HealthReport{Status: "not_ready"}}
	ask(env, &rep)
	if rep.Firewall != nil {
		t.Errorf("asked the firewall of an unhealthy CP: %+v", rep.Firewall)
	}
	rep = healthy()
	ask(Env{Getenv: h.Getenv}, &rep)
	if rep.Firewall != nil {
		t.Errorf("asked the firewall without AskFirewall: %+v", rep.Firewall)
	}

	// An AdminService that refuses: the status says so on the firewall line.
	h.SetPorts(t, deadAdminPort(t), adminclienttest.ServeTokenEndpoint(t, m).Port)
	rep = healthy()
	ask(env, &rep)
	if rep.Firewall == nil || rep.Firewall.Error == "" || !strings.Contains(render(rep), "Firewall: ✗ (") {
		t.Errorf("unreachable AdminService: %+v\n%s", rep.Firewall, render(rep))
	}
}

func deadAdminPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}
