package supervise

import "github.com/asynkron/protoactor-go/actor"

// AnswerStep replies to a DrainStep.
func AnswerStep(ctx actor.Context, step, outcome, detail string) {
	ctx.Respond(&StepDone{Step: step, Outcome: outcome, Detail: detail})
}

// notOwned answers a DrainStep sent to an actor that does not own it: the
// step table is wrong, and the log line must say so.
func notOwned(c actor.ReceiverContext, sender *actor.PID, m *DrainStep) {
	if sender != nil {
		c.ActorSystem().Root.Send(sender, &StepDone{Step: m.Step, Outcome: OutcomeFailed,
			Detail: c.Self().Id + " does not own drain step " + m.Step})
	}
}
