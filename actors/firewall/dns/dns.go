// Package dns owns the lifecycle and configuration of the DNS sibling
// container (<net>.201) and its cache GC. This control plane cannot build
// the container yet: with the firewall enabled it adopts a DNS server that
// already answers at the stack's fixed address, and fails start-up when
// none does (a green /healthz must mean agents resolve through the filter).
package dns

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/firewall/stack"
	"github.com/clawker/clawker-cp/actors/supervise"
)

// Actor is the DNS sibling's owner.
type Actor struct{ cfg stack.Member }

// New returns a producer of fresh DNS actors. A zero Member (firewall
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
		switch m.Step {
		case supervise.StepStackStop:
			supervise.AnswerStep(ctx, m.Step, supervise.OutcomeNothing, "no DNS container running")
		case supervise.StepDNSGCStop:
			supervise.AnswerStep(ctx, m.Step, supervise.OutcomeNothing, "no DNS cache GC running")
		default:
			supervise.RefuseStep(ctx, m)
		}
	}
}
