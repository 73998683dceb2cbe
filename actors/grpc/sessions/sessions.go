// Package sessions parents one child actor per connected clawkerd Session,
// named after its agent (<project>.<agent>), so /debug/actors shows every
// connected agent. The child owns the Session's state: the commands in
// flight, heartbeats both ways, and the lifecycle it publishes to the
// overseer. The gRPC handler that owns the stream only moves messages:
// received ones to the child (FromAgent), outgoing ones from the child's
// outbox onto the wire.
package sessions

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/supervise"
	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

// Config wires the sessions parent and its children.
type Config struct {
	Tree      *supervise.Tree
	Intensity supervise.Intensity
	Overseer  *actor.PID
	Registry  *actor.PID
	// Heartbeat is how often the CP sends a heartbeat; three intervals
	// without hearing from the agent mark the Session broken.
	Heartbeat time.Duration
	Log       *zap.Logger
}

// ErrShuttingDown ends Sessions when the CP drains.
var ErrShuttingDown = errors.New("control plane shutting down")

// Open is sent by the Session handler once the agent's identity checked
// out; the answer is *Opened. An existing Session of the same agent is
// replaced: the agent reconnected before the old stream was seen to break.
type Open struct {
	Agent       string // <project>.<agent>
	Key         string
	ContainerID string
	// Outbox carries messages to the agent; the handler drains it onto the
	// stream. Sends into it never block: a full outbox breaks the Session.
	Outbox chan<- *agentv1.ControlMessage
	// End closes the stream with the given cause (the handler returns).
	End func(cause error)
}

// Opened answers Open.
type Opened struct {
	PID *actor.PID
	Err error
}

// FromAgent carries one message the agent sent.
type FromAgent struct{ Msg *agentv1.AgentMessage }

// StreamClosed tells the Session its stream ended (Recv failed).
type StreamClosed struct{ Err error }

// Dispatch sends a command to an agent's clawkerd and answers
// *DispatchResult once the agent answered the command's id (or Timeout
// passed). An empty Command.Id is filled in.
type Dispatch struct {
	Agent   string
	Command *agentv1.Command
	Timeout time.Duration
}

// DispatchResult answers Dispatch.
type DispatchResult struct {
	Result *agentv1.CommandResult
	Stdout []byte
	Stderr []byte
	// Truncated: Stdout or Stderr stopped at MaxCommandOutput.
	Truncated bool
	Err       error
}

// ListConnected asks for the keys of every connected agent; the answer is
// *Connected.
type ListConnected struct{}

// Connected answers ListConnected.
type Connected struct{ Keys map[string]bool }

// EndAll ends every Session (the grpc_stop drain step); answer *Ended.
type EndAll struct{}

// Ended answers EndAll.
type Ended struct{ Sessions int }

// ErrReplaced ends a Session whose agent opened a newer one.
var ErrReplaced = errors.New("session replaced by a newer connection of the same agent")

// Actor is the sessions parent.
type Actor struct {
	cfg      Config
	children map[string]*child
	// waiting holds an Open whose agent still has an old Session stopping,
	// by agent name. The new child is spawned when the old one's
	// Terminated arrives: both carry the same name, so the new one cannot
	// exist before the old one is gone.
	waiting map[string]*pendingOpen
}

type pendingOpen struct {
	open   *Open
	sender *actor.PID
}

// replace asks a Session to end its stream because its agent reconnected.
type replace struct{}

type child struct {
	pid *actor.PID
	key string
}

// New returns a producer of fresh sessions parents.
func New(cfg Config) actor.Producer {
	return func() actor.Actor {
		return &Actor{cfg: cfg, children: map[string]*child{}, waiting: map[string]*pendingOpen{}}
	}
}

// Receive handles the parent's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		supervise.ReportReady(ctx, nil)
	case *Open:
		a.open(ctx, m)
	case *Dispatch:
		c, ok := a.children[m.Agent]
		if !ok {
			ctx.Respond(&DispatchResult{Err: fmt.Errorf("agent %q has no connected session", m.Agent)})
			return
		}
		ctx.Forward(c.pid)
	case *ListConnected:
		keys := make(map[string]bool, len(a.children))
		for _, c := range a.children {
			keys[c.key] = true
		}
		ctx.Respond(&Connected{Keys: keys})
	case *EndAll:
		a.endAll(ctx)
	case *actor.Terminated:
		name := m.Who.Id[strings.LastIndexByte(m.Who.Id, '/')+1:]
		if c, ok := a.children[name]; ok && c.pid.Equal(m.Who) {
			delete(a.children, name)
		}
		if w, ok := a.waiting[name]; ok {
			delete(a.waiting, name)
			a.spawn(ctx, w.open, w.sender)
		}
	}
}

func (a *Actor) open(ctx actor.Context, m *Open) {
	if w, ok := a.waiting[m.Agent]; ok {
		// A third connection while the old Session still stops: the newest wins.
		ctx.Send(w.sender, &Opened{Err: ErrReplaced})
		w.open.End(ErrReplaced)
		a.waiting[m.Agent] = &pendingOpen{open: m, sender: ctx.Sender()}
		return
	}
	old, ok := a.children[m.Agent]
	if !ok {
		a.spawn(ctx, m, ctx.Sender())
		return
	}
	a.cfg.Log.Info("replacing the session of a reconnected agent", zap.String("event", "session_replaced"), zap.String("agent", m.Agent))
	delete(a.children, m.Agent)
	a.waiting[m.Agent] = &pendingOpen{open: m, sender: ctx.Sender()}
	ctx.Send(old.pid, &replace{})
	ctx.Poison(old.pid)
}

func (a *Actor) spawn(ctx actor.Context, m *Open, requester *actor.PID) {
	props := a.cfg.Tree.Props(newSession(a.cfg, m), a.cfg.Intensity)
	pid, err := ctx.SpawnNamed(props, m.Agent)
	if err != nil {
		ctx.Send(requester, &Opened{Err: fmt.Errorf("spawning session %s: %w", m.Agent, err)})
		return
	}
	a.children[m.Agent] = &child{pid: pid, key: m.Key}
	ctx.Send(requester, &Opened{PID: pid})
}

func (a *Actor) endAll(ctx actor.Context) {
	n := len(a.children)
	futures := make([]*actor.Future, 0, n)
	for name, c := range a.children {
		futures = append(futures, ctx.StopFuture(c.pid))
		delete(a.children, name)
	}
	var wait func(i int)
	wait = func(i int) {
		if i == len(futures) {
			ctx.Respond(&Ended{Sessions: n})
			return
		}
		ctx.ReenterAfter(futures[i], func(any, error) { wait(i + 1) })
	}
	wait(0)
}
