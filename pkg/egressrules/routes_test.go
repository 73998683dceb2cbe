package egressrules

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func listenerOf(rs Routes, id uint32, port uint16) (RouteListener, bool) {
	for _, l := range rs.Listeners {
		if l.RuleID == id && l.Port == port {
			return l, true
		}
	}
	return RouteListener{}, false
}

func kernelRoute(rs Routes, identity uint32, port uint16) (uint16, bool) {
	for _, k := range rs.Kernel {
		if k.Identity == identity && k.Port == port {
			return k.Listen, true
		}
	}
	return 0, false
}

func TestRoutesWhichRulesGetListeners(t *testing.T) {
	t.Parallel()
	p := Compile(entries(
		Rule{Dst: "git.example.com", Proto: SSH},                               // 1: ssh 22
		Rule{Dst: "db.example.com", Proto: TCP, Port: Port(5432)},              // 2
		Rule{Dst: "api.example.com", Proto: HTTPS, Port: Port(8443)},           // 3
		Rule{Dst: "example.com"},                                               // 4: https 443: catch-all
		Rule{Dst: "example.com", Proto: HTTP, Port: Port(8080)},                // 5: http: Host names the port
		Rule{Dst: "10.0.0.0/8", Proto: TCP, Port: Port(5432)},                  // 6: the kernel's IP rules
		Rule{Dst: "deny.example.com", Proto: TCP, Port: Port(1), Action: Deny}, // 7
		Rule{Dst: "r.example.com", Proto: TCP, Port: PortRange{7000, 7002}},    // 8
		Rule{Dst: ".wild.example.com", Proto: SSH},                             // 9: no name to pin
		Rule{Dst: "both.example.com", Proto: HTTPS, Port: PortRange{442, 444}}, // 10: 443 stays on the catch-all
	), nil)
	rs := p.Routes()
	var got []string
	for _, l := range rs.Listeners {
		got = append(got, l.Rule.Key()+"@"+portText(l.Port))
	}
	slices.Sort(got)
	want := []string{
		"api.example.com:https:8443@8443", "both.example.com:https:442-444@442", "both.example.com:https:442-444@444",
		"db.example.com:tcp:5432@5432", "git.example.com:ssh:22@22",
		"r.example.com:tcp:7000-7002@7000", "r.example.com:tcp:7000-7002@7001", "r.example.com:tcp:7000-7002@7002",
	}
	if !slices.Equal(got, want) {
		t.Errorf("listeners %v\nwant %v", got, want)
	}
	var fe *FieldError
	if !errors.As(rs.Unrouted, &fe) || fe.Field != "dst" || fe.Value != ".wild.example.com" || !strings.Contains(fe.Error(), "wild.example.com)") {
		t.Errorf("Unrouted %v, want the wildcard ssh rule named with the fix", rs.Unrouted)
	}
	if l, _ := listenerOf(rs, 1, 22); l.PinnedHost() != "git.example.com" {
		t.Errorf("ssh listener pinned to %q", l.PinnedHost())
	}
	if l, _ := listenerOf(rs, 3, 8443); l.PinnedHost() != "" {
		t.Errorf("https listener pinned to %q, want none (decides on the SNI)", l.PinnedHost())
	}
	for _, l := range rs.Listeners {
		if l.Listen < RouteListenerFirst || l.Listen >= RouteListenerFirst+RouteListenerCount {
			t.Errorf("listener %+v outside %d-%d", l, RouteListenerFirst, RouteListenerFirst+RouteListenerCount-1)
		}
	}
}

func portText(p uint16) string { return PortRange{p, p}.String() }

// Adding a rule never moves another rule's listener; removing one moves
// none while there are few routed rules; the proxy's own ports are avoided.
func TestRoutesAssignmentIsStable(t *testing.T) {
	t.Parallel()
	base := []Entry{
		{ID: 3, Rule: Rule{Dst: "a.test", Proto: TCP, Port: Port(2222)}},
		{ID: 7, Rule: Rule{Dst: "b.test", Proto: TCP, Port: PortRange{3000, 3003}}},
		{ID: 9, Rule: Rule{Dst: "c.test", Proto: SSH}},
	}
	before := Compile(base, nil).Routes()
	grown := Compile(append(slices.Clone(base), Entry{ID: 12, Rule: Rule{Dst: "d.test", Proto: TCP, Port: Port(1)}}), nil).Routes()
	shrunk := Compile(base[1:], nil).Routes()
	for _, l := range before.Listeners {
		if g, ok := listenerOf(grown, l.RuleID, l.Port); !ok || g.Listen != l.Listen {
			t.Errorf("adding a rule moved %+v to %+v", l, g)
		}
		if l.RuleID == 3 {
			continue
		}
		if s, ok := listenerOf(shrunk, l.RuleID, l.Port); !ok || s.Listen != l.Listen {
			t.Errorf("removing rule 3 moved %+v to %+v", l, s)
		}
	}
	if l, _ := listenerOf(before, 3, 2222); l.Listen != RouteListenerFirst+2*MaxRoutedPorts {
		t.Errorf("rule 3 listens on %d, want its block's first port %d", l.Listen, RouteListenerFirst+2*MaxRoutedPorts)
	}
	// The catch-all configured inside the range: skipped, by both sides.
	avoid := RouteListenerFirst + 2*MaxRoutedPorts
	moved := Compile(base, nil).Routes(avoid)
	if l, _ := listenerOf(moved, 3, 2222); l.Listen == avoid {
		t.Errorf("rule 3 took the avoided port %d", avoid)
	}
	// Ids that share a block (id 1 and id 57) still get distinct ports.
	wrap := Compile([]Entry{
		{ID: 1, Rule: Rule{Dst: "a.test", Proto: TCP, Port: Port(1)}},
		{ID: 57, Rule: Rule{Dst: "b.test", Proto: TCP, Port: Port(1)}},
	}, nil).Routes()
	if len(wrap.Listeners) != 2 || wrap.Listeners[0].Listen == wrap.Listeners[1].Listen {
		t.Errorf("colliding blocks: %+v", wrap.Listeners)
	}
}

