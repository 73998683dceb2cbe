package supervise

import (
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// Ready is sent by an actor to its parent after every (re)start, once its own
// resource is initialised (or failed to). The root starts its children one at
// a time and only declares the CP ready when every one of them said Ready
// without an error.
type Ready struct {
	Name string
	Err  error
}

// ReportReady tells ctx's parent that the actor finished starting.
func ReportReady(ctx actor.Context, err error) {
	if p := ctx.Parent(); p != nil {
		ctx.Send(p, &Ready{Name: lastSegment(ctx.Self().Id), Err: err})
	}
}

// DrainStep asks the actor that owns Step (one of cpapi.DrainSteps) to
// carry it out. The actor answers with StepDone once the step is complete
// (not merely started). Only the owner sees it: the middleware of Tree
// answers a step the actor does not own (see Spec.Steps).
type DrainStep struct {
	Step string
	// Deadline is when the sender stops waiting for the answer (the root
	// then logs the step as timed out and goes on). An owner that bounds
	// its own work bounds it by Left.
	Deadline time.Time
}

// DefaultStepTimeout bounds a DrainStep sent without a Deadline: the
// default of control_plane.supervisor.drain_step_timeout.
const DefaultStepTimeout = 10 * time.Second

// Left is the time until the step's deadline (DefaultStepTimeout from now
// without one), never negative.
func (m *DrainStep) Left() time.Duration {
	if m.Deadline.IsZero() {
		return DefaultStepTimeout
	}
	return max(time.Until(m.Deadline), 0)
}

// Outcomes of a drain step.
const (
	OutcomeDone    = "done"    // the step did real work and finished
	OutcomeNothing = "nothing" // the owner had nothing to release
	OutcomeFailed  = "failed"  // the step failed; Detail says why
	OutcomeTimeout = "timeout" // set by the root when no answer came in time
)

// StepDone answers DrainStep.
type StepDone struct {
	Step    string
	Outcome string
	Detail  string
}

// Ping is answered with Pong by the middleware of every actor built with
// Tree.Props, without reaching the actor's own Receive. A Pong proves the
// actor's mailbox is being processed: it is the liveness probe.
type Ping struct{}

// Pong answers Ping.
type Pong struct{}

// FaultKind names a debug fault.
type FaultKind string

// Debug faults, for tests of supervision. They are only reachable when the
// CP was started with CLAWKER_CP_DEBUG_FAULTS=1.
const (
	FaultPanic FaultKind = "panic" // the actor panics while handling the fault
	FaultBlock FaultKind = "block" // the actor's mailbox stalls for Duration
)

// Fault injects a failure into an actor, applied by its middleware.
type Fault struct {
	Kind     FaultKind
	Duration time.Duration
}
