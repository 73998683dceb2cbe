package egress

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestPrivilegedIPRules: through the real programs, an IP rule that
// allows a TCP destination lets the connect through unchanged (no proxy),
// a deny rule gives EPERM, a rule for other ports leaves the connect to
// the proxy, UDP never matches, and on the agent network only a rule
// naming the address itself opens it (a broad CIDR does not).
func TestPrivilegedIPRules(t *testing.T) {
	requirePrivileged(t)
	w := newWorld(t)
	m, cg, cgid := w.setup(t)
	must(t, m.Enroll(cgid, w.cfg))

	allowed := newTCPRecorder(t, "127.0.0.40:0")
	denied := newTCPRecorder(t, "127.0.0.41:0")
	portOnly := newTCPRecorder(t, "127.0.0.42:0")
	otherPort := newTCPRecorder(t, "127.0.0.42:0")
	collector := newTCPRecorder(t, "127.0.0.21:0") // on the agent network, not an agent
	broadOnly := newTCPRecorder(t, "127.0.0.22:0") // on the agent network, only a /28 covers it

	exact := func(r *recorder) netip.Prefix { return netip.PrefixFrom(r.Addr.Addr(), 32) }
	one := func(id uint32, p netip.Prefix, port uint16, allow bool) IPRule {
		return IPRule{ID: id, Prefix: p, PortLo: port, PortHi: port, Allow: allow}
	}
	subnet := netip.MustParsePrefix(subnetPrefix)
	entries := []IPRuleEntry{
		{Prefix: netip.MustParsePrefix("127.0.0.40/31"), Rules: []IPRule{one(1, netip.MustParsePrefix("127.0.0.40/31"), allowed.Addr.Port(), true)}},
		{Prefix: exact(denied), Rules: []IPRule{
			{ID: 2, Prefix: exact(denied), PortLo: 1, PortHi: 65535, Allow: false},
		}},
		{Prefix: exact(portOnly), Rules: []IPRule{one(3, exact(portOnly), portOnly.Addr.Port(), true)}},
		{Prefix: subnet, Rules: []IPRule{{ID: 4, Prefix: subnet, PortLo: 1, PortHi: 65535, Allow: true}}},
		// The collector's entry holds its own rule and, pushed down, the
		// /28's: only its own counts on the agent network.
		{Prefix: exact(collector), Rules: []IPRule{
			one(5, exact(collector), collector.Addr.Port(), true),
			{ID: 4, Prefix: subnet, PortLo: 1, PortHi: 65535, Allow: true},
		}},
	}
	must(t, m.SyncIPRules(entries))
	got, err := m.IPRules()
	must(t, err)
	if len(got) != len(entries) {
		t.Fatalf("IPRules read back %d entries, want %d: %+v", len(got), len(entries), got)
	}
	for _, e := range entries {
		i := slices.IndexFunc(got, func(g IPRuleEntry) bool { return g.Prefix == e.Prefix })
		if i < 0 || !slices.Equal(got[i].Rules, e.Rules) {
			t.Errorf("entry %s read back as %+v, want %+v", e.Prefix, got, e.Rules)
		}
	}

	ap := func(r *recorder) string { return r.Addr.String() }
	for _, c := range []struct {
		name string
		op   string
		addr string
		at   *recorder // reached, and getpeername says so (nil: EPERM)
		peer string
	}{
		{"allowed CIDR: straight through", "tcp", ap(allowed), allowed, ap(allowed)},
		{"denied address: EPERM", "tcp", ap(denied), nil, ""},
		{"rule for its port: straight through", "tcp", ap(portOnly), portOnly, ap(portOnly)},
		{"no rule for this port: the proxy", "tcp", ap(otherPort), w.proxy, ap(w.proxy)},
		{"UDP never matches a rule: EPERM", "udp-sendto", "127.0.0.40:9999", nil, ""},
		{"agent network, a rule naming the address", "tcp", ap(collector), collector, ap(collector)},
		{"agent network, only a broad CIDR: EPERM", "tcp", ap(broadOnly), nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			op := helperOp{Op: c.op, Addr: c.addr, UID: nobody, Cgroup: cg, Token: fmt.Sprintf("iprules/%s", randomSuffix(t))}
			res := runInCgroup(t, op)
			if c.at == nil {
				if res.Errno != int(unix.EPERM) {
					t.Fatalf("%s %s: %s (%s), want EPERM", c.op, c.addr, errnoName(res.Errno), res.Err)
				}
				for _, r := range []*recorder{allowed, denied, portOnly, otherPort, collector, broadOnly, w.proxy} {
					if r.has(op.Token) {
						t.Errorf("the token reached %s", r.Addr)
					}
				}
				return
			}
			if res.Errno != 0 {
				t.Fatalf("%s %s: %s (%s), want success", c.op, c.addr, errnoName(res.Errno), res.Err)
			}
			if _, ok := c.at.wait(op.Token, 2*time.Second); !ok {
				t.Fatalf("the token did not reach %s", c.at.Addr)
			}
			if res.Peer != c.peer {
				t.Errorf("getpeername %s, want %s", res.Peer, c.peer)
			}
		})
	}
}
