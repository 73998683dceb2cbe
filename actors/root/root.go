// Package root is the control plane's top supervisor. It starts the
// subsystem actors one at a time in a declared order, restarts a panicking
// child one-for-one within a bounded intensity, and owns the ordered drain:
// one named step at a time, each a request the owning actor answers, each
// bounded by a timeout, so that the last step is always reached.
//
// Only a deliberate drain (Drain, DrainToZero) lifts enforcement: an
// escalation runs every step but the eBPF flush, which it logs as skipped,
// so the pinned programs keep the running agents fail-closed until a
// control plane adopts them again.
//
// Exit codes handed to Config.Exit:
//
//	0  clean drain (signal or drain-to-zero), or a signal before ready
//	1  failure before ready: no drain step ran, eBPF state is left enforcing
//	2  unrecoverable failure after ready (restart intensity exceeded, or the
//	   root itself failed): the ordered drain ran without the eBPF flush
//	   (eBPF state is left enforcing), then the CP exits
package root

import (
	"errors"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/request"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// Exit codes, see the package comment.
const (
	ExitClean          = 0
	ExitStartupFailure = 1
	ExitEscalated      = 2
)

// Name is the root actor's PID id; every other actor's path starts with it.
const Name = cpapi.RootName

// Config wires the root.
type Config struct {
	Log          *zap.Logger
	Tree         *supervise.Tree
	Intensity    supervise.Intensity
	StartTimeout time.Duration
	StepTimeout  time.Duration
	// Children are started in this order, each spawned from its spec
	// (Tree.SpecProps: it sees only the drain steps it owns).
	Children []supervise.Spec
	// Steps is the ordered drain (cpapi.DrainSteps in the CP); each step
	// goes to the child its Owner names, with a deadline StepTimeout away.
	Steps []cpapi.DrainStep
	// HoldReady delays the ready declaration after every child started, so
	// tests can watch /healthz answer 503 first. Zero in production.
	HoldReady time.Duration
	// OnReady runs inside the root's context once every child reported
	// Ready; the wiring uses it to register probes and open /healthz.
	OnReady func(ctx actor.Context, children map[string]*actor.PID)
	// OnRestarted runs when a child reports Ready again after ready, after
	// the messages its siblings' specs ask for (Spec.AfterRestart) went out.
	OnRestarted func(ctx actor.Context, name string, children map[string]*actor.PID)
	// OnDraining runs when the drain starts (so /healthz can say so).
	OnDraining func(ctx actor.Context, children map[string]*actor.PID)
	// Exit receives the process exit code once, after the drain.
	Exit func(code int)
}

// Drain asks the root to run the ordered drain and exit with ExitCode.
// Reason appears in the logs. It is a deliberate drain (SIGTERM,
// `controlplane down`): every step runs, the eBPF flush included.
type Drain struct {
	Reason   string
	ExitCode int
}

// DrainToZero is sent by the watcher once the last agent is gone; a
// deliberate drain like Drain.
type DrainToZero struct{}

// OutcomeSkipped is the outcome the root logs for a step it did not send
// because the drain's kind forbids it (see liftsEnforcement).
const OutcomeSkipped = "skipped"

// drainKind says why a drain runs; it decides whether enforcement is lifted.
// The zero value is the escalation, so a kind left unset keeps the pins.
type drainKind int

const (
	// drainEscalation: something broke. Agents may still run, and must not
	// become unfiltered because of a bug in the CP.
	drainEscalation drainKind = iota
	// drainDeliberate: an operator or the watcher asked for it; the agents
	// are gone or about to be, so lifting their filters is intended.
	drainDeliberate
)

func (k drainKind) String() string {
	if k == drainEscalation {
		return "escalation"
	}
	return "deliberate"
}

// liftsEnforcement reports whether a step removes the filters of running
// agents: such a step runs only in a deliberate drain.
func liftsEnforcement(step string) bool { return step == cpapi.StepEBPFFlush }

type phase int

const (
	phaseStarting phase = iota
	phaseReady
	phaseDraining
	phaseDone
)

// Root is the root supervisor actor. Build it with New; it implements
// actor.SupervisorStrategy itself so that failures of its children reach its
// own state (protoactor consults an actor that is a strategy first).
type Root struct {
	cfg      Config
	log      *zap.Logger
	phase    phase
	started  time.Time
	pids     map[string]*actor.PID
	order    []string // names of spawned children, in spawn order
	next     int      // index of the child being started
	stats    map[string]*actor.RestartStatistics
	exitCode int
	kind     drainKind
	drainAt  time.Time

	self       *actor.PID
	selfSystem *actor.ActorSystem
}

type startTimedOut struct{ index int }

// declareReady ends a HoldReady pause.
type declareReady struct{}

// New returns a producer that builds a fresh root.
func New(cfg Config) actor.Producer {
	return func() actor.Actor {
		return &Root{
			cfg:   cfg,
			log:   cfg.Log.With(zap.String("actor", Name)),
			pids:  map[string]*actor.PID{},
			stats: map[string]*actor.RestartStatistics{},
		}
	}
}

// Receive handles the root's messages. A panic in the root itself must not
// hand the tree to protoactor's default guardian (which would restart every
// subsystem from scratch), so it is caught here and treated as escalation.
func (r *Root) Receive(ctx actor.Context) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("root supervisor failed", zap.String("event", "root_panic"), zap.Any("panic", p), zap.Stack("stack"))
			r.fail(ctx, fmt.Errorf("root panic: %v", p))
		}
	}()
	switch m := ctx.Message().(type) {
	case *actor.Started:
		r.self, r.selfSystem = ctx.Self(), ctx.ActorSystem()
		r.started = time.Now()
		r.log.Info("control plane starting", zap.String("event", "startup_begin"), zap.Int("children", len(r.cfg.Children)))
		r.startNext(ctx)
	case *supervise.Ready:
		r.onReady(ctx, m)
	case *startTimedOut:
		if r.phase == phaseStarting && m.index == r.next {
			name := r.cfg.Children[m.index].Name
			r.failStartup(ctx, fmt.Errorf("%s did not finish starting within %s", name, r.cfg.StartTimeout))
		}
	case *Drain:
		r.requestDrain(ctx, m.Reason, m.ExitCode, drainDeliberate)
	case *DrainToZero:
		r.requestDrain(ctx, "drain_to_zero", ExitClean, drainDeliberate)
	case *declareReady:
		if r.phase == phaseStarting {
			r.becomeReady(ctx)
		}
	case *escalate:
		r.fail(ctx, m.err)
	}
}

