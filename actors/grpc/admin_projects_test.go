package grpc_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	cpgrpc "github.com/clawker/clawker-cp/actors/grpc"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// Rules scoped to projects through the AdminService and the real actor and
// store: a project's rule sits beside the global one of the same dst, list
// --project shows what applies to that project, remove --project removes
// that project's rule only, and bad names are refused naming the field.
func TestFirewallProjectRules(t *testing.T) {
	f := startRules(t, t.TempDir())
	c := f.client
	resp, err := c.FirewallAddRules(callCtx(t), &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{
		{Dst: "api.example.com"},
		{Dst: "api.example.com", Action: "deny", Projects: []string{"beta"}},
		{Dst: "web.example.com", Projects: []string{"beta", "alpha", "beta"}},
		{Dst: "ci.example.com", Projects: []string{"gamma"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetTotal() != 4 || strings.Join(resp.GetRules()[2].GetProjects(), ",") != "alpha,beta" {
		t.Fatalf("total %d, rules %v", resp.GetTotal(), resp.GetRules())
	}
	list := func(project string) []string {
		t.Helper()
		l, err := c.FirewallListRules(callCtx(t), &adminv1.FirewallListRulesRequest{Project: project})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range l.GetRules() {
			out = append(out, r.GetDst()+"="+r.GetAction()+"@"+strings.Join(r.GetProjects(), ","))
		}
		return out
	}
	if got := strings.Join(list("beta"), " "); got != "api.example.com=allow@ api.example.com=deny@beta web.example.com=allow@alpha,beta" {
		t.Errorf("list --project beta: %s", got)
	}
	if got := strings.Join(list("delta"), " "); got != "api.example.com=allow@" {
		t.Errorf("list --project delta: %s", got)
	}
	if got := len(list("")); got != 4 {
		t.Errorf("list: %d rules", got)
	}
	rm, err := c.FirewallRemoveRule(callCtx(t), &adminv1.FirewallRemoveRuleRequest{Dst: "api.example.com", Projects: []string{"beta"}})
	if err != nil || rm.GetStatus() != adminv1.RuleStatus_RULE_STATUS_REMOVED || rm.GetTotal() != 3 ||
		strings.Join(rm.GetRule().GetProjects(), ",") != "beta" {
		t.Fatalf("remove --project beta: %v %v", rm, err)
	}
	if got := strings.Join(list("beta"), " "); got != "api.example.com=allow@ web.example.com=allow@alpha,beta" {
		t.Errorf("after remove: %s", got)
	}
	_, err = c.FirewallAddRules(callCtx(t), &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{
		{Dst: "a.example.com", Projects: []string{"Bad!"}},
		{Dst: "10.0.0.0/8", Proto: "tcp", Port: "22", Projects: []string{"alpha"}},
	}})
	wantReason(t, err, codes.InvalidArgument, cpgrpc.ReasonRuleInvalid)
	for _, want := range []string{`rules[0]: projects[0] "Bad!"`, `rules[1]: projects "alpha": an IP or CIDR rule`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%v lacks %s", err, want)
		}
	}
	_, err = c.FirewallListRules(callCtx(t), &adminv1.FirewallListRulesRequest{Project: "Bad!"})
	wantReason(t, err, codes.InvalidArgument, cpgrpc.ReasonRuleInvalid)
}
