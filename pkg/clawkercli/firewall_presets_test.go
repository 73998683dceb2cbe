package clawkercli_test

import (
	"strings"
	"testing"

	"github.com/clawker/clawker-cp/pkg/adminclient/adminclienttest"
	"github.com/clawker/clawker-cp/pkg/egressrules"
	"github.com/clawker/clawker-cp/pkg/presets"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

func TestFirewallPresetsGolden(t *testing.T) {
	for _, c := range []struct {
		golden string
		args   []string
	}{{"firewall_presets_text", nil}, {"firewall_presets_json", []string{"--format", "json"}}} {
		env, _, srv, spy, stdout, stderr := fwEnv(t)
		if code := run(t, env, append([]string{"firewall", "presets"}, c.args...)...); code != 0 || stderr.Len() != 0 {
			t.Fatalf("%s: exit %d, stderr %q", c.golden, code, stderr.String())
		}
		checkGoldenFile(t, c.golden+".golden", stdout.String())
		// A list kept in the CLI: the control plane is neither asked nor brought up.
		if len(spy.calls) != 0 || len(srv.FirewallRequests()) != 0 {
			t.Errorf("%s: bootstrapped %d times, %d requests", c.golden, len(spy.calls), len(srv.FirewallRequests()))
		}
	}
}

// storeAnswer makes the fake AdminService answer req's FirewallAddRules as
// the control plane does, from a real rule store: its statuses, and the
// rules as stored (with their ids).
func storeAnswer(t *testing.T, srv *adminclienttest.Server, store *egressrules.Store, req []*adminv1.EgressRule) {
	t.Helper()
	rules := make([]egressrules.Rule, 0, len(req))
	for _, r := range req {
		port, err := egressrules.ParsePortRange(r.GetPort())
		if err != nil {
			t.Fatal(err)
		}
		rules = append(rules, egressrules.Rule{Dst: r.GetDst(), Proto: egressrules.Proto(r.GetProto()), Port: port, Action: egressrules.Action(r.GetAction())})
	}
	statuses, entries, err := store.Add(rules)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]uint32{}
	for _, e := range entries {
		ids[e.Key()] = e.ID
	}
	resp := &adminv1.FirewallAddRulesResponse{Total: uint32(len(entries))}
	for i, r := range rules {
		st := map[egressrules.Status]adminv1.RuleStatus{egressrules.Added: ruleAdded, egressrules.Modified: ruleModified, egressrules.Unchanged: ruleUnchanged}[statuses[i]]
		resp.Statuses = append(resp.Statuses, st)
		c, _ := r.Canonical()
		resp.Rules = append(resp.Rules, &adminv1.EgressRule{Dst: c.Dst, Proto: string(c.Proto), Port: c.Port.String(), Action: string(c.Action), Id: ids[c.Key()]})
	}
	srv.SetFirewallAnswer("FirewallAddRules", resp)
}

// Adding a preset sends its rules in one batch; adding it again changes
// nothing, and says so rule by rule.
func TestFirewallAddPresetTwice(t *testing.T) {
	p, _ := presets.Lookup("github")
	var want []*adminv1.EgressRule
	for _, r := range p.Rules {
		want = append(want, &adminv1.EgressRule{Dst: r.Dst, Proto: string(r.Proto), Port: r.Port.String(), Action: string(r.Action)})
	}
	store := egressrules.OpenStore(t.TempDir())
	// One rule of the preset is there already: it stays unchanged.
	if _, _, err := store.Add([]egressrules.Rule{{Dst: "api.github.com"}}); err != nil {
		t.Fatal(err)
	}
	for i, out := range []string{
		"added github.com:https:443\nunchanged api.github.com:https:443\nadded codeload.github.com:https:443\n" +
			"added objects.githubusercontent.com:https:443\nadded raw.githubusercontent.com:https:443\nadded github.com:ssh:22\n",
		"unchanged github.com:https:443\nunchanged api.github.com:https:443\nunchanged codeload.github.com:https:443\n" +
			"unchanged objects.githubusercontent.com:https:443\nunchanged raw.githubusercontent.com:https:443\nunchanged github.com:ssh:22\n",
	} {
		env, _, srv, _, stdout, stderr := fwEnv(t)
		storeAnswer(t, srv, store, want)
		if code := run(t, env, "firewall", "add", "--preset", "github"); code != 0 {
			t.Fatalf("add %d: exit %d, stderr %q", i+1, code, stderr.String())
		}
		if stdout.String() != out || stderr.Len() != 0 {
			t.Errorf("add %d: stdout\n%s\nstderr %q; want\n%s", i+1, stdout.String(), stderr.String(), out)
		}
		wantRequests(t, srv, &adminv1.FirewallAddRulesRequest{Rules: want})
	}
	if list, err := store.List(); err != nil || len(list) != 6 {
		t.Errorf("store holds %d rules (%v), want 6", len(list), err)
	}

	// JSON: one report per rule, as `add` writes them.
	env, _, srv, _, stdout, stderr := fwEnv(t)
	npm, _ := presets.Lookup("npm")
	storeAnswer(t, srv, egressrules.OpenStore(t.TempDir()), presetRulesOf(npm))
	if code := run(t, env, "firewall", "add", "--format", "json", "--preset", "npm"); code != 0 {
		t.Fatalf("json: exit %d, stderr %q", code, stderr.String())
	}
	checkGoldenFile(t, "firewall_add_preset_json.golden", stdout.String())
}

func presetRulesOf(p presets.Preset) []*adminv1.EgressRule {
	var out []*adminv1.EgressRule
	for _, r := range p.Rules {
		out = append(out, &adminv1.EgressRule{Dst: r.Dst, Proto: string(r.Proto), Port: r.Port.String(), Action: string(r.Action)})
	}
	return out
}

// --preset mistakes are caught before the control plane is asked.
func TestFirewallAddPresetErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--preset", "gitlab"}, `clawker: --preset: unknown preset "gitlab"; the presets are anthropic, crates, debian, github, go, npm, pypi (see ` + "`clawker firewall presets`)\n"},
		{[]string{"example.com", "--preset", "npm"}, "clawker: --preset: give either --preset or a rule (DST with --proto, --port and --action), not both"},
		{[]string{"--preset", "npm", "--port", "8443"}, "clawker: --preset: give either --preset or a rule"},
		{[]string{"--preset", "npm", "--action", "deny"}, "clawker: --preset: give either --preset or a rule"},
	} {
		env, _, srv, spy, stdout, stderr := fwEnv(t)
		if code := run(t, env, append([]string{"firewall", "add"}, c.args...)...); code != 1 {
			t.Errorf("%q: exit %d", c.args, code)
		}
		if !strings.Contains(stderr.String(), c.want) || stdout.Len() != 0 {
			t.Errorf("%q: stderr %q, want %q", c.args, stderr.String(), c.want)
		}
		if len(spy.calls) != 0 || len(srv.FirewallRequests()) != 0 {
			t.Errorf("%q: bootstrapped %d times, %d requests", c.args, len(spy.calls), len(srv.FirewallRequests()))
		}
	}
}
