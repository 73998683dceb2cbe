package dns

import (
	"net/netip"
	"slices"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/actors/request"
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
	set := map[netip.Addr]uint32{}
	var del []netip.Addr
	for ip, e := range a.table {
		for id := range e.rules {
			if !m.Live[id] {
				delete(e.rules, id)
			}
		}
		switch k := kernelID(e.rules); {
		case k == 0:
			del = append(del, ip)
			delete(a.table, ip)
		case k != e.kernel:
			set[ip] = k
			e.kernel = k
		}
	}
	if len(set) == 0 && len(del) == 0 {
		return
	}
	request.Reenter(ctx, a.cfg.EBPF, &ebpf.SetIdentities{Set: set, Delete: del}, a.cfg.OpTimeout, func(d *ebpf.Done, err error) {
		if err == nil {
			err = d.Err
		}
		if err != nil {
			a.cfg.Log.Warn("cannot rewrite the addresses of removed rules", zap.String("event", "dns_identity_failed"), zap.Error(err))
			return
		}
		a.cfg.Log.Debug("removed rules forgotten", zap.String("event", "dns_rules_forgotten"), zap.Int("rewritten", len(set)), zap.Int("forgotten", len(del)))
	})
}