// The kernel holds the lowest id of a name's rules for its addresses: the
// routes of every routed rule of that name are installed under it.
func TestRoutesKernelIdentityIsTheNamesLowestID(t *testing.T) {
	t.Parallel()
	p := Compile([]Entry{
		{ID: 2, Rule: Rule{Dst: "github.com"}},                               // https 443
		{ID: 5, Rule: Rule{Dst: "github.com", Proto: SSH}},                   // 22
		{ID: 6, Rule: Rule{Dst: ".tls.test", Port: Port(8443)}},              // https 8443, wildcard
		{ID: 8, Rule: Rule{Dst: "x.tls.test", Proto: TCP, Port: Port(8443)}}, // shares 8443 with 6
		{ID: 9, Rule: Rule{Dst: "solo.test", Proto: TCP, Port: Port(9000)}},
	}, nil)
	if ids, _ := p.Resolvable("github.com"); !slices.Equal(ids, []uint32{2, 5}) {
		t.Fatalf("github.com resolvable ids %v", ids)
	}
	rs := p.Routes()
	ssh, _ := listenerOf(rs, 5, 22)
	if l, ok := kernelRoute(rs, 2, 22); !ok || l != ssh.Listen {
		t.Errorf("route (2, 22) %d %v, want the ssh rule's listener %d (2 is github.com's kernel identity)", l, ok, ssh.Listen)
	}
	if _, ok := kernelRoute(rs, 5, 22); ok {
		t.Errorf("route (5, 22) installed: no address carries identity 5")
	}
	wild, _ := listenerOf(rs, 6, 8443)
	// x.tls.test's answers carry {6, 8}, so its addresses hold identity 6
	// too: (6, 8443) has two candidates and the pinned tcp listener wins
	// (the documented cost: another .tls.test name on 8443 reaches it).
	if ids, _ := p.Resolvable("x.tls.test"); !slices.Equal(ids, []uint32{6, 8}) {
		t.Fatalf("x.tls.test ids %v", ids)
	}
	if l, ok := kernelRoute(rs, 6, 8443); !ok || l == wild.Listen {
		t.Errorf("route (6, 8443) -> %d, want x.tls.test's tcp listener", l)
	}
	if l, ok := kernelRoute(rs, 9, 9000); !ok {
		t.Errorf("route (9, 9000) missing")
	} else if sl, _ := listenerOf(rs, 9, 9000); sl.Listen != l {
		t.Errorf("route (9, 9000) -> %d, want %d", l, sl.Listen)
	}
	for _, k := range rs.Kernel {
		if k.Identity == 0 {
			t.Errorf("route with identity 0: %+v", k)
		}
	}
}

func TestCheckRoutableRefusesLargeRanges(t *testing.T) {
	t.Parallel()
	rules, err := Validate([]Rule{
		{Dst: "ok.test", Proto: TCP, Port: PortRange{2000, 2015}},
		{Dst: "big.test", Proto: TCP, Port: PortRange{2000, 2016}},
		{Dst: "web.test", Proto: HTTP, Port: PortRange{8000, 8100}}, // http: not routed
		{Dst: "10.0.0.0/8", Proto: TCP, Port: PortRange{1, 65535}},  // kernel IP rule
		{Dst: ".wild.test", Proto: SSH},                             // reported by Routes, not refused
	})
	if err != nil {
		t.Fatal(err)
	}
	err = CheckRoutable(rules)
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Index != 1 || fe.Field != "port" || fe.Value != "2000-2016" {
		t.Fatalf("CheckRoutable: %v, want rules[1] port 2000-2016 refused", err)
	}
	if strings.Count(err.Error(), "rules[") != 1 || !strings.Contains(err.Error(), "at most 16") {
		t.Errorf("CheckRoutable: %v", err)
	}
}

func TestRoutesExhaustedPortsAreReported(t *testing.T) {
	t.Parallel()
	var es []Entry
	for i := 1; i <= RouteListenerCount/MaxRoutedPorts+1; i++ {
		es = append(es, Entry{ID: uint32(i), Rule: Rule{Dst: "h" + portText(uint16(i)) + ".test", Proto: TCP, Port: PortRange{1, MaxRoutedPorts}}})
	}
	rs := Compile(es, nil).Routes()
	if len(rs.Listeners) != RouteListenerCount {
		t.Errorf("%d listeners, want all %d ports used", len(rs.Listeners), RouteListenerCount)
	}
	if rs.Unrouted == nil || !strings.Contains(rs.Unrouted.Error(), "h57.test") {
		t.Errorf("Unrouted %v, want the 57th rule named", rs.Unrouted)
	}
}