func (r *Root) startNext(ctx actor.Context) {
	if r.next >= len(r.cfg.Children) {
		if r.cfg.HoldReady > 0 {
			self, sys := ctx.Self(), ctx.ActorSystem()
			r.log.Warn("holding the ready declaration", zap.String("event", "ready_held"), zap.Float64("hold_ms", cpapi.Millis(r.cfg.HoldReady)))
			time.AfterFunc(r.cfg.HoldReady, func() { sys.Root.Send(self, &declareReady{}) })
			return
		}
		r.becomeReady(ctx)
		return
	}
	c := r.cfg.Children[r.next]
	pid, err := ctx.SpawnNamed(r.cfg.Tree.SpecProps(c, r.cfg.Intensity), c.Name)
	if err != nil {
		r.failStartup(ctx, fmt.Errorf("spawning %s: %w", c.Name, err))
		return
	}
	r.pids[c.Name] = pid
	r.order = append(r.order, c.Name)
	idx := r.next
	self := ctx.Self()
	sys := ctx.ActorSystem()
	time.AfterFunc(r.cfg.StartTimeout, func() { sys.Root.Send(self, &startTimedOut{index: idx}) })
}

func (r *Root) onReady(ctx actor.Context, m *supervise.Ready) {
	switch r.phase {
	case phaseStarting:
		if r.next >= len(r.cfg.Children) || m.Name != r.cfg.Children[r.next].Name {
			// A child restarted while a later one starts: nothing to wait on.
			r.logRecovered(ctx, m)
			return
		}
		if m.Err != nil {
			r.failStartup(ctx, fmt.Errorf("%s: %w", m.Name, m.Err))
			return
		}
		r.log.Info("subsystem started", zap.String("event", "subsystem_started"), zap.String("subsystem", m.Name),
			zap.Float64("since_start_ms", cpapi.Millis(time.Since(r.started))))
		r.next++
		r.startNext(ctx)
	default:
		r.logRecovered(ctx, m)
	}
}

