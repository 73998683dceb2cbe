package firewall

import (
	"errors"

	"github.com/asynkron/protoactor-go/actor"
)

// The stack's lifecycle verbs; a stub until the stack lifecycle lands.

func (a *Actor) stackUp(ctx actor.Context, _ *StackUp) {
	a.answer(ctx, ctx.Sender(), &Result{Err: errors.New("firewall stack lifecycle not wired yet")})
}

func (a *Actor) stackDown(ctx actor.Context, _ *StackDown) {
	a.answer(ctx, ctx.Sender(), &Result{Err: errors.New("firewall stack lifecycle not wired yet")})
}
