// Package overseer is the CP's typed event bus and worldview. Today it only
// holds its place in the tree; publish/subscribe and the State snapshot come
// with the Docker feeder.
package overseer

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/supervise"
)

// Actor is the overseer.
type Actor struct{}

// New returns a producer of fresh overseers.
func New() actor.Producer { return func() actor.Actor { return &Actor{} } }

// Receive handles the overseer's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		supervise.ReportReady(ctx, nil)
	case *supervise.DrainStep:
		supervise.RefuseStep(ctx, m)
	}
}
