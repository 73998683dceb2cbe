package supervise

import (
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// Intensity bounds restarts: more than Max failures of one child within
// Window means the failure is not transient.
type Intensity struct {
	Max    int
	Window time.Duration
}

// Props builds the props of an actor that shows up in the tree: its mailbox is
// counted, its lifecycle followed, Ping and Fault handled, and its own
// children are supervised one-for-one within the given intensity. The actor
// owns no drain step: the middleware answers every DrainStep for it. Call it
// once per spawn: the props carry that one actor's counters.
func (t *Tree) Props(producer actor.Producer, in Intensity, opts ...actor.PropsOption) *actor.Props {
	return t.props(producer, in, nil, opts)
}

// SpecProps builds the props of s's actor, as Props does; the actor sees
// the drain steps s.Steps names and no other.
func (t *Tree) SpecProps(s Spec, in Intensity, opts ...actor.PropsOption) *actor.Props {
	return t.props(s.Producer, in, s.Steps, opts)
}

func (t *Tree) props(producer actor.Producer, in Intensity, steps []string, opts []actor.PropsOption) *actor.Props {
	n := &node{state: cpapi.ActorStarting, steps: steps}
	// The sibling order is taken here, at spawn time: actors process
	// Started on their own goroutines, in no fixed order.
	t.mu.Lock()
	t.seq++
	n.seq = t.seq
	t.mu.Unlock()
	base := []actor.PropsOption{
		actor.WithMailbox(actor.Unbounded(mailboxStats{n})),
		actor.WithReceiverMiddleware(t.middleware(n)),
		actor.WithSupervisor(t.Strategy(in)),
	}
	return actor.PropsFromProducer(producer, append(base, opts...)...)
}

func (t *Tree) middleware(n *node) actor.ReceiverMiddleware {
	return func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(c actor.ReceiverContext, env *actor.MessageEnvelope) {
			switch m := env.Message.(type) {
			case *actor.Started:
				t.register(n, c.Self(), c.Parent())
				if n.name == "" {
					n.name = lastSegment(c.Self().Id)
				}
				// Running before the handler runs: actors report Ready from
				// inside Started, and the tree must not lag behind that.
				t.setState(n, cpapi.ActorRunning)
				t.invoke(n, next, c, env)
			case *actor.Stopping:
				t.setState(n, cpapi.ActorStopped)
				t.invoke(n, next, c, env)
			case *actor.Stopped:
				t.invoke(n, next, c, env)
				t.remove(n)
			case *Ping:
				if env.Sender != nil {
					c.ActorSystem().Root.Send(env.Sender, &Pong{})
				}
			case *DrainStep:
				if !slices.Contains(n.steps, m.Step) {
					notOwned(c, env.Sender, m)
					return
				}
				t.invoke(n, next, c, env)
			case *Fault:
				// Through invoke, so an injected panic is counted and logged
				// like any other.
				t.invoke(n, func(c actor.ReceiverContext, _ *actor.MessageEnvelope) { applyFault(c, m) }, c, env)
			default:
				t.invoke(n, next, c, env)
			}
		}
	}
}

// invoke runs the actor's handler and, if it panics, notes the panic with its
// stack before handing it on to protoactor's supervision.
func (t *Tree) invoke(n *node, next actor.ReceiverFunc, c actor.ReceiverContext, env *actor.MessageEnvelope) {
	defer func() {
		if r := recover(); r != nil {
			// The mailbox skips its received count for a message that panicked.
			n.received.Add(1)
			c.Logger().Error("actor panicked",
				slog.String("event", "actor_panic"),
				slog.String("actor", c.Self().Id),
				slog.String("message_type", fmt.Sprintf("%T", env.Message)),
				slog.String("panic", fmt.Sprint(r)),
				slog.String("stack", string(debug.Stack())))
			panic(r)
		}
	}()
	next(c, env)
}

func applyFault(c actor.ReceiverContext, f *Fault) {
	switch f.Kind {
	case FaultPanic:
		panic(fmt.Sprintf("debug fault injected into %s", c.Self().Id))
	case FaultBlock:
		// Stalling the mailbox is the point: it makes the liveness probe fail.
		time.Sleep(f.Duration)
	}
}

// Strategy supervises an actor's children one-for-one: a failing child is
// restarted until it fails more than in.Max times within in.Window; then the
// failure is escalated to the supervisor's own parent, as an OTP supervisor
// gives up and fails itself. The root has its own strategy that ends in the
// ordered drain instead.
func (t *Tree) Strategy(in Intensity) actor.SupervisorStrategy {
	return &oneForOne{tree: t, in: in}
}

type oneForOne struct {
	tree *Tree
	in   Intensity
}

func (s *oneForOne) HandleFailure(_ *actor.ActorSystem, sup actor.Supervisor, child *actor.PID, rs *actor.RestartStatistics, reason, message any) {
	rs.Fail()
	if rs.NumberOfFailures(s.in.Window) > s.in.Max {
		rs.Reset()
		s.tree.RecordFailure(child, reason, false)
		sup.StopChildren(child)
		sup.EscalateFailure(fmt.Errorf("child %s exceeded %d restarts in %s: %v", child.Id, s.in.Max, s.in.Window, reason), message)
		return
	}
	s.tree.RecordFailure(child, reason, true)
	sup.RestartChildren(child)
}
