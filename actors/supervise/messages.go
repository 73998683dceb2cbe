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

// The steps of the ordered drain, in the order the root runs them.
const (
	StepFirewallQueueClose = "firewall_queue_close"
	StepGRPCStop           = "grpc_stop"
	StepBypassTimersCancel = "bypass_timers_cancel"
	StepStackStop          = "stack_stop"
	StepNetloggerStop      = "netlogger_stop"
	StepDNSGCStop          = "dns_gc_stop"
	StepEBPFFlush          = "ebpf_flush"
)

// DrainStep asks the actor that owns Step to carry it out. The actor answers
// with StepDone once the step is complete (not merely started).
type DrainStep struct{ Step string }

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
