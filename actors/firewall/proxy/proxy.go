// Package proxy owns the egress proxy sibling (<net>.200): with the stack
// binaries present the control plane builds its image, runs its container,
// probes its health endpoint and recreates it when it dies; without them
// it adopts a proxy that already answers at the stack's fixed address, and
// fails start-up when none does.
package proxy

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/firewall/stack"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// Actor is the egress proxy's owner.
type Actor struct{ owner stack.Owner }

// New returns a producer of fresh proxy actors. A zero Member (firewall
// disabled) checks nothing.
func New(cfg stack.Member) actor.Producer {
	return func() actor.Actor { return &Actor{owner: stack.Owner{M: cfg}} }
}

// Receive handles the actor's messages.
func (a *Actor) Receive(ctx actor.Context) {
	if m, ok := ctx.Message().(*supervise.DrainStep); ok { // stack_stop, its only one
		a.owner.StopStep(ctx, m, "no proxy container running")
		return
	}
	a.owner.Receive(ctx)
}

// Spec is how the firewall spawns the proxy member; it does the proxy side
// of stack_stop.
func Spec(cfg stack.Member) supervise.Spec {
	return supervise.Spec{Name: cpapi.MemberProxy, Producer: New(cfg), Steps: []string{cpapi.StepStackStop}}
}
