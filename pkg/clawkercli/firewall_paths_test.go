package clawkercli_test

import (
	"strings"
	"testing"

	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

func inspectedRule() *adminv1.EgressRule {
	return &adminv1.EgressRule{Dst: "api.example.com", Proto: "https", Port: "443", Action: "allow", Id: 7, PathDefault: "deny",
		PathRules: []*adminv1.PathRule{
			{Path: "/v1/", Action: "allow", Methods: []string{"GET", "POST"}},
			{Path: "~^/v[0-9]+/admin", Action: "deny"},
		}}
}

func TestFirewallAddPath(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		req  *adminv1.EgressRule
		out  string
	}{
		{"path with action and methods", []string{"api.example.com", "--path", "/v1/", "--action", "allow", "--methods", "get, POST"},
			&adminv1.EgressRule{Dst: "api.example.com", PathRules: []*adminv1.PathRule{{Path: "/v1/", Action: "allow", Methods: []string{"get", "POST"}}}},
			"updated api.example.com:https:443 path /v1/\n"},
		// --action goes to the path rule, not the rule: a deny path rule
		// on an allow rule.
		{"deny path, path default, flags first", []string{"--path=~^/v[0-9]+/admin", "--action", "deny", "--path-default", "allow", "api.example.com"},
			&adminv1.EgressRule{Dst: "api.example.com", PathDefault: "allow", PathRules: []*adminv1.PathRule{{Path: "~^/v[0-9]+/admin", Action: "deny"}}},
			"updated api.example.com:https:443 path ~^/v[0-9]+/admin\n"},
		{"path alone", []string{"api.example.com", "--proto", "http", "--path", "/"},
			&adminv1.EgressRule{Dst: "api.example.com", Proto: "http", PathRules: []*adminv1.PathRule{{Path: "/"}}},
			"updated api.example.com:https:443 path /\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env, _, srv, _, stdout, stderr := fwEnv(t)
			srv.SetFirewallAnswer("FirewallAddRules", &adminv1.FirewallAddRulesResponse{
				Statuses: []adminv1.RuleStatus{ruleModified}, Rules: []*adminv1.EgressRule{inspectedRule()}, Total: 1,
			})
			if code := run(t, env, append([]string{"firewall", "add"}, c.args...)...); code != 0 {
				t.Fatalf("exit %d, stderr %q", code, stderr.String())
			}
			if stdout.String() != c.out || stderr.Len() != 0 {
				t.Errorf("stdout %q, stderr %q; want %q", stdout.String(), stderr.String(), c.out)
			}
			wantRequests(t, srv, &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{c.req}})
		})
	}

	env, _, srv, _, stdout, stderr := fwEnv(t)
	srv.SetFirewallAnswer("FirewallAddRules", &adminv1.FirewallAddRulesResponse{
		Statuses: []adminv1.RuleStatus{ruleAdded}, Rules: []*adminv1.EgressRule{inspectedRule()}, Total: 1,
	})
	if code := run(t, env, "firewall", "add", "api.example.com", "--path", "/v1/", "--format", "json"); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	checkGoldenFile(t, "firewall_add_path_json.golden", stdout.String())
}

func TestFirewallRemovePath(t *testing.T) {
	key := &adminv1.EgressRule{Dst: "api.example.com", Proto: "https", Port: "443"}
	env, _, srv, _, stdout, stderr := fwEnv(t)
	srv.SetFirewallAnswer("FirewallRemoveRule", &adminv1.FirewallRemoveRuleResponse{Status: adminv1.RuleStatus_RULE_STATUS_PATH_REMOVED, Rule: key, Total: 2})
	if code := run(t, env, "firewall", "remove", "api.example.com", "--path", "/v1/"); code != 0 ||
		stdout.String() != "path_removed api.example.com:https:443 path /v1/\n" || stderr.Len() != 0 {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	wantRequests(t, srv, &adminv1.FirewallRemoveRuleRequest{Dst: "api.example.com", Path: "/v1/"})

	env, _, srv, _, stdout, _ = fwEnv(t)
	srv.SetFirewallAnswer("FirewallRemoveRule", &adminv1.FirewallRemoveRuleResponse{Status: adminv1.RuleStatus_RULE_STATUS_PATH_REMOVED, Rule: key, Total: 2})
	if code := run(t, env, "firewall", "remove", "--path", "/v1/", "--format", "json", "api.example.com"); code != 0 {
		t.Fatalf("json: exit %d", code)
	}
	checkGoldenFile(t, "firewall_remove_path_json.golden", stdout.String())

	env, _, srv, _, stdout, stderr = fwEnv(t)
	srv.SetFirewallAnswer("FirewallRemoveRule", &adminv1.FirewallRemoveRuleResponse{Status: ruleNotFound, Rule: key, Total: 2})
	if code := run(t, env, "firewall", "remove", "api.example.com", "--path", "/v9/"); code != 1 ||
		stderr.String() != "clawker: not found: api.example.com:https:443 path /v9/\n" || stdout.Len() != 0 {
		t.Errorf("not found: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
}

func TestFirewallListPaths(t *testing.T) {
	rules := append([]*adminv1.EgressRule{inspectedRule()}, sampleRules()...)
	for _, c := range []struct {
		golden string
		args   []string
	}{
		{"firewall_list_paths_text", nil},
		{"firewall_list_paths_json", []string{"--format", "json"}},
	} {
		t.Run(c.golden, func(t *testing.T) {
			env, _, srv, _, stdout, stderr := fwEnv(t)
			srv.SetFirewallAnswer("FirewallListRules", &adminv1.FirewallListRulesResponse{Rules: rules})
			if code := run(t, env, append([]string{"firewall", "list"}, c.args...)...); code != 0 || stderr.Len() != 0 {
				t.Fatalf("exit %d, stderr %q", code, stderr.String())
			}
			checkGoldenFile(t, c.golden+".golden", stdout.String())
		})
	}
}

func TestFirewallPathArgumentErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"add", "api.example.com", "--methods", "GET"}, "--methods: only with --path"},
		{[]string{"add", "api.example.com", "--path-default", "allow"}, "--path-default: only with --path"},
		{[]string{"add", "--preset", "github", "--path", "/"}, "--preset"},
		{[]string{"remove", "--all", "--path", "/v1/"}, "--path: give either --all or a rule's DST with --path, not both"},
	} {
		env, _, srv, spy, stdout, stderr := fwEnv(t)
		if code := run(t, env, append([]string{"firewall"}, c.args...)...); code != 1 {
			t.Errorf("%q: exit %d", c.args, code)
		}
		if !strings.Contains(stderr.String(), c.want) || strings.Count(stderr.String(), "\n") != 1 || stdout.Len() != 0 {
			t.Errorf("%q: stderr %q, want %q", c.args, stderr.String(), c.want)
		}
		if len(spy.calls) != 0 || len(srv.FirewallRequests()) != 0 {
			t.Errorf("%q: bootstrapped %d times, %d firewall requests", c.args, len(spy.calls), len(srv.FirewallRequests()))
		}
	}
}
