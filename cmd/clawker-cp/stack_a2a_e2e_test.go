package main_test

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/cptest/netprobe"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// Agent to agent end to end: the real stack rig (CP, DNS and proxy
// siblings) and two or three enforced agent containers on its network,
// labelled as `clawker run` labels them. Agent B is a stand-in listening on
// TCP 8080, so a connect that passes gets its banner. With
// firewall.agent_to_agent deny (the default) agent A's connect to B is
// EPERM, and `firewall denied` (the real AdminService) shows it as a kernel
// refusal of A naming B and the setting that would allow it. With
// `project`, A reaches B in the same project while C of another project is
// still refused, and the refusal says only `allow` would open it. The
// setting is read at start, so each case runs its own CP.
func TestFirewallStackAgentToAgent(t *testing.T) {
	const port = 8080
	// listener and prober run an agent of project on r's network (B a
	// listening stand-in at a fixed address, the others holding probes)
	// and wait until the CP enforces it.
	enforced := func(t *testing.T, r *stackRig, id, what string) {
		t.Helper()
		cptest.WaitFor(t, 30*time.Second, what+" enforced", func() (bool, string) {
			for _, a := range r.status(t).GetAgents() {
				if a.GetContainerId() == id {
					return true, ""
				}
			}
			return false, "not yet"
		})
	}
	labelsOf := func(project, agent string) map[string]string {
		l := maps.Clone(agentLabels)
		l[dockerx.LabelProject], l[dockerx.LabelAgent] = project, agent
		return l
	}
	listener := func(t *testing.T, r *stackRig, project string) netip.Addr {
		t.Helper()
		ip := r.net.Addr(150)
		b := r.net.StartStandin(t, ip, netprobe.StandinConfig{Name: "agent-b", TCPPorts: []int{port}}, labelsOf(project, "b"))
		enforced(t, r, b.ID, project+"/b")
		return ip
	}
	prober := func(t *testing.T, r *stackRig, project, agent string) *cptest.ProbeContainer {
		t.Helper()
		p := r.net.StartProbe(t, cptest.ProbeSpec{Args: []string{"-hold"}, Labels: labelsOf(project, agent)})
		enforced(t, r, p.ID, project+"/"+agent)
		return p
	}
	connect := func(t *testing.T, r *stackRig, p *cptest.ProbeContainer, target string) netprobe.Outcome {
		t.Helper()
		return cptest.ExecProbe(t, r.d, p.ID, "", "-timeout", "5s", target).Must(t, target)
	}
	// refusal waits for the kernel's refusal of dst in `firewall denied`
	// for project's agents.
	refusal := func(t *testing.T, r *stackRig, project, dst string) *adminv1.DeniedGroup {
		t.Helper()
		var got *adminv1.DeniedGroup
		cptest.WaitFor(t, 10*time.Second, "the refusal of "+dst+" in firewall denied", func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			res, err := r.admin.FirewallDenied(ctx, &adminv1.FirewallDeniedRequest{Project: project})
			if err != nil {
				return false, err.Error()
			}
			for _, g := range res.GetGroups() {
				if g.GetWhere() == "kernel" && g.GetName() == dst {
					got = g
					return true, ""
				}
			}
			return false, fmt.Sprint(res.GetGroups())
		})
		return got
	}
	// subnetRefusals are the agent-network refusals (deny-subnet) of
	// project's agents (agent's alone, when given). Only those: the
	// listening stand-in, a Go program, tries Multipath TCP first (Go's
	// default for listeners), which sock_create refuses (deny-socket, shown
	// as tcp) before Go falls back to TCP; not what this test is about.
	subnetRefusals := func(t *testing.T, r *stackRig, project, agent string) []*adminv1.DeniedGroup {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		res, err := r.admin.FirewallDenied(ctx, &adminv1.FirewallDeniedRequest{Project: project, Agent: agent})
		if err != nil {
			t.Fatalf("FirewallDenied: %v", err)
		}
		var out []*adminv1.DeniedGroup
		for _, g := range res.GetGroups() {
			if g.GetReason() == "deny-subnet" {
				out = append(out, g)
			}
		}
		return out
	}
	check := func(t *testing.T, g *adminv1.DeniedGroup, agent, allow string) {
		t.Helper()
		if g.GetProto() != "tcp" || g.GetReason() != "deny-subnet" || g.GetCount() < 1 {
			t.Errorf("the refusal: %v, want tcp deny-subnet", g)
		}
		if len(g.GetAgents()) != 1 || g.GetAgents()[0] != agent {
			t.Errorf("the refusal's agents %v, want [%s]", g.GetAgents(), agent)
		}
		if g.GetAllow() != allow {
			t.Errorf("the refusal's allow %q, want %q", g.GetAllow(), allow)
		}
	}

	t.Run("deny (the default): refused, and firewall denied names both agents and the setting", func(t *testing.T) {
		r := newStackRig(t)
		if got := r.status(t).GetAgentToAgent(); got != "deny" {
			t.Fatalf("FirewallStatus agent_to_agent %q, want deny", got)
		}
		bIP := listener(t, r, "fwtest")
		a := prober(t, r, "fwtest", "a")
		dst := netip.AddrPortFrom(bIP, port).String()
		if o := connect(t, r, a, "tcp:"+dst); o.OK || o.Errno != "EPERM" {
			t.Fatalf("tcp from agent a to agent b: %+v, want EPERM", o)
		}
		g := refusal(t, r, "fwtest", dst)
		check(t, g, "fwtest/a", "agent fwtest/b: firewall.agent_to_agent: project (same project) or allow")
		// The refused agent is a, not b.
		if g := subnetRefusals(t, r, "fwtest", "b"); len(g) != 0 {
			t.Errorf("agent-network refusals of agent b: %v, want none", g)
		}
	})

	t.Run("project: one project's agents connect, another project's is refused", func(t *testing.T) {
		r := newStackRigWith(t, ", agent_to_agent: project")
		if got := r.status(t).GetAgentToAgent(); got != "project" {
			t.Fatalf("FirewallStatus agent_to_agent %q, want project", got)
		}
		bIP := listener(t, r, "alpha")
		a := prober(t, r, "alpha", "a")
		c := prober(t, r, "beta", "c")
		dst := netip.AddrPortFrom(bIP, port).String()
		if o := connect(t, r, a, "tcp:"+dst); !o.OK || o.Reply != netprobe.Banner("agent-b", port) {
			t.Errorf("tcp from alpha/a to alpha/b: %+v, want b's banner", o)
		}
		if o := connect(t, r, c, "tcp:"+dst); o.OK || o.Errno != "EPERM" {
			t.Fatalf("tcp from beta/c to alpha/b: %+v, want EPERM", o)
		}
		g := refusal(t, r, "beta", dst)
		check(t, g, "beta/c", "agent alpha/b is in another project: firewall.agent_to_agent: allow")
		// The connect that passed is no refusal.
		if g := subnetRefusals(t, r, "alpha", ""); len(g) != 0 {
			t.Errorf("agent-network refusals in project alpha: %v, want none", g)
		}
	})
}
