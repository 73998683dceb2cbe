package stack

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/scheduler"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/sibling"
)

// Managed is a member whose container the control plane builds, starts,
// watches and removes itself.
type Managed struct {
	// Container is the container's name.
	Container string
	Docker    sibling.Docker
	// Spec returns the container spec, with fresh key material: called
	// before every (re)creation.
	Spec func() (sibling.Spec, error)
	// Health checks the member through its own protocol (a DNS query, an
	// HTTP health request), not merely its port.
	Health func(ctx context.Context) error
	// StartWait bounds the wait for a new container to pass Health.
	StartWait time.Duration
	// Interval is how often Health runs once the member is up.
	Interval time.Duration
	Log      *zap.Logger
}

// MemberStatus answers GetMemberStatus.
type MemberStatus struct {
	Name        string
	Addr        string
	ContainerID string
	Healthy     bool
	Error       string
	Managed     bool
}

// GetMemberStatus asks a member's actor for its state; answered with
// *MemberStatus.
type GetMemberStatus struct{}

// StopMember removes a managed member's container and keeps it down until
// StartMember (`clawker firewall down`); StartMember brings it up again
// and answers once it is healthy. Both are answered with *MemberDone.
type (
	StopMember  struct{}
	StartMember struct{}
)

// MemberDone answers StopMember and StartMember.
type MemberDone struct{ Err error }

// Messages the owner sends itself from its goroutines and timer.
type (
	ensured struct {
		out sibling.Outcome
		err error
	}
	checked struct {
		err     error
		running bool
	}
	healthTick struct{}
	removed    struct {
		sender *actor.PID
		step   string
		err    error
	}
)

// Owner runs one member: adoption of whatever answers (no Managed), or the
// managed lifecycle. The dns and proxy actors embed it and pass it every
// message they do not handle themselves.
type Owner struct {
	M Member

	readyReported bool
	ensuring      bool
	checking      bool
	stopped       bool
	healthy       bool
	failures      int
	lastErr       error
	containerID   string
	cancelTick    scheduler.CancelFunc
	// waiting are StartMember senders answered by the next *ensured.
	waiting []*actor.PID
}

// recreateAfter is how many failed health checks in a row of a running
// container make the owner replace it.
const recreateAfter = 3

// Receive handles the owner's messages; it reports whether it took m.
func (o *Owner) Receive(ctx actor.Context) bool {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if o.M.Managed == nil {
			Adopt(ctx, o.M)
			return true
		}
		o.ensure(ctx, false)
	case *actor.Stopping, *actor.Restarting:
		o.stopTicker()
	case *Adopted:
		o.healthy = m.Err == nil
		o.lastErr = m.Err
		supervise.ReportReady(ctx, m.Err)
	case *ensured:
		o.onEnsured(ctx, m)
	case *healthTick:
		o.check(ctx)
	case *checked:
		o.onChecked(ctx, m)
	case *GetMemberStatus:
		ctx.Respond(o.status())
	case *StartMember:
		if o.M.Managed == nil {
			ctx.Respond(&MemberDone{Err: fmt.Errorf("%s is not run by this control plane", o.M.Name)})
			return true
		}
		if !o.stopped && o.healthy {
			ctx.Respond(&MemberDone{})
			return true
		}
		o.stopped = false
		o.waiting = append(o.waiting, ctx.Sender())
		o.ensure(ctx, false)
	case *StopMember:
		if o.M.Managed == nil {
			ctx.Respond(&MemberDone{Err: fmt.Errorf("%s is not run by this control plane", o.M.Name)})
			return true
		}
		o.stopped, o.healthy, o.lastErr = true, false, ErrStopped
		o.stopTicker()
		sender, sys, mg := ctx.Sender(), ctx.ActorSystem(), o.M.Managed
		go func() {
			cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			err := sibling.Remove(cctx, mg.Docker, mg.Container)
			cancel()
			sys.Root.Send(sender, &MemberDone{Err: err})
		}()
	case *removed:
		outcome, detail := supervise.OutcomeDone, "removed "+o.name()
		if m.err != nil {
			outcome, detail = supervise.OutcomeFailed, m.err.Error()
		}
		ctx.Send(m.sender, &supervise.StepDone{Step: m.step, Outcome: outcome, Detail: detail})
	default:
		return false
	}
	return true
}

func (o *Owner) name() string {
	if o.M.Managed != nil {
		return o.M.Managed.Container
	}
	return o.M.Name
}

func (o *Owner) status() *MemberStatus {
	st := &MemberStatus{Name: o.M.Name, Addr: o.M.Addr.String(), ContainerID: o.containerID, Healthy: o.healthy, Managed: o.M.Managed != nil}
	if !o.M.Addr.IsValid() {
		st.Addr = ""
	}
	if o.lastErr != nil && !o.healthy {
		st.Error = o.lastErr.Error()
	}
	return st
}

// ensure brings the container up off the mailbox and reports *ensured;
// replace removes a running container first.
func (o *Owner) ensure(ctx actor.Context, replace bool) {
	if o.ensuring || o.stopped {
		return
	}
	o.ensuring = true
	mg := o.M.Managed
	self, sys := ctx.Self(), ctx.ActorSystem()
	go func() {
		res := &ensured{}
		if replace {
			rctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			if err := sibling.Remove(rctx, mg.Docker, mg.Container); err != nil {
				mg.Log.Warn("removing an unresponsive firewall sibling failed", zap.String("event", "firewall_stack_unavailable"),
					zap.String("container", mg.Container), zap.Error(err))
			}
			cancel()
		}
		sp, err := mg.Spec()
		if err == nil {
			ectx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			res.out, err = sibling.Ensure(ectx, mg.Docker, sp)
			cancel()
		}
		if err == nil {
			err = waitHealthy(mg, mg.Container)
		}
		if err != nil {
			tail := ""
			if t := sibling.LogTail(context.Background(), mg.Docker, mg.Container, 5); t != "" {
				tail = "\n" + t
			}
			err = fmt.Errorf("%s (%s): %w; see `docker logs %s`%s", o.M.Name, mg.Container, err, mg.Container, tail)
		}
		res.err = err
		sys.Root.Send(self, res)
	}()
}

