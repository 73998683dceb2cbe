package egressrules

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func scopedRoutesDoc() Doc {
	alpha, beta := []string{"alpha"}, []string{"beta"}
	return Doc{
		Generation: 3,
		Rules: []Entry{
			{ID: 1, Rule: Rule{Dst: "github.com"}},                                                // global https 443
			{ID: 2, Rule: Rule{Dst: "git.alpha.test", Proto: SSH, Projects: alpha}},               // a name only alpha resolves
			{ID: 3, Rule: Rule{Dst: "github.com", Proto: TCP, Port: Port(2222), Projects: beta}},  // beta's port on a global name
			{ID: 4, Rule: Rule{Dst: ".tls.test", Port: Port(8443), Projects: alpha}},              // https off 443, wildcard
			{ID: 5, Rule: Rule{Dst: "db.test", Proto: TCP, Port: Port(5432)}},                     // global tcp
			{ID: 6, Rule: Rule{Dst: "db.test", Proto: TCP, Port: Port(5433), Projects: beta}},     // beta's beside it
			{ID: 7, Rule: Rule{Dst: "n.test", Projects: alpha}},                                   // alpha: https only
			{ID: 8, Rule: Rule{Dst: "n.test", Proto: TCP, Port: Port(9000), Projects: beta}},      // beta: tcp 9000
			{ID: 9, Rule: Rule{Dst: ".wild.test", Proto: TCP, Port: Port(9100), Projects: alpha}}, // no name to pin
		},
		Agents: map[string]string{"172.30.0.5": "alpha", "172.30.0.6": "beta"},
	}
}

// Scoped routed rules get listeners like global ones, and their kernel
// routes are installed under the lowest id of every project's view of the
// name: the address's identity is whichever of them the live answers hold.
func TestRoutesOfScopedRules(t *testing.T) {
	t.Parallel()
	p, err := scopedRoutesDoc().Compile()
	if err != nil {
		t.Fatal(err)
	}
	rs := p.Routes()
	var got []string
	for _, l := range rs.Listeners {
		got = append(got, l.Rule.Key()+"@"+portText(l.Port))
	}
	slices.Sort(got)
	want := []string{
		".tls.test:https:8443@alpha@8443", "db.test:tcp:5432@5432", "db.test:tcp:5433@beta@5433",
		"git.alpha.test:ssh:22@alpha@22", "github.com:tcp:2222@beta@2222", "n.test:tcp:9000@beta@9000",
	}
	if !slices.Equal(got, want) {
		t.Errorf("listeners %v\nwant %v", got, want)
	}
	if rs.Unrouted == nil || !strings.Contains(rs.Unrouted.Error(), ".wild.test") {
		t.Errorf("Unrouted %v, want the scoped wildcard tcp rule", rs.Unrouted)
	}
	// A scoped rule's listener sits in its id's block, as a global one's.
	for _, l := range rs.Listeners {
		if base := RouteListenerFirst + uint16((l.RuleID-1)*MaxRoutedPorts); l.Listen != base {
			t.Errorf("rule %d listens on %d, want its block's port %d", l.RuleID, l.Listen, base)
		}
	}
	listen := func(id uint32, port uint16) uint16 {
		l, ok := listenerOf(rs, id, port)
		if !ok {
			t.Fatalf("no listener for rule %d port %d", id, port)
		}
		return l.Listen
	}
	routes := []struct {
		identity, port uint16
		rule           uint32
		why            string
	}{
		{2, 22, 2, "git.alpha.test: alpha's answers carry {2}"},
		{1, 2222, 3, "github.com: every view's lowest id is the global https rule's 1"},
		{4, 8443, 4, "a .tls.test name: alpha's answers carry {4}"},
		{5, 5432, 5, "db.test: global {5}"},
		{5, 5433, 6, "db.test: beta's {5, 6} hold 5 too"},
		{7, 9000, 8, "n.test resolved by alpha ({7}) and beta ({8}): the address holds 7, beta's connect must still be routed"},
		{8, 9000, 8, "n.test resolved by beta alone"},
	}
	for _, r := range routes {
		if l, ok := kernelRoute(rs, uint32(r.identity), r.port); !ok || l != listen(r.rule, r.port) {
			t.Errorf("route (%d, %d) -> %d %v, want rule %d's listener %d (%s)", r.identity, r.port, l, ok, r.rule, listen(r.rule, r.port), r.why)
		}
	}
	if len(rs.Kernel) != len(routes) {
		t.Errorf("kernel routes %+v, want exactly %d", rs.Kernel, len(routes))
	}
	// The doc's rules without the scoped ones route as before: the global
	// view alone.
	var global []Entry
	for _, e := range scopedRoutesDoc().Rules {
		if len(e.Projects) == 0 {
			global = append(global, e)
		}
	}
	gr := Compile(global, nil).Routes()
	if len(gr.Listeners) != 1 || len(gr.Kernel) != 1 || gr.Kernel[0] != (KernelRoute{Identity: 5, Port: 5432, Listen: listen(5, 5432)}) {
		t.Errorf("global rules alone: %+v %+v", gr.Listeners, gr.Kernel)
	}
}

