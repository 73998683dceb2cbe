package main_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/cptest/netprobe"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// Rules scoped to projects end to end: the real stack rig (CP, DNS and
// proxy siblings, the test's internet on the gateway) and two agent
// containers of two projects, labelled as `clawker run` labels them. Each
// project has a rule the other has not; a global rule applies to both. The
// CP learns each agent's address from Docker and its project from the
// label, and the siblings decide by the address a query or connection
// comes from: each agent resolves and reaches its own project's name and
// the global one, and gets NXDOMAIN for the other's name, and a refusal
// when it dials the other's name by IP with its SNI. Over TCP: alpha's
// tcp rule on a port other than 443 is served by a dedicated proxy
// listener; alpha reaches a banner server by name through it, beta gets
// NXDOMAIN for the name, and its connect to the same address and port
// (the kernel's route to that listener is global) is refused by the
// listener itself.
func TestFirewallStackProjects(t *testing.T) {
	r := newStackRig(t)
	const gitPort = 2422
	r.world.auth.Set("git.alpha.test", r.net.Gateway)
	gitSrv := startBannerServers(t, r.net.Gateway, gitPort)
	res := r.addRules(t,
		// First, so its id is below the global rule's: the DNS owner must
		// hold scoped ids live (a lower id it thought removed is dropped).
		&adminv1.EgressRule{Dst: "git.alpha.test", Proto: "tcp", Port: fmt.Sprint(gitPort), Projects: []string{"alpha"}},
		&adminv1.EgressRule{Dst: "allowed.test"},
		&adminv1.EgressRule{Dst: "late.test", Projects: []string{"alpha"}},
		&adminv1.EgressRule{Dst: "late.test", Proto: "http", Projects: []string{"alpha"}},
		&adminv1.EgressRule{Dst: "cut.test", Projects: []string{"beta"}},
		&adminv1.EgressRule{Dst: "cut.test", Proto: "http", Projects: []string{"beta"}},
	)
	for i, s := range res.GetStatuses() {
		if s != adminv1.RuleStatus_RULE_STATUS_ADDED {
			t.Fatalf("rule %d: %v, want ADDED", i, s)
		}
	}
	start := func(project string) *cptest.ProbeContainer {
		labels := maps.Clone(agentLabels)
		labels[dockerx.LabelProject] = project
		p := r.net.StartProbe(t, cptest.ProbeSpec{Args: []string{"-hold"}, Labels: labels})
		cptest.WaitFor(t, 30*time.Second, project+"'s agent enforced", func() (bool, string) {
			for _, a := range r.status(t).GetAgents() {
				if a.GetContainerId() == p.ID {
					return true, ""
				}
			}
			return false, "not yet"
		})
		return p
	}
	alpha, beta := start("alpha"), start("beta")
	try := func(p *cptest.ProbeContainer, attempt string) string {
		o := cptest.ExecProbe(t, r.d, p.ID, "", "-timeout", "5s", attempt).Must(t, attempt)
		switch {
		case o.OK && o.Kind == "dns":
			return "rcode " + map[int]string{0: "NOERROR", 3: "NXDOMAIN"}[o.RCode]
		case o.OK:
			return "ok " + o.Reply
		case o.Syscall == "resolve":
			return "unresolved"
		}
		return "refused " + o.Syscall + " " + o.Error
	}
	dns := "dns:" + r.net.DNSIP().String() + ",name="
	gw := r.net.Gateway.String()

	// The map reaches the siblings after each agent's enforce: until then
	// an agent gets the global rules only.
	for p, own := range map[*cptest.ProbeContainer]string{alpha: "late.test", beta: "cut.test"} {
		cptest.WaitFor(t, 15*time.Second, own+" resolvable by its project's agent", func() (bool, string) {
			got := try(p, dns+own)
			return got == "rcode NOERROR", got
		})
	}
	for _, c := range []struct {
		who        *cptest.ProbeContainer
		project    string
		own, other string
	}{{alpha, "alpha", "late.test", "cut.test"}, {beta, "beta", "cut.test", "late.test"}} {
		t.Run(c.project, func(t *testing.T) {
			if got := try(c.who, dns+c.own); got != "rcode NOERROR" {
				t.Errorf("dns %s: %s", c.own, got)
			}
			if got := try(c.who, dns+c.other); got != "rcode NXDOMAIN" {
				t.Errorf("dns %s (the other project's): %s, want NXDOMAIN", c.other, got)
			}
			if got := try(c.who, dns+"allowed.test"); got != "rcode NOERROR" {
				t.Errorf("dns allowed.test (global): %s", got)
			}
			if got := try(c.who, "https:"+c.own); got != "ok hello from "+c.own {
				t.Errorf("https %s: %s", c.own, got)
			}
			if o := cptest.ExecProbe(t, r.d, c.who.ID, "", "-timeout", "5s", "http:"+c.own).Must(t, "http:"+c.own); !o.OK || o.Status != 200 {
				t.Errorf("http %s: %+v", c.own, o)
			}
			if got := try(c.who, "https:allowed.test"); got != "ok hello from allowed.test" {
				t.Errorf("https allowed.test (global): %s", got)
			}
			if got := try(c.who, "https:"+c.other); got != "unresolved" {
				t.Errorf("https %s: %s, want a resolve failure", c.other, got)
			}
			// Dialled by IP with the other project's SNI: the proxy
			// refuses it and the server never sees the ClientHello.
			before := r.world.seenSNI(c.other)
			if got := try(c.who, "https:"+c.other+",ip="+gw); strings.HasPrefix(got, "ok") {
				t.Errorf("https %s by IP: %s, want refused", c.other, got)
			}
			if o := cptest.ExecProbe(t, r.d, c.who.ID, "", "-timeout", "5s", "http:"+c.other+",ip="+gw).Must(t, "http:"+c.other+",ip="+gw); o.Status != 403 || !strings.Contains(o.Reply, c.other) {
				t.Errorf("http %s by IP: %+v, want 403 naming the host", c.other, o)
			}
			if n := r.world.seenSNI(c.other) - before; n != 0 {
				t.Errorf("the server saw %d ClientHellos for %s from %s's agent", n, c.other, c.project)
			}
		})
	}
	t.Run("tcp: alpha's listener serves alpha, refuses beta", func(t *testing.T) {
		probe := func(p *cptest.ProbeContainer, attempts ...string) map[string]netprobe.Outcome {
			res := cptest.ExecProbe(t, r.d, p.ID, "", append([]string{"-timeout", "5s"}, attempts...)...)
			out := map[string]netprobe.Outcome{}
			for _, a := range attempts {
				out[a] = res.Must(t, a)
			}
			return out
		}
		cptest.WaitFor(t, 10*time.Second, "the scoped tcp rule's route in the kernel", func() (bool, string) {
			n := r.status(t).GetRouteCount()
			return n >= 1, fmt.Sprintf("%d routes", n)
		})
		resolve := dns + "git.alpha.test"
		connect := fmt.Sprintf("tcp:%s:%d,send=hello-alpha", gw, gitPort)
		out := probe(alpha, resolve, connect)
		if d := out[resolve]; !d.OK || len(d.Answers) != 1 || d.Answers[0] != gw {
			t.Fatalf("alpha: dns git.alpha.test: %+v, want %s", d, gw)
		}
		if o := out[connect]; !o.OK || strings.TrimSpace(o.Reply) != banner(gitPort) {
			t.Fatalf("alpha: tcp git.alpha.test:%d: %+v, want the banner %q", gitPort, o, banner(gitPort))
		}
		cptest.WaitFor(t, 5*time.Second, "alpha's line at the server", func() (bool, string) {
			got := gitSrv.got(gitPort)
			return slices.Contains(got, "hello-alpha"), fmt.Sprint(got)
		})

		// beta: the name does not resolve; the address does (alpha's
		// answer gave it the rule's identity), and the route sends the
		// connect to alpha's listener, which decides by beta's rules.
		before := gitSrv.accepted(gitPort)
		connectB := fmt.Sprintf("tcp:%s:%d,send=hello-beta", gw, gitPort)
		out = probe(beta, resolve, connectB)
		if d := out[resolve]; !d.OK || d.RCode != 3 {
			t.Errorf("beta: dns git.alpha.test: %+v, want NXDOMAIN", d)
		}
		if o := out[connectB]; o.OK && strings.TrimSpace(o.Reply) == banner(gitPort) {
			t.Errorf("beta: tcp %s:%d by IP reached the server: %+v", gw, gitPort, o)
		} else {
			t.Logf("beta refused: %s %s", o.Syscall, o.Error)
		}
		if n := gitSrv.accepted(gitPort) - before; n != 0 {
			t.Errorf("the server accepted %d connections from beta's agent", n)
		}
		if slices.Contains(gitSrv.got(gitPort), "hello-beta") {
			t.Errorf("beta's line reached the server")
		}
		// Refused by the proxy's listener (not by the kernel): the
		// refusal is the proxy's, naming beta's agent, the name and port.
		cptest.WaitFor(t, 10*time.Second, "beta's refusal in FirewallDenied", func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			d, err := r.admin.FirewallDenied(ctx, &adminv1.FirewallDeniedRequest{})
			if err != nil {
				return false, err.Error()
			}
			var seen []string
			for _, g := range d.GetGroups() {
				seen = append(seen, g.String())
				if g.GetWhere() == "proxy" && g.GetName() == "git.alpha.test" && g.GetProto() == "tcp" &&
					slices.ContainsFunc(g.GetAgents(), func(a string) bool { return strings.HasPrefix(a, "beta/") }) &&
					strings.Contains(g.GetReason(), fmt.Sprintf("no rule allows git.alpha.test on tcp/%d", gitPort)) {
					return true, ""
				}
			}
			return false, strings.Join(seen, "; ")
		})
	})
	t.Run("list --project shows the global rules and the project's", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		l, err := r.admin.FirewallListRules(ctx, &adminv1.FirewallListRulesRequest{Project: "alpha"})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, rule := range l.GetRules() {
			got = append(got, rule.GetDst())
		}
		if strings.Join(got, " ") != "allowed.test git.alpha.test late.test late.test" {
			t.Errorf("alpha's rules: %v", got)
		}
	})
	t.Run("removing a project's rule takes it from that project's agent", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, proto := range []string{"https", "http"} {
			rm, err := r.admin.FirewallRemoveRule(ctx, &adminv1.FirewallRemoveRuleRequest{Dst: "late.test", Proto: proto, Projects: []string{"alpha"}})
			if err != nil || rm.GetStatus() != adminv1.RuleStatus_RULE_STATUS_REMOVED {
				t.Fatalf("remove late.test --proto %s --project alpha: %v %v", proto, rm.GetStatus(), err)
			}
		}
		if got := try(alpha, dns+"late.test"); got != "rcode NXDOMAIN" {
			t.Errorf("dns late.test after the removal: %s", got)
		}
		if got := try(beta, dns+"cut.test"); got != "rcode NOERROR" {
			t.Errorf("beta's own rule after alpha's removal: %s", got)
		}
	})
}
