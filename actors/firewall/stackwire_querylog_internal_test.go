package firewall

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/clawker/clawker-cp/actors/firewall/stack"
	"github.com/clawker/clawker-cp/pkg/stackapi"
)

// The DNS sibling gets --query-log exactly when the stack config asks for
// it; being an argument, it is part of the spec's hash (a settings change
// replaces the sibling, pkg/sibling's replace test).
func TestManagedDNSQueryLogArg(t *testing.T) {
	ca, err := stackapi.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, on := range []bool{false, true} {
		a := &Actor{}
		a.cfg.Stack = &StackConfig{BinDir: t.TempDir(), CA: ca, NetworkName: "clawker-test-net", Port: 7443,
			UpstreamDNS: []string{"192.0.2.53:53"}, DNSQueryLog: on}
		a.addrs = stack.Addrs{DNS: netip.MustParseAddrPort("10.99.0.200:53"), Gateway: netip.MustParseAddr("10.99.0.1")}
		spec, err := a.managedDNS().Spec()
		if err != nil {
			t.Fatal(err)
		}
		if got := slices.Contains(spec.Args, "--query-log"); got != on {
			t.Errorf("DNSQueryLog %v: args %q", on, spec.Args)
		}
	}
}
