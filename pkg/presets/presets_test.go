package presets_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/clawker/clawker-cp/pkg/egressrules"
	"github.com/clawker/clawker-cp/pkg/presets"
)

// The presets the issue asks for, by rule key: a rule dropped or mistyped
// in presets.yaml fails here.
var wantKeys = map[string][]string{
	"anthropic": {"api.anthropic.com:https:443"},
	"crates":    {"crates.io:https:443", "static.crates.io:https:443", "index.crates.io:https:443"},
	"debian":    {"deb.debian.org:https:443", "security.debian.org:https:443"},
	"github": {"github.com:https:443", "api.github.com:https:443", "codeload.github.com:https:443",
		"objects.githubusercontent.com:https:443", "raw.githubusercontent.com:https:443", "github.com:ssh:22"},
	"go":   {"proxy.golang.org:https:443", "sum.golang.org:https:443"},
	"npm":  {"registry.npmjs.org:https:443"},
	"pypi": {"pypi.org:https:443", "files.pythonhosted.org:https:443"},
}

func TestPresetRulesValidate(t *testing.T) {
	all := presets.All()
	if len(all) != len(wantKeys) {
		t.Errorf("%d presets, want %d: %v", len(all), len(wantKeys), presets.Names())
	}
	for _, p := range all {
		if p.Description == "" {
			t.Errorf("%s: no description", p.Name)
		}
		canon, err := egressrules.Validate(p.Rules)
		if err != nil {
			t.Errorf("%s: %v", p.Name, err)
			continue
		}
		// Written in canonical form already: what is listed is what is stored.
		if !reflect.DeepEqual(canon, p.Rules) {
			t.Errorf("%s: rules %v, canonical %v", p.Name, p.Rules, canon)
		}
		var keys []string
		seen := map[string]bool{}
		for _, r := range p.Rules {
			if seen[r.Key()] {
				t.Errorf("%s: %s twice", p.Name, r.Key())
			}
			seen[r.Key()] = true
			keys = append(keys, r.Key())
			if r.Action != egressrules.Allow || r.IsWildcard() || r.IsIP() {
				t.Errorf("%s: %s: a preset allows exact names only", p.Name, r.Key())
			}
		}
		if !reflect.DeepEqual(keys, wantKeys[p.Name]) {
			t.Errorf("%s: keys %q, want %q", p.Name, keys, wantKeys[p.Name])
		}
	}
}

func TestPresetNamesSortedAndLookup(t *testing.T) {
	want := "anthropic crates debian github go npm pypi"
	if got := strings.Join(presets.Names(), " "); got != want {
		t.Errorf("names %q, want %q", got, want)
	}
	p, ok := presets.Lookup("npm")
	if !ok || len(p.Rules) != 1 || p.Rules[0].Dst != "registry.npmjs.org" {
		t.Errorf("Lookup(npm) = %+v, %v", p, ok)
	}
	if _, ok := presets.Lookup("GitHub"); ok {
		t.Error("Lookup is case-sensitive: names are written as listed")
	}
	// All hands out copies: a caller's edit does not leak into the next.
	presets.All()[0].Rules[0].Dst = "changed.example.com"
	if presets.All()[0].Rules[0].Dst == "changed.example.com" {
		t.Error("All shares its rules")
	}
	err := presets.UnknownError("gitlab")
	if want := `unknown preset "gitlab"; the presets are anthropic, crates, debian, github, go, npm, pypi (see ` + "`clawker firewall presets`)"; err.Error() != want {
		t.Errorf("UnknownError = %q\nwant %q", err, want)
	}
}

func TestPresetParseRefuses(t *testing.T) {
	for _, c := range []struct{ yaml, want string }{
		{"- {name: a, description: x, rules: [{dst: localhost}]}", "preset a: rules[0]: dst \"localhost\""},
		{"- {name: a, rules: [{dst: a.example.com}]}\n- {name: a, rules: [{dst: b.example.com}]}", "presets[1]: a given twice"},
		{"- {name: a, rules: []}", "preset a: no rules"},
		{"- {rules: [{dst: a.example.com}]}", "presets[0]: no name"},
		{"- {name: a, rule: [{dst: a.example.com}]}", "field rule not found"},
	} {
		if _, err := presets.Parse([]byte(c.yaml)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.yaml, err, c.want)
		}
	}
}
