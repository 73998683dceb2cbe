package dns

import (
	"slices"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// ForgetRules tells the owner which rule ids the rules just published
// hold: every other id is dropped from every address at once, and the
// addresses whose kernel identity changes are rewritten. Without it a
// removed rule's id would stay an address's identity until its answer's
// TTL + Grace ran out, while the kernel routes of the name's other rules
// (ssh, tcp: installed under the name's lowest live id) no longer match
// it. Sent by the firewall after each publish; not answered.
type ForgetRules struct {
	Live map[uint32]bool
}

// liveRules is the last ForgetRules: reports still carrying a removed id
// (a sibling answering by the policy before, a moment after the publish)
// must not bring it back.
type liveRules struct {
	ids map[uint32]bool
	max uint32 // ids only grow: one above max is a rule added since
}

// withoutRemoved drops the ids of removed rules; it returns ids itself
// when none is (the common case, no allocation).
func (a *Actor) withoutRemoved(ids []uint32) []uint32 {
	removed := func(id uint32) bool { return a.live.ids != nil && id <= a.live.max && !a.live.ids[id] }
	if !slices.ContainsFunc(ids, removed) {
		return ids
	}
	return slices.DeleteFunc(slices.Clone(ids), removed)
}

func (a *Actor) forget(ctx actor.Context, m *ForgetRules) {
	a.live = liveRules{ids: m.Live}
	for id := range m.Live {
		a.live.max = max(a.live.max, id)
	}
	if a.cfg.EBPF == nil {
		return
	}
	a.dropRules(ctx, func(id uint32, _ time.Time) bool { return !m.Live[id] },
		"cannot rewrite the addresses of removed rules", "dns_identity_failed", "removed rules forgotten", "dns_rules_forgotten")
}