// logRecovered reports a child that came back after a restart. One that came
// back broken degrades its subsystem; the CP keeps running.
func (r *Root) logRecovered(ctx actor.Context, m *supervise.Ready) {
	if r.phase == phaseReady {
		r.afterRestart(ctx, m.Name)
	}
	if m.Err != nil {
		r.log.Error("subsystem unavailable after restart", zap.String("event", m.Name+"_unavailable"),
			zap.String("subsystem", m.Name), zap.Error(m.Err))
		return
	}
	r.log.Info("subsystem restarted", zap.String("event", "subsystem_restarted"), zap.String("subsystem", m.Name))
}

// afterRestart gives a child that is back after a restart what its
// siblings' specs hand back (Spec.AfterRestart), then runs OnRestarted.
func (r *Root) afterRestart(ctx actor.Context, name string) {
	for _, c := range r.cfg.Children {
		for _, msg := range c.AfterRestart[name] {
			if pid := r.pids[c.Name]; pid != nil {
				ctx.Send(pid, msg)
			}
		}
	}
	if r.cfg.OnRestarted != nil {
		r.cfg.OnRestarted(ctx, name, r.pids)
	}
}

func (r *Root) becomeReady(ctx actor.Context) {
	r.phase = phaseReady
	if r.cfg.OnReady != nil {
		r.cfg.OnReady(ctx, r.pids)
	}
	r.log.Info("control plane ready", zap.String("event", "ready"), zap.Float64("startup_ms", cpapi.Millis(time.Since(r.started))))
}

// HandleFailure is the root's supervision strategy: restart one-for-one; a
// child failing more than Intensity.Max times within Intensity.Window is not
// a transient fault, so the root escalates to the ordered drain.
func (r *Root) HandleFailure(_ *actor.ActorSystem, sup actor.Supervisor, child *actor.PID, rs *actor.RestartStatistics, reason, _ any) {
	name := child.Id
	if n, ok := r.nameOf(child); ok {
		name = n
	}
	rs.Fail()
	failures := rs.NumberOfFailures(r.cfg.Intensity.Window)
	// Keep the child alive in every case: it must still answer its drain step.
	r.cfg.Tree.RecordFailure(child, reason, true)
	sup.RestartChildren(child)
	r.log.Warn("subsystem failed, restarting", zap.String("event", "subsystem_restart"), zap.String("subsystem", name),
		zap.Any("reason", reason), zap.Int("failures_in_window", failures), zap.Int("restarts", r.cfg.Tree.Restarts(child)))
	if failures > r.cfg.Intensity.Max && r.phase < phaseDraining {
		err := fmt.Errorf("%s failed %d times within %s (bound %d)", name, failures, r.cfg.Intensity.Window, r.cfg.Intensity.Max)
		r.log.Error("restart intensity exceeded", zap.String("event", "restart_intensity_exceeded"), zap.String("subsystem", name), zap.Error(err))
		rs.Reset()
		// The strategy runs on the root's own mailbox, but outside Receive:
		// queue the decision as a message so it runs with a proper context.
		sys := r.selfSystem
		if sys != nil {
			sys.Root.Send(r.self, &escalate{err: err})
		}
	}
}

type escalate struct{ err error }

func (r *Root) nameOf(pid *actor.PID) (string, bool) {
	for n, p := range r.pids {
		if p.Equal(pid) {
			return n, true
		}
	}
	return "", false
}

// fail handles an unrecoverable error: before ready it aborts start-up, after
// ready it runs the drain and exits non-zero.
func (r *Root) fail(ctx actor.Context, err error) {
	switch r.phase {
	case phaseStarting:
		r.failStartup(ctx, err)
	case phaseReady:
		r.requestDrain(ctx, "escalation: "+err.Error(), ExitEscalated, drainEscalation)
	}
}

// failStartup stops what started, in reverse order, and exits 1 without any
// drain step: enrolled agents stay fail-closed under the pinned programs.
func (r *Root) failStartup(ctx actor.Context, err error) {
	if r.phase != phaseStarting {
		return
	}
	r.log.Error("control plane failed to start", zap.String("event", "startup_failed"), zap.Error(err))
	r.abortStartup(ctx, ExitStartupFailure)
}

func (r *Root) abortStartup(ctx actor.Context, code int) {
	r.phase = phaseDraining
	r.exitCode = code
	r.stopChildren(ctx, len(r.order)-1)
}

