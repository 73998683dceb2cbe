package firewall_test

import (
	"slices"
	"testing"

	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// A tcp rule scoped to a project is stored and routed like a global one:
// the kernel gets its route under the name's lowest id, on the listener
// the proxy opens from the same rules.
func TestScopedRoutedRulesSyncTheKernelRoutes(t *testing.T) {
	t.Parallel()
	fe := &fakeEBPF{}
	r := spawnRouted(t, fe)
	scoped := rule("git.alpha.example.com", egressrules.TCP, 2222, "")
	scoped.Projects = []string{"alpha"}
	res := r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{rule("db.example.com", egressrules.TCP, 5432, ""), scoped}})
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	want := egressrules.Compile(res.Rules, nil).Routes(15001, firewall.ProxyHealthPort(15001))
	if len(want.Kernel) != 2 {
		t.Fatalf("routes of the stored rules %+v, want the global and the scoped one", want.Kernel)
	}
	var wantRoutes []egress.Route
	for _, k := range want.Kernel {
		wantRoutes = append(wantRoutes, egress.Route{Identity: k.Identity, Port: k.Port, Proto: egress.TCP, ListenerPort: k.Listen})
	}
	sortRoutes(wantRoutes)
	lastRoutes(t, fe, "the global and the scoped tcp rules'", func(got []egress.Route) bool {
		sortRoutes(got)
		return slices.Equal(got, wantRoutes)
	})
	var scopedID uint32
	for _, e := range res.Rules {
		if len(e.Projects) > 0 {
			scopedID = e.ID
		}
	}
	if !slices.ContainsFunc(wantRoutes, func(rt egress.Route) bool { return rt.Identity == scopedID && rt.Port == 2222 }) {
		t.Errorf("no route (%d, 2222) for the scoped rule among %+v", scopedID, wantRoutes)
	}
}
