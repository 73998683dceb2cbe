// Package proxy owns the lifecycle and configuration of the egress proxy
// sibling container (<net>.200). This control plane cannot build the
// container yet: with the firewall enabled it adopts a proxy that already
// answers at the stack's fixed address, and fails start-up when none does.
package proxy

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/firewall/stack"
	"github.com/clawker/clawker-cp/actors/supervise"
)

// Actor is the egress proxy's owner.
type Actor struct{ cfg stack.Member }

// New returns a producer of fresh proxy actors. A zero Member (firewall
// disabled) checks nothing.
func New(cfg stack.Member) actor.Producer { return func() actor.Actor { return &Actor{cfg: cfg} } }

// Receive handles the actor's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		stack.Adopt(ctx, a.cfg)
	case *stack.Adopted:
		supervise.ReportReady(ctx, m.Err)
	case *supervise.DrainStep:
		if m.Step != supervise.StepStackStop {
			supervise.RefuseStep(ctx, m)
			return
		}
		supervise.AnswerStep(ctx, m.Step, supervise.OutcomeNothing, "no proxy container running")
	}
}
