// Package proxy owns the lifecycle and configuration of the egress proxy
// sibling container (<net>.200). No container is managed yet: its stack_stop
// step reports that there is nothing to stop.
package proxy

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/supervise"
)

// Actor is the egress proxy's owner.
type Actor struct{}

// New returns a producer of fresh proxy actors.
func New() actor.Producer { return func() actor.Actor { return &Actor{} } }

// Receive handles the actor's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		supervise.ReportReady(ctx, nil)
	case *supervise.DrainStep:
		if m.Step != supervise.StepStackStop {
			supervise.RefuseStep(ctx, m)
			return
		}
		supervise.AnswerStep(ctx, m.Step, supervise.OutcomeNothing, "no proxy container running")
	}
}
