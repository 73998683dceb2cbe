package clawkercli_test

import (
	"testing"

	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

func scopedRules() []*adminv1.EgressRule {
	return []*adminv1.EgressRule{
		{Dst: "api.example.com", Proto: "https", Port: "443", Action: "allow", Id: 1},
		{Dst: "api.example.com", Proto: "https", Port: "443", Action: "deny", Id: 4, Projects: []string{"beta"}},
		func() *adminv1.EgressRule {
			r := inspectedRule()
			r.Dst, r.Id, r.Projects = "web.example.com", 5, []string{"alpha", "beta"}
			return r
		}(),
	}
}

func TestFirewallAddProject(t *testing.T) {
	env, _, srv, _, stdout, stderr := fwEnv(t)
	srv.SetFirewallAnswer("FirewallAddRules", &adminv1.FirewallAddRulesResponse{
		Statuses: []adminv1.RuleStatus{ruleAdded}, Rules: []*adminv1.EgressRule{scopedRules()[1]}, Total: 3,
	})
	if code := run(t, env, "firewall", "add", "--project", "beta", "api.example.com", "--action", "deny", "--project", "gamma"); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	if got := stdout.String(); got != "added api.example.com:https:443@beta\n" || stderr.Len() != 0 {
		t.Errorf("stdout %q, stderr %q", got, stderr.String())
	}
	wantRequests(t, srv, &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{
		{Dst: "api.example.com", Action: "deny", Projects: []string{"beta", "gamma"}}}})
}

func TestFirewallRemoveProject(t *testing.T) {
	env, _, srv, _, stdout, stderr := fwEnv(t)
	srv.SetFirewallAnswer("FirewallRemoveRule", &adminv1.FirewallRemoveRuleResponse{Status: adminv1.RuleStatus_RULE_STATUS_REMOVED,
		Rule: &adminv1.EgressRule{Dst: "api.example.com", Proto: "https", Port: "443", Projects: []string{"beta"}}, Removed: 1, Total: 2})
	if code := run(t, env, "firewall", "remove", "api.example.com", "--project", "beta"); code != 0 ||
		stdout.String() != "removed api.example.com:https:443@beta\n" || stderr.Len() != 0 {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	wantRequests(t, srv, &adminv1.FirewallRemoveRuleRequest{Dst: "api.example.com", Projects: []string{"beta"}})

	env, _, srv, _, _, stderr = fwEnv(t)
	if code := run(t, env, "firewall", "remove", "--all", "--project", "beta"); code != 1 || len(srv.FirewallRequests()) != 0 {
		t.Errorf("--all --project: exit %d, stderr %q", code, stderr.String())
	}
}

func TestFirewallListProject(t *testing.T) {
	for _, c := range []struct {
		golden string
		args   []string
	}{
		{"firewall_list_projects_text", nil},
		{"firewall_list_projects_json", []string{"--format", "json"}},
	} {
		t.Run(c.golden, func(t *testing.T) {
			env, _, srv, _, stdout, stderr := fwEnv(t)
			srv.SetFirewallAnswer("FirewallListRules", &adminv1.FirewallListRulesResponse{Rules: scopedRules()})
			if code := run(t, env, append([]string{"firewall", "list", "--project", "beta"}, c.args...)...); code != 0 || stderr.Len() != 0 {
				t.Fatalf("exit %d, stderr %q", code, stderr.String())
			}
			checkGoldenFile(t, c.golden+".golden", stdout.String())
			wantRequests(t, srv, &adminv1.FirewallListRulesRequest{Project: "beta"})
		})
	}
}
