package egressrules

import (
	"cmp"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// Routed rules: the catch-all proxy listener cannot see the port an agent
// dialled (the kernel rewrote it) nor, for raw TCP, any name. An allow rule
// for a name on tcp or ssh, or on https on a port other than 443, therefore
// gets one dedicated proxy listener per port it opens, and the kernel sends
// (identity, port) to that listener. http rules are not routed: every
// request's Host names the port, and the catch-all already decides and
// dials on it.
//
// The proxy and the control plane must agree on which listener port serves
// which (rule id, port) without talking about it: both call Policy.Routes
// on the same Doc.

// The dedicated listener ports: RouteListenerFirst .. RouteListenerFirst +
// RouteListenerCount - 1 (15100-15995), on the proxy's address.
const (
	RouteListenerFirst uint16 = 15100
	RouteListenerCount        = 896 // 56 blocks of MaxRoutedPorts
)

// MaxRoutedPorts is the largest port range a routed rule may open: each
// port is one listener (the proxy must learn the agent's port from the
// listener it arrived on). Larger ranges are refused (CheckRoutable).
const MaxRoutedPorts = 16

// RouteListener is one dedicated proxy listener: a connection arriving on
// Listen is for Rule (canonical, id RuleID) on the agent's port Port.
type RouteListener struct {
	RuleID uint32
	Rule   Rule
	Port   uint16
	Listen uint16
}

// PinnedHost is the host a listener dials, or "" when it decides on the
// ClientHello's SNI instead (https): raw TCP carries no name, so a tcp or
// ssh listener is pinned to its rule's exact name.
func (l RouteListener) PinnedHost() string {
	if l.Rule.Proto == HTTPS {
		return ""
	}
	return l.Rule.Dst
}

// KernelRoute is one entry of the kernel's route table: a TCP connect to
// an address whose identity is Identity, on Port, goes to the proxy's
// listener Listen.
type KernelRoute struct {
	Identity uint32
	Port     uint16
	Listen   uint16
}

// Routes is the whole assignment for one policy.
type Routes struct {
	Listeners []RouteListener // by Listen
	Kernel    []KernelRoute   // by (Identity, Port)
	// Unrouted joins a *FieldError for every allow rule that needs a
	// listener and has none (a wildcard tcp/ssh rule, a range over
	// MaxRoutedPorts in a hand-edited store, listener ports exhausted):
	// connections for it go to the catch-all, which refuses them.
	Unrouted error
}

// needsRoute reports whether a canonical rule gets dedicated listeners.
func needsRoute(r Rule) bool {
	if r.Action != Allow || r.IsIP() {
		return false
	}
	switch r.Proto {
	case TCP, SSH:
		return true
	case HTTPS:
		return r.Port != Port(443)
	}
	return false
}

// routedPorts are the ports of r that get a listener: https's 443 stays
// on the catch-all, which serves it the same way.
func routedPorts(r Rule) []uint16 {
	var out []uint16
	for p := int(r.Port.Lo); p <= int(r.Port.Hi); p++ {
		if r.Proto == HTTPS && p == 443 {
			continue
		}
		out = append(out, uint16(p))
	}
	return out
}

// routeProblem says why a canonical rule that needs a route cannot have
// one, or returns nil.
func routeProblem(r Rule, index int) *FieldError {
	if r.Port.Hi-r.Port.Lo >= MaxRoutedPorts {
		return &FieldError{Index: index, Field: fieldPort, Value: r.Port.String(),
			Msg: "a " + string(r.Proto) + " range is served by one proxy listener per port, at most " + strconv.Itoa(MaxRoutedPorts) +
				" (split it into rules of up to " + strconv.Itoa(MaxRoutedPorts) + " ports, or name the ports you use)"}
	}
	if r.Proto != HTTPS && r.IsWildcard() {
		return &FieldError{Index: index, Field: fieldDst, Value: r.Dst,
			Msg: "a " + string(r.Proto) + " connection carries no name the proxy could check against a wildcard " +
				"(write one rule per host, e.g. " + r.Dst[1:] + ")"}
	}
	return nil
}

// CheckRoutable refuses, with a *FieldError per rule (Index = position in
// rules), the rules Validate accepts but no dedicated listener can serve: a
// port range of a tcp, ssh or https-off-443 name rule larger than
// MaxRoutedPorts. Wildcard tcp/ssh rules are not refused here (they were
// accepted before routes existed and may be in a store); Policy.Routes
// reports them in Unrouted. Rules must be canonical (Validate's output).
func CheckRoutable(rules []Rule) error {
	var errs []error
	for i, r := range rules {
		if !needsRoute(r) {
			continue
		}
		if fe := routeProblem(r, i); fe != nil && fe.Field == fieldPort {
			errs = append(errs, fe)
		}
	}
	return errors.Join(errs...)
}

// Routes assigns the dedicated listeners and the kernel routes of p. avoid
// lists ports of the proxy that must not be used (its catch-all and health
// ports, when they fall in the range).
//
// Assignment: rules are taken by ascending id, and each (rule, port)
// prefers the port RouteListenerFirst + ((id-1)*MaxRoutedPorts + offset) mod
// RouteListenerCount, taking the next free one when that is used. Ids only
// grow, so adding a rule never moves another rule's listener; removing one
// moves only listeners that had collided with it (none while there are at
// most 56 routed rules).
//
// Kernel routes: the kernel holds one identity per address, the lowest id
// of the rules its DNS answer named (actors/firewall/dns). For every name
// bucket (an exact name, or a wildcard's names without a more specific
// bucket) the DNS sibling reports the same id set (Resolvable), so its
// addresses carry min(ids); each routed (rule, port) whose rule is in the
// set is installed under that identity. When two routed rules of one set
// share a port, the exact-name tcp/ssh rule wins (it names a host; an https
// listener decides on the SNI anyway), then the lower id. An address shared
// by two different names (a CDN) carries the lower identity of the two
// sets; the routes of the other set do not apply to it.
func (p *Policy) Routes(avoid ...uint16) Routes {
	var out Routes
	g := p.globalView()
	if g == nil {
		return out
	}
	var errs []error
	var routed []Entry
	all := g.entries
	if g.scope != nil && len(g.scope.scoped) > 0 {
		all = append(slices.Clone(g.entries), g.scope.scoped...)
	}
	for i, e := range all {
		// A rule without an id (a standalone policy file) has no
		// identity the kernel could route by.
		if !needsRoute(e.Rule) || e.ID == 0 {
			continue
		}
		if fe := routeProblem(e.Rule, i); fe != nil {
			fe.Index = -1
			fe.Msg = "rule " + e.key() + " has no proxy listener: " + fe.Msg
			errs = append(errs, fe)
			continue
		}
		routed = append(routed, e)
	}
	slices.SortFunc(routed, func(a, b Entry) int { return cmp.Compare(a.ID, b.ID) })

	used := make(map[uint16]bool, len(avoid))
	for _, a := range avoid {
		used[a] = true
	}
	free := RouteListenerCount
	for _, a := range avoid {
		if a >= RouteListenerFirst && int(a-RouteListenerFirst) < RouteListenerCount {
			free--
		}
	}
	byRule := map[uint32][]RouteListener{}
	for _, e := range routed {
		ports := routedPorts(e.Rule)
		if len(ports) > free {
			errs = append(errs, &FieldError{Index: -1, Field: fieldPort, Value: e.Port.String(),
				Msg: "rule " + e.key() + " has no proxy listener: the " + strconv.Itoa(RouteListenerCount) +
					" listener ports are taken by other routed rules (remove some tcp, ssh or https-off-443 rules)"})
			continue
		}
		for off, port := range ports {
			slot := (int(e.ID-1)*MaxRoutedPorts + off) % RouteListenerCount
			for used[RouteListenerFirst+uint16(slot)] {
				slot = (slot + 1) % RouteListenerCount
			}
			listen := RouteListenerFirst + uint16(slot)
			used[listen] = true
			free--
			l := RouteListener{RuleID: e.ID, Rule: e.Rule, Port: port, Listen: listen}
			out.Listeners = append(out.Listeners, l)
			byRule[e.ID] = append(byRule[e.ID], l)
		}
	}
	slices.SortFunc(out.Listeners, func(a, b RouteListener) int { return cmp.Compare(a.Listen, b.Listen) })

	type key struct {
		id   uint32
		port uint16
	}
	chosen := map[key]RouteListener{}
	better := func(a, b RouteListener) bool { // a wins over b
		ap, bp := a.PinnedHost() != "", b.PinnedHost() != ""
		if ap != bp {
			return ap
		}
		return a.RuleID < b.RuleID
	}
	if len(byRule) > 0 {
		views := g.allViews()
		var identities, ids []uint32
		for _, class := range nameClasses(views) {
			identities, ids = identities[:0], ids[:0]
			for _, v := range views {
				b := v.classBucket(class)
				if b == nil || !b.resolvable {
					continue
				}
				i := 0
				for i < len(b.ids) && b.ids[i] == 0 {
					i++ // an id-less rule: no identity to hold
				}
				if i < len(b.ids) {
					identities = append(identities, b.ids[i]) // sorted: the lowest
					ids = append(ids, b.ids[i:]...)
				}
			}
			for _, identity := range identities {
				for _, id := range ids {
					for _, l := range byRule[id] {
						k := key{identity, l.Port}
						if cur, ok := chosen[k]; !ok || better(l, cur) {
							chosen[k] = l
						}
					}
				}
			}
		}
	}
	for k, l := range chosen {
		out.Kernel = append(out.Kernel, KernelRoute{Identity: k.id, Port: k.port, Listen: l.Listen})
	}
	slices.SortFunc(out.Kernel, func(a, b KernelRoute) int {
		return cmp.Or(cmp.Compare(a.Identity, b.Identity), cmp.Compare(a.Port, b.Port))
	})
	out.Unrouted = errors.Join(errs...)
	return out
}

// Routes over scopes. The DNS sibling answers an agent by its project's
// view (ResolvableFrom), so one name's addresses get, from the agents of
// different projects, different id sets; the kernel holds the lowest id of
// the union of the sets still live, which is the lowest id of one of the
// views. Routes therefore installs, for every class of names, the routed
// rules of every view under every view's lowest id: whichever project
// resolved the name, its agents' connects reach a listener, and the
// listener decides each connection by its client's project (an agent of
// another project is refused there, as its lookup of a name only another
// project allows got NXDOMAIN). The assignment of listeners to rules does
// not depend on the agents, so the proxy and the control plane agree on
// it from the rules alone. The costs: a (identity, port) one project's
// routed rule takes is served by that rule's listener for every project,
// so another project's http rule on the same name and port is refused
// there, and of two projects' routed rules on one name and port the
// better one (pinned, then lower id) serves both: they work for both when
// they agree on the proto.

// nameClass is a set of names every view decides with the same buckets:
// an exact name, or the names under a wildcard suffix that have no more
// specific bucket in any view.
type nameClass struct {
	name string
	wild bool
}

// allViews are the global view and every project's, by project name.
func (p *Policy) allViews() []*Policy {
	views := []*Policy{p}
	if p.scope != nil {
		for _, project := range slices.Sorted(maps.Keys(p.scope.projects)) {
			views = append(views, p.For(project))
		}
	}
	return views
}

// nameClasses are the classes of every bucket of views, sorted.
func nameClasses(views []*Policy) []nameClass {
	seen := map[nameClass]bool{}
	for _, v := range views {
		for n := range v.exact {
			seen[nameClass{n, false}] = true
		}
		for s := range v.wild {
			seen[nameClass{s, true}] = true
		}
	}
	out := slices.Collect(maps.Keys(seen))
	slices.SortFunc(out, func(a, b nameClass) int {
		return cmp.Or(strings.Compare(a.name, b.name), compareBool(a.wild, b.wild))
	})
	return out
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// classBucket is the bucket p decides c's names by (its Resolvable answer
// is the bucket's ids), nil when none matches.
func (p *Policy) classBucket(c nameClass) *bucket {
	if !c.wild {
		if b := p.exact[c.name]; b != nil {
			return b
		}
	}
	for s := c.name; ; {
		if b := p.wild[s]; b != nil {
			return b
		}
		i := strings.IndexByte(s, '.')
		if i < 0 {
			return nil
		}
		s = s[i+1:]
	}
}
