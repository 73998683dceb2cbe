// Package dns owns the lifecycle and configuration of the DNS sibling
// container (<net>.201) and its cache GC. No container is managed yet: its
// drain steps report that there is nothing to stop.
package dns

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/supervise"
)

// Actor is the DNS sibling's owner.
type Actor struct{}

// New returns a producer of fresh DNS actors.
func New() actor.Producer { return func() actor.Actor { return &Actor{} } }

// Receive handles the actor's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		supervise.ReportReady(ctx, nil)
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