// requestDrain starts the ordered drain once; a later request, whatever its
// kind, neither restarts it nor changes its kind or exit code.
func (r *Root) requestDrain(ctx actor.Context, reason string, code int, kind drainKind) {
	switch r.phase {
	case phaseStarting:
		r.log.Warn("drain requested before ready; aborting start-up without a drain", zap.String("event", "startup_aborted"), zap.String("reason", reason))
		r.abortStartup(ctx, code)
		return
	case phaseDraining, phaseDone:
		r.log.Info("drain already running", zap.String("event", "drain_already_running"), zap.String("reason", reason))
		return
	}
	r.phase = phaseDraining
	r.exitCode = code
	r.kind = kind
	r.drainAt = time.Now()
	r.log.Info("ordered drain begins", zap.String("event", "drain_begin"), zap.String("reason", reason),
		zap.String("kind", kind.String()), zap.Int("exit_code", code))
	r.cfg.Tree.SetState(ctx.Self(), cpapi.ActorDraining)
	if r.cfg.OnDraining != nil {
		r.cfg.OnDraining(ctx, r.pids)
	}
	r.runStep(ctx, 0)
}

func (r *Root) runStep(ctx actor.Context, i int) {
	if i >= len(r.cfg.Steps) {
		r.stopChildren(ctx, len(r.order)-1)
		return
	}
	step := r.cfg.Steps[i]
	begin := time.Now()
	logStep := func(outcome, detail string) {
		fields := []zap.Field{zap.String("event", "drain_step"), zap.String("step", step.Name), zap.Int("index", i+1),
			zap.String("owner", step.Owner), zap.String("outcome", outcome),
			zap.Float64("duration_ms", cpapi.Millis(time.Since(begin)))}
		if detail != "" {
			fields = append(fields, zap.String("detail", detail))
		}
		if outcome == supervise.OutcomeFailed || outcome == supervise.OutcomeTimeout {
			r.log.Warn("drain step", fields...)
		} else {
			r.log.Info("drain step", fields...)
		}
	}
	if r.kind != drainDeliberate && liftsEnforcement(step.Name) {
		logStep(OutcomeSkipped, "escalation drain: enforcement stays pinned, running agents stay filtered")
		r.runStep(ctx, i+1)
		return
	}
	pid, ok := r.pids[step.Owner]
	if !ok {
		logStep(supervise.OutcomeFailed, "no actor named "+step.Owner)
		r.runStep(ctx, i+1)
		return
	}
	request.Reenter(ctx, pid, &supervise.DrainStep{Step: step.Name, Deadline: begin.Add(r.cfg.StepTimeout)}, r.cfg.StepTimeout, func(d *supervise.StepDone, err error) {
		switch {
		case errors.Is(err, actor.ErrTimeout):
			logStep(supervise.OutcomeTimeout, fmt.Sprintf("no answer within %s", r.cfg.StepTimeout))
		case err != nil:
			logStep(supervise.OutcomeFailed, err.Error())
		default:
			logStep(d.Outcome, d.Detail)
		}
		r.runStep(ctx, i+1)
	})
}

// stopChildren stops the children in reverse spawn order, one at a time,
// waiting for each, then exits.
func (r *Root) stopChildren(ctx actor.Context, i int) {
	if i < 0 {
		r.finish()
		return
	}
	name := r.order[i]
	begin := time.Now()
	f := ctx.StopFuture(r.pids[name])
	ctx.ReenterAfter(f, func(_ any, err error) {
		fields := []zap.Field{zap.String("event", "subsystem_stopped"), zap.String("subsystem", name),
			zap.Float64("duration_ms", cpapi.Millis(time.Since(begin)))}
		if err != nil {
			r.log.Warn("subsystem did not stop in time", append(fields, zap.Error(err))...)
		} else {
			r.log.Info("subsystem stopped", fields...)
		}
		r.stopChildren(ctx, i-1)
	})
}

func (r *Root) finish() {
	if r.phase == phaseDone {
		return
	}
	r.phase = phaseDone
	fields := []zap.Field{zap.String("event", "exit"), zap.Int("exit_code", r.exitCode)}
	if !r.drainAt.IsZero() {
		fields = append(fields, zap.Float64("drain_ms", cpapi.Millis(time.Since(r.drainAt))))
	}
	r.log.Info("control plane exiting", fields...)
	r.cfg.Exit(r.exitCode)
}
