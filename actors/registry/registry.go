// Package registry is the sole writer of the agent identity registry (sqlite). It holds its place in the tree until the identity work wires the store in.
package registry

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/supervise"
)

// Actor is the registry actor.
type Actor struct{}

// New returns a producer of fresh registry actors.
func New() actor.Producer { return func() actor.Actor { return &Actor{} } }

// Receive handles the actor's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		supervise.ReportReady(ctx, nil)
	case *supervise.DrainStep:
		supervise.RefuseStep(ctx, m)
	}
}
