package egressrules

import (
	"encoding/json"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestProjectsCanonical(t *testing.T) {
	c, err := Rule{Dst: "api.example.com", Projects: []string{"web", "api", "web"}}.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Projects, ","); got != "api,web" {
		t.Fatalf("projects %q, want sorted and deduplicated api,web", got)
	}
	if got := c.Key(); got != "api.example.com:https:443@api,web" {
		t.Fatalf("key %q", got)
	}
	if got := (Rule{Dst: "api.example.com"}).Key(); got != "api.example.com:https:443" {
		t.Fatalf("global key %q", got)
	}
}

func TestProjectsFieldErrors(t *testing.T) {
	cases := []struct {
		r     Rule
		field string
		msg   string
	}{
		{Rule{Dst: "a.example.com", Projects: []string{"ok", "Bad Name"}}, "projects[1]", "not a project name"},
		{Rule{Dst: "a.example.com", Projects: []string{""}}, "projects[0]", "not a project name"},
		{Rule{Dst: "10.0.0.0/8", Proto: TCP, Port: Port(5432), Projects: []string{"api"}}, "projects", "decided in the kernel"},
	}
	for _, tc := range cases {
		_, err := tc.r.Canonical()
		if err == nil {
			t.Errorf("%+v: accepted", tc.r)
			continue
		}
		fes := fieldErrors(t, err)
		if len(fes) != 1 || fes[0].Field != tc.field || !strings.Contains(fes[0].Msg, tc.msg) {
			t.Errorf("%+v: %v, want one error on %s saying %q", tc.r, err, tc.field, tc.msg)
		}
	}
	// Names can be scoped on every proto, routed ones (tcp, ssh, https off
	// 443: their listener decides by the client's project) included.
	for _, r := range []Rule{
		{Dst: ".example.com", Projects: []string{"api"}},
		{Dst: "a.example.com", Proto: HTTP, Projects: []string{"api"}},
		{Dst: "git.example.com", Proto: SSH, Projects: []string{"api"}},
		{Dst: "db.example.com", Proto: TCP, Port: PortRange{5432, 5433}, Projects: []string{"api"}},
		{Dst: "a.example.com", Port: Port(8443), Projects: []string{"api"}},
	} {
		if _, err := r.Canonical(); err != nil {
			t.Errorf("%+v: %v", r, err)
		}
	}
}

func projectsDoc() Doc {
	return Doc{
		Generation: 7,
		Rules: []Entry{
			{ID: 1, Rule: Rule{Dst: "shared.example.com"}},
			{ID: 2, Rule: Rule{Dst: "api.example.com", Projects: []string{"alpha"}}},
			{ID: 3, Rule: Rule{Dst: "web.example.com", Projects: []string{"beta"}}},
			{ID: 4, Rule: Rule{Dst: "both.example.com", Projects: []string{"alpha", "beta"}}},
			// beta's deny beats the global allow on the same key.
			{ID: 5, Rule: Rule{Dst: ".cdn.example.com"}},
			{ID: 6, Rule: Rule{Dst: ".cdn.example.com", Action: Deny, Projects: []string{"beta"}}},
			// alpha's allow cannot open what a global deny closes.
			{ID: 7, Rule: Rule{Dst: "closed.example.com", Action: Deny}},
			{ID: 8, Rule: Rule{Dst: "closed.example.com", Projects: []string{"alpha"}}},
			// a more specific project rule beats a broader global one.
			{ID: 9, Rule: Rule{Dst: ".corp.example.com", Action: Deny}},
			{ID: 10, Rule: Rule{Dst: "build.corp.example.com", Projects: []string{"alpha"}}},
		},
		Agents: map[string]string{"127.0.0.2": "alpha", "127.0.0.3": "beta", "127.0.0.4": "gamma"},
	}
}

