package supervise

import "github.com/asynkron/protoactor-go/actor"

// AnswerStep replies to a DrainStep.
func AnswerStep(ctx actor.Context, step, outcome, detail string) {
	ctx.Respond(&StepDone{Step: step, Outcome: outcome, Detail: detail})
}

// RefuseStep answers a DrainStep sent to an actor that does not own it: the
// root's step table is wrong, and the log line must say so.
func RefuseStep(ctx actor.Context, m *DrainStep) {
	AnswerStep(ctx, m.Step, OutcomeFailed, ctx.Self().Id+" does not own drain step "+m.Step)
}
