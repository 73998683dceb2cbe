package egress

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/clawker/clawker-cp/bpf"
)

// IPRuleEntry is one entry of the kernel's IP-rule trie: a prefix and every
// rule that applies to its addresses, in the order the programs try them
// (the first whose port range holds the port decides). Whoever compiles
// the rules (egressrules.Policy.KernelIPEntries) pushes the rules of
// covering prefixes down into each entry, because the trie answers only
// with the longest prefix that holds an address.
type IPRuleEntry struct {
	Prefix netip.Prefix // IPv4, masked
	Rules  []IPRule
}

// IPRule is one rule in an entry. All are TCP: the rule protocols (tcp,
// ssh, http, https) are TCP, and UDP never matches a rule.
type IPRule struct {
	ID     uint32
	Prefix netip.Prefix // the rule's own dst (on the agent network only /32s count)
	PortLo uint16
	PortHi uint16
	Allow  bool
}

// MaxIPRulesPerEntry and MaxIPRuleEntries bound the trie (IP_RULES_PER_ENTRY
// and the inner map's max_entries in bpf/egress.c).
const (
	MaxIPRulesPerEntry = 8
	MaxIPRuleEntries   = 16384
)

// SyncIPRules replaces the whole IP-rule trie at once, as SyncRoutes
// replaces the routes: a new inner map swapped into the slot, so a connect
// sees the old set or the new one, never a mix.
func (m *Manager) SyncIPRules(entries []IPRuleEntry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	return m.swapIPRules(entries)
}

func (m *Manager) swapIPRules(entries []IPRuleEntry) error {
	if len(entries) > MaxIPRuleEntries {
		return fmt.Errorf("%d IP rule entries exceed the maximum of %d", len(entries), MaxIPRuleEntries)
	}
	keys := make([]bpf.EgressIpRuleKey, len(entries))
	vals := make([]bpf.EgressIpRuleSet, len(entries))
	seen := map[netip.Prefix]bool{}
	for i, e := range entries {
		p := e.Prefix.Masked()
		if !p.Addr().Is4() || p != e.Prefix {
			return fmt.Errorf("IP rule entry %d: prefix %s: want a masked IPv4 prefix", i, e.Prefix)
		}
		if seen[p] {
			return fmt.Errorf("IP rule entry %d: prefix %s twice", i, p)
		}
		seen[p] = true
		if len(e.Rules) > MaxIPRulesPerEntry {
			return fmt.Errorf("IP rule entry %s: %d rules apply, the kernel holds at most %d per prefix", p, len(e.Rules), MaxIPRulesPerEntry)
		}
		addr, err := ip4(p.Addr()) // network order in memory: the trie matches bytes
		if err != nil {
			return fmt.Errorf("IP rule entry %d: %w", i, err)
		}
		keys[i] = bpf.EgressIpRuleKey{Prefixlen: uint32(p.Bits()), Addr: addr}
		vals[i].N = uint32(len(e.Rules))
		for j, r := range e.Rules {
			if r.PortLo == 0 || r.PortHi < r.PortLo || !r.Prefix.Addr().Is4() {
				return fmt.Errorf("IP rule entry %s, rule %d: ports %d-%d on %s", p, r.ID, r.PortLo, r.PortHi, r.Prefix)
			}
			action := uint8(ipRuleDeny)
			if r.Allow {
				action = ipRuleAllow
			}
			vals[i].R[j].Id, vals[i].R[j].PortLo, vals[i].R[j].PortHi = r.ID, r.PortLo, r.PortHi
			vals[i].R[j].Action, vals[i].R[j].Prefixlen = action, uint8(r.Prefix.Bits())
		}
	}
	spec := m.spec.Maps[bpf.EgressMapIpRules].InnerMap.Copy()
	spec.Name = "ip_rule_table"
	table, err := ebpf.NewMap(spec)
	if err != nil {
		return fmt.Errorf("create IP rule table: %w", err)
	}
	defer table.Close() // the outer map keeps its own reference
	for i := range keys {
		if err := table.Put(&keys[i], &vals[i]); err != nil {
			return fmt.Errorf("fill IP rule table (%s): %w", entries[i].Prefix, err)
		}
	}
	if err := m.objs.IpRules.Update(uint32(0), table, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("install IP rule table: %w", err)
	}
	return nil
}

// IPR_ALLOW and IPR_DENY in bpf/egress.c.
const (
	ipRuleAllow = 1
	ipRuleDeny  = 2
)

// IPRules reads the IP-rule entries the programs use now.
func (m *Manager) IPRules() ([]IPRuleEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	table, err := currentTable(m.objs.IpRules)
	if err != nil || table == nil {
		return nil, err
	}
	defer table.Close()
	var (
		out []IPRuleEntry
		k   bpf.EgressIpRuleKey
		v   bpf.EgressIpRuleSet
	)
	it := table.Iterate()
	for it.Next(&k, &v) {
		e := IPRuleEntry{Prefix: netip.PrefixFrom(fromIP4(k.Addr), int(k.Prefixlen))}
		for j := range min(int(v.N), MaxIPRulesPerEntry) {
			r := v.R[j]
			e.Rules = append(e.Rules, IPRule{ID: r.Id, PortLo: r.PortLo, PortHi: r.PortHi, Allow: r.Action == ipRuleAllow,
				Prefix: netip.PrefixFrom(e.Prefix.Addr(), int(r.Prefixlen)).Masked()})
		}
		out = append(out, e)
	}
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, err
	}
	return out, nil
}