func TestPolicyForProjects(t *testing.T) {
	p, err := projectsDoc().Compile()
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		host  string
		allow map[string]bool // project -> allowed
	}
	cases := []want{
		{"shared.example.com", map[string]bool{"": true, "alpha": true, "beta": true, "gamma": true}},
		{"api.example.com", map[string]bool{"": false, "alpha": true, "beta": false, "gamma": false}},
		{"web.example.com", map[string]bool{"": false, "alpha": false, "beta": true, "gamma": false}},
		{"both.example.com", map[string]bool{"": false, "alpha": true, "beta": true, "gamma": false}},
		{"x.cdn.example.com", map[string]bool{"": true, "alpha": true, "beta": false, "gamma": true}},
		{"closed.example.com", map[string]bool{"": false, "alpha": false, "beta": false}},
		{"build.corp.example.com", map[string]bool{"": false, "alpha": true, "beta": false}},
	}
	for _, c := range cases {
		for project, allow := range c.allow {
			d := p.For(project).Decide(c.host, HTTPS, 443)
			if d.Allow != allow {
				t.Errorf("project %q %s: allow=%v (%s), want %v", project, c.host, d.Allow, d.Reason, allow)
			}
			_, resolvable := p.For(project).Resolvable(c.host)
			if resolvable != allow {
				t.Errorf("project %q %s: resolvable=%v, want %v", project, c.host, resolvable, allow)
			}
		}
	}
	if d := p.For("beta").Decide("x.cdn.example.com", HTTPS, 443); d.Rule == nil || d.Rule.ID != 6 {
		t.Errorf("beta cdn decided by %+v, want rule 6 (deny wins the tie)", d.Rule)
	}
	if got := p.Decide("api.example.com", HTTPS, 443).Reason; !strings.Contains(got, "no rule allows") {
		t.Errorf("global view on a project rule: %q", got)
	}
	// Views are compiled once and shared; unknown projects and "" get the
	// global view itself.
	if p.For("alpha") != p.For("alpha") || p.For("gamma") != p || p.For("") != p || p.For("alpha").For("") != p {
		t.Error("views not cached / global view not shared")
	}
	if p.For("alpha").Generation() != 7 {
		t.Errorf("view generation %d", p.For("alpha").Generation())
	}
	// By source address.
	for addr, project := range map[string]string{"127.0.0.2": "alpha", "127.0.0.3": "beta", "127.0.0.9": ""} {
		a := netip.MustParseAddr(addr)
		if got := p.ProjectOf(a); got != project {
			t.Errorf("ProjectOf(%s) = %q, want %q", addr, got, project)
		}
		if p.ForSource(a) != p.For(project) {
			t.Errorf("ForSource(%s) is not For(%q)", addr, project)
		}
	}
	if !p.ForSource(netip.MustParseAddr("::ffff:127.0.0.2")).Decide("api.example.com", HTTPS, 443).Allow {
		t.Error("a v4-mapped source is not its agent")
	}
	if len(p.ScopedEntries()) != 6 || p.Len() != 4 || p.For("alpha").Len() != 8 {
		t.Errorf("scoped %d, global %d, alpha %d", len(p.ScopedEntries()), p.Len(), p.For("alpha").Len())
	}
	var nilp *Policy
	if nilp.For("alpha") != nil || nilp.ForSource(netip.MustParseAddr("127.0.0.2")).Decide("shared.example.com", HTTPS, 443).Allow {
		t.Error("nil policy")
	}
}

func TestPolicyForConcurrent(t *testing.T) {
	p, err := projectsDoc().Compile()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	views := make([]*Policy, 16)
	for i := range views {
		wg.Add(1)
		go func() {
			defer wg.Done()
			views[i] = p.For("beta")
			if !views[i].Decide("web.example.com", HTTPS, 443).Allow {
				t.Error("beta cannot reach its rule")
			}
		}()
	}
	wg.Wait()
	for _, v := range views {
		if v != views[0] {
			t.Fatal("two views of one project")
		}
	}
}

func TestDocProjectsJSON(t *testing.T) {
	b, err := json.Marshal(projectsDoc())
	if err != nil {
		t.Fatal(err)
	}
	var d Doc
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	p, err := d.Compile()
	if err != nil {
		t.Fatal(err)
	}
	if !p.ForSource(netip.MustParseAddr("127.0.0.2")).Decide("api.example.com", HTTPS, 443).Allow {
		t.Error("projects or agents lost in JSON")
	}
	bad := Doc{Agents: map[string]string{"not-an-ip": "alpha", "2001:db8::1": "alpha", "127.0.0.5": "Bad"}}
	_, err = bad.Compile()
	if err == nil {
		t.Fatal("bad agents accepted")
	}
	fes := fieldErrors(t, err)
	if len(fes) != 3 {
		t.Fatalf("%d errors: %v", len(fes), err)
	}
	for _, f := range []string{`agents "2001:db8::1"`, `agents "not-an-ip"`, `agents[127.0.0.5] "Bad"`} {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error %q does not name %s", err, f)
		}
	}
}

