package clawkercli_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

const (
	ruleAdded     = adminv1.RuleStatus_RULE_STATUS_ADDED
	ruleModified  = adminv1.RuleStatus_RULE_STATUS_MODIFIED
	ruleUnchanged = adminv1.RuleStatus_RULE_STATUS_UNCHANGED
	ruleRemoved   = adminv1.RuleStatus_RULE_STATUS_REMOVED
	ruleNotFound  = adminv1.RuleStatus_RULE_STATUS_NOT_FOUND
)

func sampleRules() []*adminv1.EgressRule {
	return []*adminv1.EgressRule{
		{Dst: ".github.com", Proto: "ssh", Port: "22", Action: "allow", Id: 3},
		{Dst: "10.0.0.0/8", Proto: "tcp", Port: "8000-8100", Action: "deny", Id: 2},
		{Dst: "registry.npmjs.org", Proto: "https", Port: "443", Action: "allow", Id: 1},
	}
}

func TestFirewallAdd(t *testing.T) {
	for _, c := range []struct {
		name   string
		args   []string
		req    *adminv1.EgressRule
		status adminv1.RuleStatus
		stored *adminv1.EgressRule
		out    string
	}{
		{"defaults", []string{"example.com"}, &adminv1.EgressRule{Dst: "example.com"},
			ruleAdded, &adminv1.EgressRule{Dst: "example.com", Proto: "https", Port: "443", Action: "allow", Id: 4},
			"added example.com:https:443\n"},
		{"flags after DST", []string{"db.example.com", "--proto", "tcp", "--port", "5432", "--action", "deny"},
			&adminv1.EgressRule{Dst: "db.example.com", Proto: "tcp", Port: "5432", Action: "deny"},
			ruleModified, &adminv1.EgressRule{Dst: "db.example.com", Proto: "tcp", Port: "5432", Action: "deny", Id: 5},
			"updated db.example.com:tcp:5432\n"},
		{"flags first, a range", []string{"--proto=http", "--port", "8000-8100", "Example.com"},
			&adminv1.EgressRule{Dst: "Example.com", Proto: "http", Port: "8000-8100"},
			ruleUnchanged, &adminv1.EgressRule{Dst: "example.com", Proto: "http", Port: "8000-8100", Action: "allow", Id: 6},
			"unchanged example.com:http:8000-8100\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env, _, srv, spy, stdout, stderr := fwEnv(t)
			srv.SetFirewallAnswer("FirewallAddRules", &adminv1.FirewallAddRulesResponse{
				Statuses: []adminv1.RuleStatus{c.status}, Rules: []*adminv1.EgressRule{c.stored}, Total: 4,
			})
			if code := run(t, env, append([]string{"firewall", "add"}, c.args...)...); code != 0 {
				t.Fatalf("exit %d, stderr %q", code, stderr.String())
			}
			if stdout.String() != c.out || stderr.Len() != 0 {
				t.Errorf("stdout %q, stderr %q; want %q", stdout.String(), stderr.String(), c.out)
			}
			wantRequests(t, srv, &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{c.req}})
			if len(spy.calls) != 1 {
				t.Errorf("bootstrapped %d times, want 1", len(spy.calls))
			}
		})
	}

	env, _, srv, _, stdout, stderr := fwEnv(t)
	srv.SetFirewallAnswer("FirewallAddRules", &adminv1.FirewallAddRulesResponse{
		Statuses: []adminv1.RuleStatus{ruleAdded}, Rules: []*adminv1.EgressRule{{Dst: "example.com", Proto: "https", Port: "443", Action: "allow", Id: 4}}, Total: 1,
	})
	if code := run(t, env, "firewall", "add", "example.com", "--format", "json"); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	checkGoldenFile(t, "firewall_add_json.golden", stdout.String())
}

// A bad rule prints the control plane's message, which names every bad
// field and its fix.
func TestFirewallAddInvalid(t *testing.T) {
	env, _, srv, _, stdout, stderr := fwEnv(t)
	msg := "rules[0]: port \"99999\": ports are 1-65535 (write 443 or 8000-8100, or omit port for the proto's default)\n" +
		"rules[0]: action \"maybe\": unknown action (write allow or deny; allow when omitted)"
	srv.SetFirewallError("FirewallAddRules", status.Error(codes.InvalidArgument, msg))
	if code := run(t, env, "firewall", "add", "example.com", "--port", "99999", "--action", "maybe"); code != 1 {
		t.Fatalf("exit %d", code)
	}
	if want := "clawker: firewall add: " + msg + "\n"; stderr.String() != want || stdout.Len() != 0 {
		t.Errorf("stderr %q\nwant   %q", stderr.String(), want)
	}
}

