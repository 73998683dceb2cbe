// Package ebpf is the single owner of every BPF object clawker creates. Its
// drain step, ebpf_flush, is the last of the chain: it detaches links and
// removes pins. No programs are loaded yet, so the flush has nothing to undo
// and says so rather than pretending.
package ebpf

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/supervise"
)

// Actor is the eBPF owner.
type Actor struct{}

// New returns a producer of fresh eBPF owners.
func New() actor.Producer { return func() actor.Actor { return &Actor{} } }

// Receive handles the actor's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		supervise.ReportReady(ctx, nil)
	case *supervise.DrainStep:
		if m.Step != supervise.StepEBPFFlush {
			supervise.RefuseStep(ctx, m)
			return
		}
		supervise.AnswerStep(ctx, m.Step, supervise.OutcomeNothing, "no BPF programs loaded, nothing pinned")
	}
}
