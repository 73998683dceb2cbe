// Package firewall serialises every mutation of the egress firewall: its
// mailbox is the action queue. It supervises the sibling containers of the
// stack, dns and proxy, and owns four steps of the ordered drain.
package firewall

import (
	"errors"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/firewall/dns"
	"github.com/clawker/clawker-cp/actors/firewall/proxy"
	"github.com/clawker/clawker-cp/actors/supervise"
)

// Config wires the firewall actor.
type Config struct {
	// Enable is settings' firewall.enable.
	Enable      bool
	Tree        *supervise.Tree
	Intensity   supervise.Intensity
	StepTimeout time.Duration // bound on a child's part of a drain step
}

// ErrStackMissing is the start-up failure of a CP asked to enforce a
// firewall it cannot build yet.
var ErrStackMissing = errors.New("firewall.enable is true but this control plane has no firewall stack (DNS and egress proxy containers are not built yet); " +
	"set firewall.enable: false in settings.yaml to run without egress enforcement")

// Actor is the firewall.
type Actor struct {
	cfg         Config
	queueClosed bool
	dns, proxy  *actor.PID
	ready       bool
}

// New returns a producer of fresh firewall actors.
func New(cfg Config) actor.Producer { return func() actor.Actor { return &Actor{cfg: cfg} } }

// Receive handles the actor's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if a.cfg.Enable {
			// A green /healthz must mean the firewall enforces. It cannot
			// yet, so an enabled firewall fails start-up rather than run
			// half-protected.
			supervise.ReportReady(ctx, ErrStackMissing)
			return
		}
		// The stack starts DNS first: the proxy resolves through it.
		a.dns = a.spawn(ctx, "dns", dns.New())
	case *supervise.Ready:
		a.childReady(ctx, m)
	case *supervise.DrainStep:
		a.drainStep(ctx, m)
	}
}

func (a *Actor) spawn(ctx actor.Context, name string, p actor.Producer) *actor.PID {
	pid, err := ctx.SpawnNamed(a.cfg.Tree.Props(p, a.cfg.Intensity), name)
	if err != nil {
		supervise.ReportReady(ctx, fmt.Errorf("spawning firewall/%s: %w", name, err))
	}
	return pid
}

func (a *Actor) childReady(ctx actor.Context, m *supervise.Ready) {
	if a.ready {
		return // a child came back after a restart; it reports its own state
	}
	if m.Err != nil {
		supervise.ReportReady(ctx, fmt.Errorf("firewall/%s: %w", m.Name, m.Err))
		return
	}
	switch m.Name {
	case "dns":
		if a.proxy == nil { // a dns restarted before the proxy came up reports Ready twice
			a.proxy = a.spawn(ctx, "proxy", proxy.New())
		}
	case "proxy":
		a.ready = true
		supervise.ReportReady(ctx, nil)
	}
}

func (a *Actor) drainStep(ctx actor.Context, m *supervise.DrainStep) {
	switch m.Step {
	case supervise.StepFirewallQueueClose:
		// From here on the mailbox refuses mutations; drain steps still run.
		a.queueClosed = true
		supervise.AnswerStep(ctx, m.Step, supervise.OutcomeDone, "action queue closed to new mutations")
	case supervise.StepBypassTimersCancel:
		supervise.AnswerStep(ctx, m.Step, supervise.OutcomeNothing, "no bypass timers armed")
	case supervise.StepStackStop:
		// Reverse of start order: the proxy goes before the DNS it uses.
		a.forward(ctx, m, a.proxy, a.dns)
	case supervise.StepDNSGCStop:
		a.forward(ctx, m, a.dns)
	default:
		supervise.RefuseStep(ctx, m)
	}
}

// forward runs a step on each child in turn and answers with the combined
// outcome, without blocking the mailbox while the children work.
func (a *Actor) forward(ctx actor.Context, m *supervise.DrainStep, children ...*actor.PID) {
	var results []*supervise.StepDone
	var next func(i int)
	next = func(i int) {
		if i == len(children) {
			outcome, detail := combine(results)
			supervise.AnswerStep(ctx, m.Step, outcome, detail)
			return
		}
		if children[i] == nil {
			results = append(results, &supervise.StepDone{Outcome: supervise.OutcomeFailed, Detail: "child not started"})
			next(i + 1)
			return
		}
		f := ctx.RequestFuture(children[i], &supervise.DrainStep{Step: m.Step}, a.cfg.StepTimeout)
		ctx.ReenterAfter(f, func(res interface{}, err error) {
			d, ok := res.(*supervise.StepDone)
			if err != nil || !ok {
				d = &supervise.StepDone{Outcome: supervise.OutcomeFailed, Detail: fmt.Sprintf("%s: %v", children[i].Id, err)}
			}
			results = append(results, d)
			next(i + 1)
		})
	}
	next(0)
}

// combine folds the children's answers: any failure fails the step, any work
// done makes it done, otherwise there was nothing to do.
func combine(rs []*supervise.StepDone) (string, string) {
	outcome := supervise.OutcomeNothing
	detail := ""
	for _, r := range rs {
		switch {
		case r.Outcome == supervise.OutcomeFailed || r.Outcome == supervise.OutcomeTimeout:
			outcome = supervise.OutcomeFailed
		case r.Outcome == supervise.OutcomeDone && outcome == supervise.OutcomeNothing:
			outcome = supervise.OutcomeDone
		}
		if detail != "" {
			detail += "; "
		}
		detail += r.Detail
	}
	return outcome, detail
}