func TestFirewallRemove(t *testing.T) {
	key := &adminv1.EgressRule{Dst: "example.com", Proto: "https", Port: "443"}
	env, _, srv, _, stdout, stderr := fwEnv(t)
	srv.SetFirewallAnswer("FirewallRemoveRule", &adminv1.FirewallRemoveRuleResponse{Status: ruleRemoved, Rule: key, Removed: 1, Total: 2})
	if code := run(t, env, "firewall", "remove", "example.com"); code != 0 || stdout.String() != "removed example.com:https:443\n" || stderr.Len() != 0 {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	wantRequests(t, srv, &adminv1.FirewallRemoveRuleRequest{Dst: "example.com"})

	env, _, srv, _, stdout, _ = fwEnv(t)
	srv.SetFirewallAnswer("FirewallRemoveRule", &adminv1.FirewallRemoveRuleResponse{Status: ruleRemoved, Rule: key, Removed: 1, Total: 2})
	if code := run(t, env, "firewall", "remove", "--format", "json", "example.com"); code != 0 {
		t.Fatalf("json: exit %d", code)
	}
	checkGoldenFile(t, "firewall_remove_json.golden", stdout.String())

	// A rule that is not there: said plainly, exit 1.
	env, _, srv, _, stdout, stderr = fwEnv(t)
	srv.SetFirewallAnswer("FirewallRemoveRule", &adminv1.FirewallRemoveRuleResponse{
		Status: ruleNotFound, Rule: &adminv1.EgressRule{Dst: "example.com", Proto: "tcp", Port: "8443"}, Total: 3,
	})
	if code := run(t, env, "firewall", "remove", "example.com", "--proto", "tcp", "--port", "8443"); code != 1 ||
		stderr.String() != "clawker: not found: example.com:tcp:8443\n" || stdout.Len() != 0 {
		t.Errorf("not found: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	wantRequests(t, srv, &adminv1.FirewallRemoveRuleRequest{Dst: "example.com", Proto: "tcp", Port: "8443"})

	env, _, srv, _, stdout, stderr = fwEnv(t)
	srv.SetFirewallAnswer("FirewallRemoveRule", &adminv1.FirewallRemoveRuleResponse{
		Status: ruleNotFound, Rule: &adminv1.EgressRule{Dst: "example.com", Proto: "tcp", Port: "8443"}, Total: 3,
	})
	if code := run(t, env, "firewall", "remove", "example.com", "--proto", "tcp", "--port", "8443", "--format", "json"); code != 1 ||
		stderr.String() != "clawker: not found: example.com:tcp:8443\n" {
		t.Errorf("not found, json: exit %d, stderr %q", code, stderr.String())
	}
	checkGoldenFile(t, "firewall_remove_not_found_json.golden", stdout.String())

	for _, c := range []struct {
		removed uint32
		out     string
	}{{3, "removed 3 rules\n"}, {1, "removed 1 rule\n"}, {0, "removed 0 rules\n"}} {
		env, _, srv, _, stdout, stderr = fwEnv(t)
		srv.SetFirewallAnswer("FirewallRemoveRule", &adminv1.FirewallRemoveRuleResponse{Status: ruleRemoved, Removed: c.removed})
		if code := run(t, env, "firewall", "remove", "--all"); code != 0 || stdout.String() != c.out {
			t.Errorf("--all: exit %d, stdout %q, stderr %q; want %q", code, stdout.String(), stderr.String(), c.out)
		}
		wantRequests(t, srv, &adminv1.FirewallRemoveRuleRequest{All: true})
	}
}

func TestFirewallList(t *testing.T) {
	for _, c := range []struct {
		golden string
		rules  []*adminv1.EgressRule
		args   []string
	}{
		{"firewall_list_text", sampleRules(), nil},
		{"firewall_list_json", sampleRules(), []string{"--format", "json"}},
		{"firewall_list_empty", nil, nil},
		{"firewall_list_empty_json", nil, []string{"--format", "json"}},
	} {
		t.Run(c.golden, func(t *testing.T) {
			env, _, srv, _, stdout, stderr := fwEnv(t)
			srv.SetFirewallAnswer("FirewallListRules", &adminv1.FirewallListRulesResponse{Rules: c.rules})
			if code := run(t, env, append([]string{"firewall", "list"}, c.args...)...); code != 0 || stderr.Len() != 0 {
				t.Fatalf("exit %d, stderr %q", code, stderr.String())
			}
			checkGoldenFile(t, c.golden+".golden", stdout.String())
		})
	}
}

func TestFirewallStackAndReload(t *testing.T) {
	env, _, srv, _, stdout, stderr := fwEnv(t)
	srv.SetFirewallAnswer("FirewallInit", &adminv1.FirewallInitResponse{Stack: []*adminv1.StackMember{
		{Name: "DNS", Address: "172.18.0.201:53", ContainerId: devID, Healthy: true},
		{Name: "proxy", Address: "172.18.0.200:15001", Error: "dial tcp 172.18.0.200:15001: connection refused"},
	}})
	if code := run(t, env, "firewall", "up"); code != 0 {
		t.Fatalf("up: exit %d, stderr %q", code, stderr.String())
	}
	if want := "firewall stack up\nDNS: ✓ 172.18.0.201:53\nproxy: ✗ dial tcp 172.18.0.200:15001: connection refused\n"; stdout.String() != want {
		t.Errorf("up: stdout %q\nwant %q", stdout.String(), want)
	}

	for _, c := range []struct {
		args []string
		req  *adminv1.FirewallRemoveRequest
	}{{nil, &adminv1.FirewallRemoveRequest{}}, {[]string{"--force"}, &adminv1.FirewallRemoveRequest{Force: true}}} {
		env, _, srv, _, stdout, stderr = fwEnv(t)
		if code := run(t, env, append([]string{"firewall", "down"}, c.args...)...); code != 0 || stdout.String() != "firewall stack down\n" {
			t.Errorf("down %q: exit %d, stdout %q, stderr %q", c.args, code, stdout.String(), stderr.String())
		}
		wantRequests(t, srv, c.req)
	}

	env, _, srv, _, stdout, stderr = fwEnv(t)
	srv.SetFirewallError("FirewallInit", status.Error(codes.Unavailable, "the firewall stack is not healthy: proxy at 172.18.0.200:15001: connection refused"))
	if code := run(t, env, "firewall", "up"); code != 1 ||
		stderr.String() != "clawker: firewall up: the firewall stack is not healthy: proxy at 172.18.0.200:15001: connection refused\n" {
		t.Errorf("unhealthy up: exit %d, stderr %q", code, stderr.String())
	}

	env, _, srv, _, stdout, _ = fwEnv(t)
	srv.SetFirewallAnswer("FirewallReload", &adminv1.FirewallReloadResponse{Rules: 2})
	if code := run(t, env, "firewall", "reload"); code != 0 || stdout.String() != "reloaded 2 rules\n" {
		t.Errorf("reload: exit %d, stdout %q", code, stdout.String())
	}
	wantRequests(t, srv, &adminv1.FirewallReloadRequest{})
}

// Argument mistakes of the rule verbs are caught before the control plane
// is asked (or brought up).
func TestFirewallRuleArgumentErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"add"}, "DST: required: the destination, e.g. example.com, .example.com or 10.0.0.0/8"},
		{[]string{"add", "a.example.com", "b.example.com"}, `firewall add takes one argument, DST, got ["a.example.com" "b.example.com"]`},
		{[]string{"add", "example.com", "--bogus"}, "flag provided but not defined: --bogus"},
		{[]string{"add", "example.com", "--port"}, "flag needs an argument: --port"},
		{[]string{"add", "example.com", "--format", "yaml"}, "--format"},
		{[]string{"remove"}, "DST: required: the rule's destination, or --all for every rule"},
		{[]string{"remove", "--all", "example.com"}, "--all: give either --all or a rule"},
		{[]string{"remove", "--all", "--port", "443"}, "--all: give either --all or a rule"},
		{[]string{"remove", "a.example.com", "b.example.com"}, "firewall remove takes one argument, DST"},
		{[]string{"list", "extra"}, `firewall list takes no arguments, got ["extra"]`},
		{[]string{"list", "--format", "yaml"}, "--format"},
		{[]string{"up", "now"}, "firewall up takes no arguments"},
		{[]string{"down", "now"}, "firewall down takes no arguments"},
		{[]string{"reload", "now"}, "firewall reload takes no arguments"},
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