func waitHealthy(mg *Managed, name string) error {
	deadline := time.Now().Add(mg.StartWait)
	var err error
	for {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err = mg.Health(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if _, running, ierr := sibling.Running(context.Background(), mg.Docker, name); ierr == nil && !running {
			return fmt.Errorf("the container exited: %w", err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not healthy within %s: %w", mg.StartWait, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (o *Owner) onEnsured(ctx actor.Context, m *ensured) {
	o.ensuring = false
	for _, w := range o.waiting {
		ctx.Send(w, &MemberDone{Err: m.err})
	}
	o.waiting = nil
	if o.stopped {
		// Stopped while it was coming up: the container it made goes too.
		if mg := o.M.Managed; m.out.ID != "" {
			go func() {
				cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				_ = sibling.Remove(cctx, mg.Docker, mg.Container)
				cancel()
			}()
		}
		return
	}
	if m.out.ID != "" {
		o.containerID = m.out.ID
	}
	log := o.M.Managed.Log
	if m.err == nil {
		o.healthy, o.lastErr, o.failures = true, nil, 0
		log.Info("firewall sibling up", zap.String("event", "firewall_sibling_up"), zap.String("member", o.M.Name),
			zap.String("container_id", shortID(m.out.ID)), zap.String("image", m.out.Image),
			zap.Bool("adopted", m.out.Adopted), zap.Bool("replaced", m.out.Replaced), zap.Bool("image_built", m.out.ImageBuilt))
	} else {
		o.healthy, o.lastErr = false, m.err
	}
	if !o.readyReported {
		o.readyReported = true
		supervise.ReportReady(ctx, m.err)
		if m.err != nil {
			return
		}
	} else if m.err != nil {
		// Past ready a failing member degrades: agents' egress through it
		// fails closed until the next attempt succeeds.
		log.Error("firewall sibling cannot be brought up", zap.String("event", "firewall_stack_unavailable"), zap.String("member", o.M.Name), zap.Error(m.err))
	}
	o.startTicker(ctx)
}

func (o *Owner) startTicker(ctx actor.Context) {
	if o.cancelTick != nil || o.stopped {
		return
	}
	o.cancelTick = scheduler.NewTimerScheduler(ctx).SendRepeatedly(o.M.Managed.Interval, o.M.Managed.Interval, ctx.Self(), &healthTick{})
}

func (o *Owner) stopTicker() {
	if o.cancelTick != nil {
		o.cancelTick()
		o.cancelTick = nil
	}
}

// check runs one health check off the mailbox.
func (o *Owner) check(ctx actor.Context) {
	if o.checking || o.ensuring || o.stopped {
		return
	}
	o.checking = true
	mg := o.M.Managed
	self, sys := ctx.Self(), ctx.ActorSystem()
	go func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := mg.Health(cctx)
		cancel()
		res := &checked{err: err, running: true}
		if err != nil {
			_, running, ierr := sibling.Running(context.Background(), mg.Docker, mg.Container)
			res.running = running || ierr != nil // unknown: do not thrash
		}
		sys.Root.Send(self, res)
	}()
}

func (o *Owner) onChecked(ctx actor.Context, m *checked) {
	o.checking = false
	if o.stopped {
		return
	}
	log := o.M.Managed.Log
	if m.err == nil {
		if !o.healthy {
			log.Info("firewall sibling healthy again", zap.String("event", "firewall_sibling_recovered"), zap.String("member", o.M.Name))
		}
		o.healthy, o.lastErr, o.failures = true, nil, 0
		return
	}
	if o.healthy {
		log.Error("firewall sibling failing", zap.String("event", "firewall_stack_unavailable"), zap.String("member", o.M.Name), zap.Bool("running", m.running), zap.Error(m.err))
	}
	o.healthy, o.lastErr = false, fmt.Errorf("%s: %w", o.M.Name, m.err)
	o.failures++
	if !m.running || o.failures >= recreateAfter {
		o.failures = 0
		// A container that runs but does not answer (hung, stopped with
		// SIGSTOP) has the same spec: Ensure alone would adopt it again.
		o.ensure(ctx, m.running)
	}
}

// StopStep carries out stack_stop: a managed member's container is
// removed off the mailbox and the step answered when it is gone; an
// adopted one is not ours to stop, and nothing answers `unmanaged`.
func (o *Owner) StopStep(ctx actor.Context, m *supervise.DrainStep, unmanaged string) {
	o.stopped = true
	o.stopTicker()
	if o.M.Managed == nil {
		supervise.AnswerStep(ctx, m.Step, supervise.OutcomeNothing, unmanaged)
		return
	}
	mg := o.M.Managed
	sender, self, sys := ctx.Sender(), ctx.Self(), ctx.ActorSystem()
	go func() {
		cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := sibling.Remove(cctx, mg.Docker, mg.Container)
		cancel()
		sys.Root.Send(self, &removed{sender: sender, step: m.Step, err: err})
	}()
}

// ErrStopped is a member's error after StopMember.
var ErrStopped = errors.New("stopped by `clawker firewall down`; `clawker firewall up` starts it again (agents' egress fails closed meanwhile)")

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
