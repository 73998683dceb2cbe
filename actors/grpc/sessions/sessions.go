// Package sessions parents one child actor per connected clawkerd Session,
// so /debug/actors shows every connected agent. No agent listener exists
// yet, so it has no children.
package sessions

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/supervise"
)

// Actor is the sessions parent.
type Actor struct{}

// New returns a producer of fresh sessions parents.
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
