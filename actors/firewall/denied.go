package firewall

import (
	"net/netip"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/actors/request"
	"github.com/clawker/clawker-cp/pkg/denials"
)

// GetDenied asks for the recent refusals the siblings reported, grouped;
// answered with *DeniedResult. Since bounds how far back (0: the whole
// window); Agent and Project filter by the agent that was refused.
type GetDenied struct {
	Since          time.Duration
	Agent, Project string
}

// DeniedResult answers GetDenied.
type DeniedResult struct {
	Groups []denials.Group
	Err    error
}

// denied reads the window (thread-safe, fed by the stack service's
// handlers) and names each refused address by the agent that holds it:
// the eBPF owner knows each enforced agent's address, the worldview its
// project and agent name. A read, answered after the queue closed too.
func (a *Actor) denied(ctx actor.Context, m *GetDenied) {
	sender := ctx.Sender()
	if a.cfg.Stack == nil || a.cfg.Stack.Denials == nil {
		a.answer(ctx, sender, &DeniedResult{Err: errNoStack})
		return
	}
	var since time.Time
	if m.Since > 0 {
		since = time.Now().Add(-m.Since)
	}
	recs := a.cfg.Stack.Denials.Since(since)
	request.Reenter(ctx, a.cfg.EBPF, &ebpf.GetState{}, a.cfg.OpTimeout, func(st *ebpf.State, err error) {
		byIP := map[netip.Addr]string{}   // address -> container id
		selfOf := map[uint64]netip.Addr{} // cgroup -> address, for the kernel's refusals
		if err == nil {
			for _, ag := range st.Agents {
				if ip := ag.Enrollment.Config.Self; ip.IsValid() {
					byIP[ip] = ag.ContainerID
					selfOf[ag.Enrollment.CgroupID] = ip
				}
			}
		}
		for i := range recs {
			if r := &recs[i]; !r.Src.IsValid() && r.CgroupID != 0 {
				r.Src = selfOf[r.CgroupID]
			}
		}
		request.Reenter(ctx, a.cfg.Overseer, &overseer.GetState{}, a.cfg.OpTimeout, func(st *overseer.State, err error) {
			type who struct{ project, agent string }
			byID := map[string]who{}
			if err == nil {
				for _, c := range st.Containers {
					byID[c.ID] = who{c.Project, c.Agent}
				}
			}
			whoIs := func(ip netip.Addr) (who, bool) {
				w, ok := byID[byIP[ip]]
				return w, ok
			}
			kept := recs[:0:0]
			for _, r := range recs {
				w, known := whoIs(r.Src)
				if (m.Agent != "" && (!known || w.agent != m.Agent)) || (m.Project != "" && (!known || w.project != m.Project)) {
					continue
				}
				kept = append(kept, r)
			}
			nameOf := func(ip netip.Addr) string {
				if w, ok := whoIs(ip); ok {
					return w.project + "/" + w.agent
				}
				return ""
			}
			groups := denials.Summarize(kept, nameOf)
			denials.NamePeers(groups, nameOf)
			a.answer(ctx, sender, &DeniedResult{Groups: groups})
		})
	})
}