// The proxy and the control plane compute the same assignment from the
// rules alone: the agents map, the view Routes is asked on, and the order
// of the rules change nothing; adding a scoped rule moves no listener.
func TestRoutesOfScopedRulesAreStable(t *testing.T) {
	t.Parallel()
	doc := scopedRoutesDoc()
	p, err := doc.Compile()
	if err != nil {
		t.Fatal(err)
	}
	base := p.Routes(15001, 15002)
	base.Unrouted = nil

	other := scopedRoutesDoc()
	other.Agents = map[string]string{"172.30.0.9": "gamma"}
	slices.Reverse(other.Rules)
	q, err := other.Compile()
	if err != nil {
		t.Fatal(err)
	}
	for name, rs := range map[string]Routes{
		"other agents, reversed rules": q.Routes(15001, 15002),
		"alpha's view":                 p.For("alpha").Routes(15001, 15002),
		"beta's view by source":        p.ForSource(netip.MustParseAddr("172.30.0.6")).Routes(15001, 15002),
		"again":                        p.Routes(15001, 15002),
	} {
		rs.Unrouted = nil
		if !reflect.DeepEqual(rs, base) {
			t.Errorf("%s: %+v\nwant %+v", name, rs, base)
		}
	}

	grown := scopedRoutesDoc()
	grown.Rules = append(grown.Rules, Entry{ID: 12, Rule: Rule{Dst: "n.test", Proto: SSH, Port: Port(9000), Projects: []string{"alpha"}}})
	g, err := grown.Compile()
	if err != nil {
		t.Fatal(err)
	}
	grs := g.Routes(15001, 15002)
	for _, l := range base.Listeners {
		if m, ok := listenerOf(grs, l.RuleID, l.Port); !ok || m.Listen != l.Listen {
			t.Errorf("adding a scoped rule moved %+v to %+v", l, m)
		}
	}
	// alpha's ssh 9000 and beta's tcp 9000 on n.test share (7, 9000) and
	// (8, 9000) (alpha's answers carry {7, 12}, beta's {8}): both pinned,
	// the lower id (8) serves both keys.
	l8, _ := listenerOf(grs, 8, 9000)
	for _, id := range []uint32{7, 8} {
		if l, ok := kernelRoute(grs, id, 9000); !ok || l != l8.Listen {
			t.Errorf("route (%d, 9000) -> %d %v, want rule 8's %d", id, l, ok, l8.Listen)
		}
	}
	if _, ok := kernelRoute(grs, 12, 9000); ok {
		t.Errorf("route (12, 9000) installed: no address carries identity 12")
	}
}
