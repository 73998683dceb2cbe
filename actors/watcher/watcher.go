// Package watcher counts running agents and tells the root DrainToZero when the last one is gone. It holds its place in the tree until agents exist.
package watcher

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/supervise"
)

// Actor is the watcher actor.
type Actor struct{}

// New returns a producer of fresh watcher actors.
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
