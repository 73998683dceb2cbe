// Package netlogger drains the BPF egress ringbuf into OTLP log records. Its
// drain step, netlogger_stop, runs before the eBPF flush so no event is lost
// with the maps. No reader runs yet, so the step has nothing to drain.
package netlogger

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/supervise"
)

// Actor is the netlogger.
type Actor struct{}

// New returns a producer of fresh netloggers.
func New() actor.Producer { return func() actor.Actor { return &Actor{} } }

// Receive handles the actor's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		supervise.ReportReady(ctx, nil)
	case *supervise.DrainStep:
		if m.Step != supervise.StepNetloggerStop {
			supervise.RefuseStep(ctx, m)
			return
		}
		supervise.AnswerStep(ctx, m.Step, supervise.OutcomeNothing, "no ringbuf reader running, no OTLP batch pending")
	}
}
