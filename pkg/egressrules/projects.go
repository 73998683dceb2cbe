package egressrules

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"github.com/clawker/clawker-cp/pkg/naming"
)

const fieldProjects = "projects"

// canonicalProjects sorts and deduplicates r's projects into out and fails
// each name that is not a project name. A rule on an IP or CIDR cannot be
// scoped: the kernel decides it by destination alone, without knowing the
// agent's project, so the scope would not hold. A rule served by a
// dedicated proxy listener (tcp, ssh, https off 443) can: the kernel's
// route to the listener is global, but the listener decides every
// connection by its client's project (Routes).
func canonicalProjects(r Rule, out *Rule, fail func(field, value, msg string)) {
	if len(r.Projects) == 0 {
		out.Projects = nil
		return
	}
	ps := slices.Clone(r.Projects)
	ok := true
	for i, p := range ps {
		if !naming.ValidProject(p) {
			ok = false
			fail(fmt.Sprintf("%s[%d]", fieldProjects, i), p,
				"not a project name (lower-case letters, digits and . _ -, starting with a letter or digit, at most 63 characters: "+naming.ProjectRule+")")
		}
	}
	slices.Sort(ps)
	out.Projects = slices.Compact(ps)
	if !ok {
		return
	}
	if out.IsIP() {
		fail(fieldProjects, out.Projects[0],
			"an IP or CIDR rule is decided in the kernel, which does not tell projects apart yet (drop projects to make the rule global, or write the destination's name)")
	}
}

// scope is what the global view and its project views share: the scoped
// rules, the agents' projects and the views compiled so far.
type scope struct {
	global   *Policy
	scoped   []Entry         // canonical entries with projects
	projects map[string]bool // every project a rule names
	agents   map[netip.Addr]string
	proxies  []netip.Addr

	views sync.Map   // project -> *Policy, read without a lock on every decision
	mu    sync.Mutex // held while a view is compiled, so each is compiled once
}

// For is the view of project's agents: the global rules and the rules
// scoped to project, decided by the usual precedence (so at equal
// specificity a deny wins, whichever of the two scopes it is in). A project
// no rule names, and "", get the global view itself. A view is compiled
// once per project, on first use, and shared; For is safe for concurrent
// use. A nil Policy stays nil (it denies everything).
func (p *Policy) For(project string) *Policy {
	if p == nil || p.scope == nil || project == "" {
		return p.globalView()
	}
	sc := p.scope
	if !sc.projects[project] {
		return sc.global
	}
	if v, ok := sc.views.Load(project); ok {
		return v.(*Policy)
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if v, ok := sc.views.Load(project); ok {
		return v.(*Policy)
	}
	g := sc.global
	in := make([]Entry, 0, len(g.entries)+len(sc.scoped))
	in = append(append(in, g.entries...), sc.scoped...)
	v := compileView(in, g.private, project, sc)
	v.generation = g.generation
	sc.views.Store(project, v)
	return v
}

func (p *Policy) globalView() *Policy {
	if p == nil || p.scope == nil || p.scope.global == nil {
		return p
	}
	return p.scope.global
}

// ProjectOf is the project of the agent at addr, "" when the doc named no
// agent there.
func (p *Policy) ProjectOf(addr netip.Addr) string {
	if p == nil || p.scope == nil {
		return ""
	}
	return p.scope.agents[addr.Unmap().WithZone("")]
}

// ForSource is the view of the agent at addr: For(ProjectOf(addr)).
func (p *Policy) ForSource(addr netip.Addr) *Policy { return p.For(p.ProjectOf(addr)) }

// ResolvableFrom is Resolvable for a query from addr: by the rules of its
// agent's project, or for a proxy (Doc.Proxies) by every project's: the
// name is resolvable when some view resolves it, with the ids of all of
// them.
func (p *Policy) ResolvableFrom(addr netip.Addr, name string) ([]uint32, bool) {
	if p == nil || p.scope == nil || !slices.Contains(p.scope.proxies, addr.Unmap().WithZone("")) {
		return p.ForSource(addr).Resolvable(name)
	}
	ids, ok := p.globalView().Resolvable(name)
	if len(p.scope.projects) == 0 {
		return ids, ok
	}
	union := slices.Clone(ids)
	for project := range p.scope.projects {
		if vids, vok := p.For(project).Resolvable(name); vok {
			ok = true
			union = append(union, vids...)
		}
	}
	slices.Sort(union)
	return slices.Compact(union), ok
}

// ScopedEntries returns a copy of the rules scoped to projects (canonical),
// which the global view leaves out.
func (p *Policy) ScopedEntries() []Entry {
	if p == nil || p.scope == nil {
		return nil
	}
	return slices.Clone(p.scope.scoped)
}

// parseProxies checks a doc's proxy addresses.
func parseProxies(in []string) ([]netip.Addr, []error) {
	var out []netip.Addr
	var errs []error
	for i, s := range in {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			errs = append(errs, &FieldError{Index: -1, Field: fmt.Sprintf("proxies[%d]", i), Value: s,
				Msg: "not the proxy's IPv4 address (write 172.30.0.200)"})
			continue
		}
		out = append(out, a)
	}
	return out, errs
}

// parseAgents checks a doc's agents map: IPv4 addresses to project names.
func parseAgents(in map[string]string) (map[netip.Addr]string, []error) {
	if len(in) == 0 {
		return nil, nil
	}
	var errs []error
	out := make(map[netip.Addr]string, len(in))
	for _, k := range slices.Sorted(maps.Keys(in)) {
		a, err := netip.ParseAddr(k)
		if err != nil || !a.Is4() {
			errs = append(errs, &FieldError{Index: -1, Field: "agents", Value: k,
				Msg: "not an agent's IPv4 address (write 172.30.0.5: myproject)"})
			continue
		}
		if !naming.ValidProject(in[k]) {
			errs = append(errs, &FieldError{Index: -1, Field: "agents[" + k + "]", Value: in[k],
				Msg: "not a project name (" + naming.ProjectRule + ")"})
			continue
		}
		out[a] = in[k]
	}
	return out, errs
}
