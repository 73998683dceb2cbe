package firewall

import (
	"maps"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/actors/request"
	"github.com/clawker/clawker-cp/pkg/egressrules"
	"github.com/clawker/clawker-cp/pkg/naming"
)

// Which agent address belongs to which project, for rules scoped to
// projects: the siblings decide an agent's queries and connections by its
// source address. Both halves come from Docker, never from the agent: the
// address is the one the eBPF owner enrolled (Docker's address of the
// container on the agent network), the project the dev.clawker.project
// label `clawker run` set, as the worldview holds it. The map is rebuilt
// after every enforce and release and republished when it changes.

// agentsState is the actor's part that owns the map.
type agentsState struct {
	byAddr  map[string]string   // agent IPv4 -> project, as last published
	entries []egressrules.Entry // the rules of the last publish, to republish
}

// agentsChanged is the reply function of an enforce or release order: once
// the eBPF owner has done it, the map is rebuilt.
func (a *Actor) agentsChanged(ctx actor.Context) func(any, error) any {
	return func(any, error) any {
		a.refreshAgents(ctx)
		return nil
	}
}

// refreshAgents rebuilds the map from the eBPF owner's enrollments and the
// worldview, and republishes the policy when it changed. A failed read
// keeps the map as it was.
func (a *Actor) refreshAgents(ctx actor.Context) {
	if !a.cfg.Enable || a.cfg.Publish == nil || a.cfg.EBPF == nil || a.cfg.Overseer == nil {
		return
	}
	request.Reenter(ctx, a.cfg.EBPF, &ebpf.GetState{}, a.cfg.OpTimeout, func(st *ebpf.State, err error) {
		if err != nil {
			a.rulesLog().Warn("cannot read the enforced agents' addresses; agents keep the projects last published",
				zap.String("event", "firewall_agents_unavailable"), zap.Error(err))
			return
		}
		selfOf := map[string]string{} // container id -> address
		for _, ag := range st.Agents {
			if ip := ag.Enrollment.Config.Self; ip.IsValid() && ip.Unmap().Is4() {
				selfOf[ag.ContainerID] = ip.Unmap().String()
			}
		}
		request.Reenter(ctx, a.cfg.Overseer, &overseer.GetState{}, a.cfg.OpTimeout, func(ws *overseer.State, err error) {
			if err != nil {
				a.rulesLog().Warn("cannot read the worldview for the agents' projects; agents keep the projects last published",
					zap.String("event", "firewall_agents_unavailable"), zap.Error(err))
				return
			}
			byAddr := map[string]string{}
			for _, c := range ws.Containers {
				if ip, ok := selfOf[c.ID]; ok && naming.ValidProject(c.Project) {
					byAddr[ip] = c.Project
				}
			}
			if maps.Equal(byAddr, a.agents.byAddr) {
				return
			}
			a.agents.byAddr = byAddr
			// The IP rules did not change: keep the kernel out of it.
			pending := a.rules.kernel
			a.publish(a.agents.entries)
			a.rules.kernel = pending
			a.rulesLog().Info("agents' projects republished", zap.String("event", "firewall_agents_published"),
				zap.Int("agents", len(byAddr)), zap.Uint64("generation", a.rules.gen))
		})
	})
}

// agentsDoc fills a doc about to be published with the map.
func (a *Actor) agentsDoc(doc *egressrules.Doc) {
	a.agents.entries = doc.Rules
	if len(a.agents.byAddr) > 0 {
		doc.Agents = maps.Clone(a.agents.byAddr)
	}
	// The proxy resolves names for every project's agents.
	if a.cfg.Enable && a.addrs.Proxy.IsValid() {
		doc.Proxies = []string{a.addrs.Proxy.Addr().String()}
	}
}
