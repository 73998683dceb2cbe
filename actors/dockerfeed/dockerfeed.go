// Package dockerfeed projects the Docker event stream onto the overseer. It holds its place in the tree until the Docker feeder is built.
package dockerfeed

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/supervise"
)

// Actor is the dockerfeed actor.
type Actor struct{}

// New returns a producer of fresh dockerfeed actors.
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