func TestStoreProjects(t *testing.T) {
	s := OpenStore(t.TempDir())
	st, _, err := s.Add([]Rule{
		{Dst: "api.example.com"},
		{Dst: "api.example.com", Projects: []string{"alpha"}},
		{Dst: "api.example.com", Action: Deny, Projects: []string{"beta"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if st[0] != Added || st[1] != Added || st[2] != Added {
		t.Fatalf("statuses %v: a project's rule is its own rule beside the global one", st)
	}
	// The same key again merges into that project's rule only.
	st, list, err := s.Add([]Rule{{Dst: "api.example.com", Action: Allow, Projects: []string{"beta"}}})
	if err != nil || st[0] != Modified {
		t.Fatalf("%v %v", st, err)
	}
	if len(list) != 3 {
		t.Fatalf("list %+v", list)
	}
	ids := map[string]uint32{}
	for _, e := range list {
		ids[e.Key()] = e.ID
	}
	if len(ids) != 3 || ids["api.example.com:https:443"] == ids["api.example.com:https:443@alpha"] {
		t.Fatalf("ids %v", ids)
	}
	// The file round-trips the scope.
	data, err := os.ReadFile(s.RulesPath())
	if err != nil || !strings.Contains(string(data), "projects:") {
		t.Fatalf("rules file %q %v", data, err)
	}
	got, err := OpenStore(s.Dir()).List()
	if err != nil || len(got) != 3 {
		t.Fatalf("%v %v", got, err)
	}
	// remove --project removes that project's rule, not the global one.
	rs, list, err := s.Remove(Rule{Dst: "api.example.com", Projects: []string{"alpha"}})
	if err != nil || rs != Removed || len(list) != 2 {
		t.Fatalf("%v %v %v", rs, list, err)
	}
	if rs, _, _ := s.Remove(Rule{Dst: "api.example.com", Projects: []string{"alpha"}}); rs != NotFound {
		t.Fatalf("second remove %v", rs)
	}
	rs, list, err = s.Remove(Rule{Dst: "api.example.com"})
	if err != nil || rs != Removed || len(list) != 1 || strings.Join(list[0].Projects, ",") != "beta" {
		t.Fatalf("%v %+v %v", rs, list, err)
	}
}

func TestStoreProjectsFileErrors(t *testing.T) {
	dir := t.TempDir()
	s := OpenStore(dir)
	if err := os.WriteFile(s.RulesPath(), []byte("rules:\n  - dst: a.example.com\n    projects: [ok, {x: 1}]\n  - dst: b.example.com\n    projects: {x: 1}\n  - dst: c.example.com\n    projects: alpha\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := s.List()
	if err == nil {
		t.Fatal("bad projects accepted")
	}
	for _, f := range []string{"rules[0]: projects[1]", "rules[1]: projects"} {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("%v does not name %s", err, f)
		}
	}
	if strings.Contains(err.Error(), "rules[2]") {
		t.Errorf("a single project name refused: %v", err)
	}
}

// The proxy resolves for every project's agents: a name is resolvable to
// it when some project's view resolves it, with every such view's ids.
func TestResolvableFromProxy(t *testing.T) {
	d := projectsDoc()
	d.Proxies = []string{"127.0.0.200"}
	p, err := d.Compile()
	if err != nil {
		t.Fatal(err)
	}
	proxy := netip.MustParseAddr("127.0.0.200")
	for name, want := range map[string][]uint32{
		"shared.example.com": {1}, "api.example.com": {2}, "web.example.com": {3}, "both.example.com": {4},
		"x.cdn.example.com": {5}, "build.corp.example.com": {10}, "closed.example.com": nil, "other.example.com": nil,
	} {
		ids, ok := p.ResolvableFrom(proxy, name)
		if ok != (want != nil) || !slices.Equal(ids, want) {
			t.Errorf("proxy %s: %v %v, want %v", name, ids, ok, want)
		}
	}
	// An agent still gets its own project's view.
	if _, ok := p.ResolvableFrom(netip.MustParseAddr("127.0.0.2"), "web.example.com"); ok {
		t.Error("alpha's agent resolves beta's name")
	}
	if _, ok := p.ResolvableFrom(netip.MustParseAddr("127.0.0.2"), "api.example.com"); !ok {
		t.Error("alpha's agent cannot resolve its own name")
	}
	_, err = Doc{Proxies: []string{"proxy"}}.Compile()
	if err == nil || !strings.Contains(err.Error(), `proxies[0] "proxy"`) {
		t.Errorf("bad proxy: %v", err)
	}
}
