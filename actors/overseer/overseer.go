// Package overseer is the CP's typed event bus and worldview. Actors publish
// events to it; it folds them into a State that can be deep-copied out, and
// forwards each to its subscribers. Subscribers are PIDs and receive events
// by Send, so a slow subscriber never blocks a publisher.
package overseer

import (
	"sort"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/supervise"
)

// SessionState is the lifecycle of one agent's Session.
type SessionState string

// Session states.
const (
	SessionConnecting SessionState = "connecting"
	SessionConnected  SessionState = "connected"
	SessionFailed     SessionState = "failed"
	SessionBroken     SessionState = "broken"
	SessionClosed     SessionState = "closed"
)

// SessionEvent reports a Session lifecycle transition.
type SessionEvent struct {
	Agent       string // <project>.<agent>
	ContainerID string
	State       SessionState
	Reason      string
	At          time.Time
}

// Publish hands an event to the overseer.
type Publish struct{ Event interface{} }

// Subscribe registers Subscriber to receive every published event.
type Subscribe struct{ Subscriber *actor.PID }

// Unsubscribe removes a subscriber.
type Unsubscribe struct{ Subscriber *actor.PID }

// GetState asks for a deep copy of the worldview; the answer is *State.
type GetState struct{}

// SessionView is the worldview's record of one agent's Session.
type SessionView struct {
	Agent       string       `json:"agent"`
	ContainerID string       `json:"container_id"`
	State       SessionState `json:"state"`
	Reason      string       `json:"reason,omitempty"`
	Since       time.Time    `json:"since"`
}

// State is the worldview. It holds only values, so a copy shares nothing.
type State struct {
	Sessions []SessionView `json:"sessions"`
}

// Actor is the overseer.
type Actor struct {
	sessions    map[string]SessionView
	subscribers map[string]*actor.PID
}

// New returns a producer of fresh overseers.
func New() actor.Producer {
	return func() actor.Actor {
		return &Actor{sessions: map[string]SessionView{}, subscribers: map[string]*actor.PID{}}
	}
}

// Receive handles the overseer's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		supervise.ReportReady(ctx, nil)
	case *Publish:
		a.fold(m.Event)
		for _, s := range a.subscribers {
			ctx.Send(s, m.Event)
		}
	case *Subscribe:
		a.subscribers[m.Subscriber.String()] = m.Subscriber
	case *Unsubscribe:
		delete(a.subscribers, m.Subscriber.String())
	case *GetState:
		ctx.Respond(a.snapshot())
	case *supervise.DrainStep:
		supervise.RefuseStep(ctx, m)
	}
}

func (a *Actor) fold(ev interface{}) {
	switch e := ev.(type) {
	case *SessionEvent:
		a.sessions[e.Agent] = SessionView{Agent: e.Agent, ContainerID: e.ContainerID, State: e.State, Reason: e.Reason, Since: e.At}
	}
}

func (a *Actor) snapshot() *State {
	s := &State{Sessions: make([]SessionView, 0, len(a.sessions))}
	for _, v := range a.sessions {
		s.Sessions = append(s.Sessions, v)
	}
	sort.Slice(s.Sessions, func(i, j int) bool { return s.Sessions[i].Agent < s.Sessions[j].Agent })
	return s
}
