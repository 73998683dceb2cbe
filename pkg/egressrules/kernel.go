package egressrules

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// KernelIPEntry is one entry of the eBPF programs' longest-prefix trie of
// IP and CIDR rules (egress.IPRuleEntry): the programs, not the proxy,
// decide IP-literal destinations, since the proxy cannot see where a
// rewritten connection was going. Rules lists every rule that applies to
// the entry's addresses in the order Decide would apply them: longest
// prefix first, and within one prefix the deny rules before the allow
// rules. The trie answers with the longest entry only, so the rules of
// covering prefixes are repeated in every entry below them.
type KernelIPEntry struct {
	Prefix netip.Prefix
	Rules  []KernelIPRule
}

// KernelIPRule is one rule of a KernelIPEntry. The kernel knows the port,
// not the protocol on top of TCP: a rule for 10.1.2.3 on https/443 lets
// any TCP connection to 10.1.2.3:443 through, unchanged and without the
// proxy. An allow rule that the restricted-address floor refuses for the
// entry's addresses (see Policy.Decide) is carried as a deny.
type KernelIPRule struct {
	ID     uint32
	Prefix netip.Prefix // the rule's own dst
	Port   PortRange
	Allow  bool
}

// MaxKernelRulesPerEntry is the kernel's bound (IP_RULES_PER_ENTRY).
const MaxKernelRulesPerEntry = 8

// KernelIPEntries compiles the IP and CIDR rules for the kernel. Besides
// one entry per rule prefix there is one per restricted block and per
// private destination inside a broader rule, so that every address of an
// entry is on the same side of the floor. An entry that would hold more
// than MaxKernelRulesPerEntry rules is an error naming it.
func (p *Policy) KernelIPEntries() ([]KernelIPEntry, error) {
	if p == nil || len(p.ip) == 0 {
		return nil, nil
	}
	rulePrefixes := make([]netip.Prefix, 0, len(p.ip))
	for pfx := range p.ip {
		if pfx.Addr().Is4() {
			rulePrefixes = append(rulePrefixes, pfx)
		}
	}
	covers := func(outer, inner netip.Prefix) bool {
		return outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
	}
	coveredByARule := func(e netip.Prefix) bool {
		return slices.ContainsFunc(rulePrefixes, func(r netip.Prefix) bool { return covers(r, e) })
	}
	set := map[netip.Prefix]bool{}
	for _, r := range rulePrefixes {
		set[r] = true
	}
	for _, b := range restrictedV4 {
		if coveredByARule(b.prefix) {
			set[b.prefix] = true
		}
	}
	for _, pd := range p.private {
		if pd.Addr().Is4() && coveredByARule(pd) {
			set[pd] = true
		}
	}

	var out []KernelIPEntry
	for e := range set {
		var cands []netip.Prefix
		for _, r := range rulePrefixes {
			if covers(r, e) {
				cands = append(cands, r)
			}
		}
		slices.SortFunc(cands, func(a, b netip.Prefix) int { return cmp.Compare(b.Bits(), a.Bits()) })
		blk, floored := p.kernelFloor(e)
		entry := KernelIPEntry{Prefix: e}
		for _, r := range cands {
			b := p.ip[r]
			for _, deny := range []bool{true, false} {
				for _, cr := range b.rules {
					if cr.deny != deny {
						continue
					}
					allow := !cr.deny
					if allow && floored && !covers(blk, r) {
						allow = false // too broad to open a restricted address
					}
					entry.Rules = append(entry.Rules, KernelIPRule{ID: cr.entry.ID, Prefix: r, Port: cr.port, Allow: allow})
				}
			}
		}
		if len(entry.Rules) == 0 {
			continue
		}
		if len(entry.Rules) > MaxKernelRulesPerEntry {
			return nil, fmt.Errorf("%d IP rules apply to %s (its own and those of broader prefixes); the kernel holds at most %d: merge port ranges or remove some",
				len(entry.Rules), e, MaxKernelRulesPerEntry)
		}
		out = append(out, entry)
	}
	slices.SortFunc(out, func(a, b KernelIPEntry) int {
		return cmp.Or(a.Prefix.Addr().Compare(b.Prefix.Addr()), cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()))
	})
	return out, nil
}

// kernelFloor tells whether the restricted-address floor holds for every
// address of e: e lies inside a restricted block (the narrowest is
// returned) and no private destination holds it.
func (p *Policy) kernelFloor(e netip.Prefix) (netip.Prefix, bool) {
	var blk netip.Prefix
	found := false
	for _, b := range restrictedV4 {
		if b.prefix.Bits() <= e.Bits() && b.prefix.Contains(e.Addr()) && (!found || b.prefix.Bits() > blk.Bits()) {
			blk, found = b.prefix, true
		}
	}
	if !found {
		return netip.Prefix{}, false
	}
	for _, pd := range p.private {
		if pd.Bits() <= e.Bits() && pd.Contains(e.Addr()) {
			return blk, false
		}
	}
	return blk, true
}
