// Package grpc owns the CP's gRPC listeners (admin and agent) and, under its
// child "sessions", one actor per connected clawkerd. Its drain step,
// grpc_stop, stops the servers gracefully so sessions end cleanly. No
// listener is open yet, so the step has nothing to stop.
package grpc

import (
	"fmt"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/grpc/sessions"
	"github.com/clawker/clawker-cp/actors/supervise"
)

// Config wires the grpc actor.
type Config struct {
	Tree      *supervise.Tree
	Intensity supervise.Intensity
}

// Actor is the gRPC owner.
type Actor struct {
	cfg   Config
	ready bool
}

// New returns a producer of fresh grpc actors.
func New(cfg Config) actor.Producer { return func() actor.Actor { return &Actor{cfg: cfg} } }

// Receive handles the actor's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if _, err := ctx.SpawnNamed(a.cfg.Tree.Props(sessions.New(), a.cfg.Intensity), "sessions"); err != nil {
			supervise.ReportReady(ctx, fmt.Errorf("spawning grpc/sessions: %w", err))
		}
	case *supervise.Ready:
		if !a.ready {
			a.ready = true
			supervise.ReportReady(ctx, m.Err)
		}
	case *supervise.DrainStep:
		if m.Step != supervise.StepGRPCStop {
			supervise.RefuseStep(ctx, m)
			return
		}
		supervise.AnswerStep(ctx, m.Step, supervise.OutcomeNothing, "no gRPC listener open, no session connected")
	}
}
