package firewall

import (
	"errors"
	"fmt"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/actors/firewall/stack"
	"github.com/clawker/clawker-cp/actors/request"
)

// The stack's lifecycle verbs (`clawker firewall up` / `down`).
//
// Down stops both siblings but never lifts enforcement: agents stay
// enrolled in the kernel, whose redirects then lead nowhere, so their
// egress fails closed. Because that breaks every running agent's network,
// down refuses while agents are enforced unless forced, like
// `controlplane down`.

// ErrAgentsRunning refuses a StackDown without Force while agents are
// enforced.
var ErrAgentsRunning = errors.New("agents are running: without the stack their egress fails (nothing is let through unfiltered); pass --force to stop it anyway")

func (a *Actor) stackUp(ctx actor.Context, _ *StackUp) {
	sender := ctx.Sender()
	if err := a.stackUsable(); err != nil {
		a.answer(ctx, sender, &Result{Err: err})
		return
	}
	// DNS first: the proxy resolves through it.
	a.inTurn(ctx, []*actor.PID{a.dns, a.proxy}, &stack.StartMember{}, func(err error) {
		a.cfg.Log.Info("firewall stack up", zap.String("event", "firewall_stack_up"), zap.Error(err))
		a.answer(ctx, sender, &Result{Err: err})
	})
}

func (a *Actor) stackDown(ctx actor.Context, m *StackDown) {
	sender := ctx.Sender()
	if err := a.stackUsable(); err != nil {
		a.answer(ctx, sender, &Result{Err: err})
		return
	}
	down := func() {
		a.inTurn(ctx, []*actor.PID{a.proxy, a.dns}, &stack.StopMember{}, func(err error) {
			a.cfg.Log.Warn("firewall stack down: agents' egress fails closed until `clawker firewall up`",
				zap.String("event", "firewall_stack_down"), zap.Bool("force", m.Force), zap.Error(err))
			a.answer(ctx, sender, &Result{Err: err})
		})
	}
	if m.Force {
		down()
		return
	}
	request.Reenter(ctx, a.cfg.EBPF, &ebpf.GetState{}, a.cfg.OpTimeout, func(st *ebpf.State, err error) {
		if err == nil {
			err = st.Err
		}
		if err != nil {
			a.answer(ctx, sender, &Result{Err: fmt.Errorf("cannot tell whether agents run (%v); pass --force to stop the stack anyway", err)})
			return
		}
		if n := len(st.Agents); n > 0 {
			a.answer(ctx, sender, &Result{Err: fmt.Errorf("%d %w", n, ErrAgentsRunning)})
			return
		}
		down()
	})
}

func (a *Actor) stackUsable() error {
	switch {
	case !a.cfg.Enable:
		return ErrFirewallDisabled
	case a.queueClosed:
		return ErrQueueClosed
	case a.cfg.Stack == nil:
		return fmt.Errorf("%w: it was adopted at start-up; start or stop it where it was started", errNoStack)
	case a.dns == nil || a.proxy == nil:
		return errors.New("the firewall stack is still starting")
	}
	return nil
}

// inTurn sends msg to each member in order, waiting for its *MemberDone,
// off the mailbox; done gets the first error (later members still run).
func (a *Actor) inTurn(ctx actor.Context, pids []*actor.PID, msg any, done func(error)) {
	var errs []error
	var next func(i int)
	next = func(i int) {
		if i == len(pids) {
			done(errors.Join(errs...))
			return
		}
		request.Reenter(ctx, pids[i], msg, a.cfg.Stack.StartWait+a.cfg.OpTimeout, func(d *stack.MemberDone, err error) {
			if err == nil {
				err = d.Err
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", pids[i].Id, err))
			}
			next(i + 1)
		})
	}
	next(0)
}
