package grpc_test

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cpgrpc "github.com/clawker/clawker-cp/actors/grpc"
	"github.com/clawker/clawker-cp/pkg/egressrules"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// pathRulesOf prints a rule's path rules as "action path METHODS".
func pathRulesOf(r *adminv1.EgressRule) []string {
	var out []string
	for _, pr := range r.GetPathRules() {
		s := pr.GetAction() + " " + pr.GetPath()
		if len(pr.GetMethods()) > 0 {
			s += " " + strings.Join(pr.GetMethods(), ",")
		}
		out = append(out, s)
	}
	return out
}

// Path rules through the AdminService on the real firewall actor and
// store: added, merged by path, listed, removed one at a time, and what
// the store file then holds.
func TestFirewallPathRules(t *testing.T) {
	dir := t.TempDir()
	f := startRules(t, dir)
	c := f.client

	resp, err := c.FirewallAddRules(callCtx(t), &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{
		{Dst: "API.example.com", PathRules: []*adminv1.PathRule{{Path: "/v1/", Methods: []string{"post", "get"}}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	r := resp.GetRules()[0]
	if resp.GetStatuses()[0] != adminv1.RuleStatus_RULE_STATUS_ADDED || r.GetDst() != "api.example.com" ||
		!reflect.DeepEqual(pathRulesOf(r), []string{"allow /v1/ GET,POST"}) || r.GetPathDefault() != "deny" {
		t.Fatalf("add: %v %v", resp.GetStatuses(), r)
	}

	// Merged by path; path_default kept when omitted.
	resp, err = c.FirewallAddRules(callCtx(t), &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{
		{Dst: "api.example.com", PathRules: []*adminv1.PathRule{{Path: "/v1/admin", Action: "deny"}}, PathDefault: "allow"},
		{Dst: "api.example.com", PathRules: []*adminv1.PathRule{{Path: "~^/v2/.*$"}}},
		{Dst: "api.example.com", PathRules: []*adminv1.PathRule{{Path: "/v1/admin", Action: "deny"}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	mod, unch := adminv1.RuleStatus_RULE_STATUS_MODIFIED, adminv1.RuleStatus_RULE_STATUS_UNCHANGED
	if !reflect.DeepEqual(resp.GetStatuses(), []adminv1.RuleStatus{mod, mod, unch}) {
		t.Fatalf("statuses %v", resp.GetStatuses())
	}
	list, err := c.FirewallListRules(callCtx(t), &adminv1.FirewallListRulesRequest{})
	if err != nil || len(list.GetRules()) != 1 {
		t.Fatalf("list: %v, %v", list, err)
	}
	r = list.GetRules()[0]
	if want := []string{"allow /v1/ GET,POST", "deny /v1/admin", "allow ~^/v2/.*$"}; !reflect.DeepEqual(pathRulesOf(r), want) || r.GetPathDefault() != "allow" {
		t.Fatalf("listed %v path_default %q, want %v allow", pathRulesOf(r), r.GetPathDefault(), want)
	}

	// One path rule removed; the rule stays.
	f.logs.TakeAll()
	rm, err := c.FirewallRemoveRule(callCtx(t), &adminv1.FirewallRemoveRuleRequest{Dst: "api.example.com", Path: "/v1/admin"})
	if err != nil || rm.GetStatus() != adminv1.RuleStatus_RULE_STATUS_PATH_REMOVED || rm.GetRemoved() != 0 || rm.GetTotal() != 1 {
		t.Fatalf("remove path: %v, %v", rm, err)
	}
	if l := f.logLine(t, "firewall_remove_rule"); l.ContextMap()["path"] != "/v1/admin" || l.ContextMap()["status"] != "PATH_REMOVED" {
		t.Errorf("log line %v", l.ContextMap())
	}
	rm, err = c.FirewallRemoveRule(callCtx(t), &adminv1.FirewallRemoveRuleRequest{Dst: "api.example.com", Path: "/v1/admin"})
	if err != nil || rm.GetStatus() != adminv1.RuleStatus_RULE_STATUS_NOT_FOUND {
		t.Fatalf("remove a missing path: %v, %v", rm, err)
	}
	for _, p := range []string{"/v1/", "~^/v2/.*$"} {
		if rm, err := c.FirewallRemoveRule(callCtx(t), &adminv1.FirewallRemoveRuleRequest{Dst: "api.example.com", Path: p}); err != nil || rm.GetStatus() != adminv1.RuleStatus_RULE_STATUS_PATH_REMOVED {
			t.Fatalf("remove %s: %v, %v", p, rm, err)
		}
	}
	list, _ = c.FirewallListRules(callCtx(t), &adminv1.FirewallListRulesRequest{})
	if r := list.GetRules()[0]; len(r.GetPathRules()) != 0 || r.GetPathDefault() != "" || r.GetAction() != "allow" {
		t.Fatalf("after the last path rule: %v", r)
	}
	data, err := os.ReadFile(filepath.Join(dir, egressrules.RulesFileName))
	if err != nil || strings.Contains(string(data), "path") {
		t.Fatalf("store file %s, %v", data, err)
	}
}

func TestFirewallPathRulesInvalid(t *testing.T) {
	dir := t.TempDir()
	f := startRules(t, dir)
	c := f.client
	if _, err := c.FirewallAddRules(callCtx(t), &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{
		{Dst: "api.example.com", PathRules: []*adminv1.PathRule{{Path: "/v1/"}}},
	}}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, egressrules.RulesFileName)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.FirewallAddRules(callCtx(t), &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{
		{Dst: "api.example.com", PathRules: []*adminv1.PathRule{{Path: "/v2/"}}},
		{Dst: "10.0.0.1", Proto: "tcp", Port: "5432", PathRules: []*adminv1.PathRule{{Path: "/"}}},
		{Dst: "api.example.com", PathDefault: "sometimes", PathRules: []*adminv1.PathRule{{Path: "~(", Methods: []string{"G T"}, Action: "nope"}}},
		{Dst: "bad name", PathRules: []*adminv1.PathRule{{Path: "v1"}}},
	}})
	wantReason(t, err, codes.InvalidArgument, cpgrpc.ReasonRuleInvalid)
	lines := strings.Split(status.Convert(err).Message(), "\n")
	wantPrefixes := []string{
		`rules[1]: path_rules[0].path "/": path rules apply only to an https or http rule on a name`,
		`rules[2]: path_rules[0].path "~(": not a valid RE2 expression: error parsing regexp: missing closing )`,
		`rules[2]: path_rules[0].action "nope": unknown action`,
		`rules[2]: path_rules[0].methods "G T": not an HTTP method`,
		`rules[2]: path_default "sometimes": unknown action (write allow or deny; deny when omitted)`,
		`rules[3]: dst "bad name"`,
		`rules[3]: path_rules[0].path "v1": a path starts with / (write /v1`,
	}
	if len(lines) != len(wantPrefixes) {
		t.Fatalf("message lines %q, want %d", lines, len(wantPrefixes))
	}
	for i, p := range wantPrefixes {
		if !strings.HasPrefix(lines[i], p) {
			t.Errorf("line %d %q, want it to start with %q", i, lines[i], p)
		}
	}

	for _, tc := range []struct {
		req  *adminv1.FirewallRemoveRuleRequest
		want string
	}{
		{&adminv1.FirewallRemoveRuleRequest{All: true, Path: "/v1/"}, "path: set either all or a rule's dst with the path"},
		{&adminv1.FirewallRemoveRuleRequest{Dst: "api.example.com", Path: "v1/"}, `path "v1/": a path starts with / (write /v1/`},
		{&adminv1.FirewallRemoveRuleRequest{Dst: "api.example.com", Path: "/a%zz"}, `path "/a%zz": invalid escape`},
	} {
		_, err := c.FirewallRemoveRule(callCtx(t), tc.req)
		wantReason(t, err, codes.InvalidArgument, cpgrpc.ReasonRuleInvalid)
		wantCode(t, err, codes.InvalidArgument, tc.want)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Errorf("store file changed by refused requests:\n%s\nwas\n%s", after, before)
	}
}
