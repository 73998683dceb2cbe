// Package overseer is the CP's typed event bus and worldview. Actors publish
// events to it; it folds them into a State that can be deep-copied out, and
// forwards each to its subscribers. Subscribers are PIDs and receive events
// by Send, so a slow subscriber never blocks a publisher.
//
// Two kinds of events are folded today: Session lifecycle (SessionEvent,
// from the gRPC side) and container lifecycle (ContainerStarted,
// ContainerStopped, ContainerDestroyed, ContainerRenamed, from the Docker
// events feeder).
//
// A subscriber that goes away is noticed twice over: the overseer watches
// every subscriber and forgets it when it terminates, and an event that
// still reaches a gone subscriber (sent before the termination notice
// arrived) turns into a dead letter, which the overseer counts in
// State.Bus.Dropped and which also removes the subscriber. What the overseer
// cannot see is a live subscriber that is slow: its mailbox is unbounded, so
// it queues rather than drops.
//
// The overseer's state lives in memory only. After a restart it is empty
// until the publishers fill it again: the wiring asks the Docker events
// feeder to republish what it knows (see dockerfeed.Resync); Sessions show
// up again at their next transition.
package overseer

import (
	"log/slog"
	"sort"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/eventstream"

	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// SessionState is the lifecycle of one agent's Session.
type SessionState = cpapi.SessionState

// Session states.
const (
	SessionConnecting = cpapi.SessionConnecting
	SessionConnected  = cpapi.SessionConnected
	SessionFailed     = cpapi.SessionFailed
	SessionBroken     = cpapi.SessionBroken
	SessionClosed     = cpapi.SessionClosed
)

// SessionEvent reports a Session lifecycle transition.
type SessionEvent struct {
	Agent       string // <project>.<agent>
	ContainerID string
	State       SessionState
	Reason      string
	At          time.Time
}

// Container identifies a managed container in the container events: its
// full ID, its name (without Docker's leading slash) and clawker's labels.
type Container struct {
	ID      string
	Name    string
	Purpose string // dev.clawker.purpose
	Project string // dev.clawker.project (agents)
	Agent   string // dev.clawker.agent (agents)
}

// ContainerStarted reports that a managed container started running.
// Reconciled is true when the transition was inferred by comparing a
// listing of the daemon with what the feeder knew, rather than read from
// the event stream (the event itself was missed, e.g. while the daemon
// restarted); At is then the time of the listing.
type ContainerStarted struct {
	Container
	At         time.Time
	Reconciled bool
}

// ContainerStopped reports that a managed container stopped running.
// ExitCode is cpapi.ExitCodeUnknown when Docker did not say.
type ContainerStopped struct {
	Container
	ExitCode   int
	At         time.Time
	Reconciled bool
}

// ContainerDestroyed reports that a managed container was removed.
type ContainerDestroyed struct {
	Container
	At         time.Time
	Reconciled bool
}

// ContainerRenamed reports a managed container's new name (Container.Name)
// and its old one.
type ContainerRenamed struct {
	Container
	OldName    string
	At         time.Time
	Reconciled bool
}

// Publish hands an event to the overseer.
type Publish struct{ Event any }

// Subscribe registers Subscriber to receive every published event.
type Subscribe struct{ Subscriber *actor.PID }

// Unsubscribe removes a subscriber.
type Unsubscribe struct{ Subscriber *actor.PID }

// GetState asks for a deep copy of the worldview; the answer is *State.
type GetState struct{}

// SessionView is the worldview's record of one agent's Session.
type SessionView = cpapi.SessionView

// ContainerView is the worldview's record of one managed container.
type ContainerView = cpapi.ContainerView

// State is the worldview. It holds only values, so a copy shares nothing.
type State = cpapi.WorldState

// subscriberGone reports a dead letter: an event sent to a gone PID.
type subscriberGone struct{ pid *actor.PID }

// Actor is the overseer.
type Actor struct {
	sessions    map[string]SessionView
	containers  map[string]ContainerView
	subscribers map[string]*actor.PID
	published   uint64
	dropped     uint64
	deadLetters *eventstream.Subscription
}

// New returns a producer of fresh overseers.
func New() actor.Producer {
	return func() actor.Actor {
		return &Actor{
			sessions:    map[string]SessionView{},
			containers:  map[string]ContainerView{},
			subscribers: map[string]*actor.PID{},
		}
	}
}

// Receive handles the overseer's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.watchDeadLetters(ctx)
		supervise.ReportReady(ctx, nil)
	case *actor.Stopping, *actor.Restarting:
		if a.deadLetters != nil {
			ctx.ActorSystem().EventStream.Unsubscribe(a.deadLetters)
			a.deadLetters = nil
		}
	case *Publish:
		a.published++
		a.fold(m.Event)
		for _, s := range a.subscribers {
			ctx.Send(s, m.Event)
		}
	case *Subscribe:
		if m.Subscriber != nil {
			a.subscribers[m.Subscriber.String()] = m.Subscriber
			ctx.Watch(m.Subscriber)
		}
	case *Unsubscribe:
		if m.Subscriber != nil {
			delete(a.subscribers, m.Subscriber.String())
			ctx.Unwatch(m.Subscriber)
		}
	case *actor.Terminated:
		if m.Who != nil {
			delete(a.subscribers, m.Who.String())
		}
	case *subscriberGone:
		key := m.pid.String()
		if _, ok := a.subscribers[key]; ok {
			a.dropped++
			delete(a.subscribers, key)
			ctx.Logger().Warn("overseer subscriber is gone; removed", slog.String("event", "overseer_subscriber_gone"),
				slog.String("subscriber", m.pid.Id), slog.Uint64("dropped_total", a.dropped))
		}
	case *GetState:
		ctx.Respond(a.snapshot())
	}
}

// watchDeadLetters turns an event of ours that reached a gone PID into a
// subscriberGone message. The handler runs on the publisher's goroutine,
// so it only looks at the message; the actor decides in its own mailbox
// whether the PID was a subscriber. The filter is in the handler, not a
// SubscribeWithPredicate: that sets the predicate after the subscription
// is visible, so a concurrent Publish could run the handler unfiltered on
// any event (a data race, and with an unchecked assertion a panic in
// whatever goroutine published).
func (a *Actor) watchDeadLetters(ctx actor.Context) {
	sys, self := ctx.ActorSystem(), ctx.Self()
	a.deadLetters = sys.EventStream.Subscribe(func(evt any) {
		dl, ok := evt.(*actor.DeadLetterEvent)
		if !ok || dl.PID == nil || !isBusEvent(dl.Message) {
			return
		}
		sys.Root.Send(self, &subscriberGone{pid: dl.PID})
	})
}

// isBusEvent reports whether m is one of the event types the overseer
// forwards to its subscribers.
func isBusEvent(m any) bool {
	switch m.(type) {
	case *SessionEvent, *ContainerStarted, *ContainerStopped, *ContainerDestroyed, *ContainerRenamed:
		return true
	}
	return false
}

func (a *Actor) fold(ev any) {
	switch e := ev.(type) {
	case *SessionEvent:
		a.sessions[e.Agent] = SessionView{Agent: e.Agent, ContainerID: e.ContainerID, State: e.State, Reason: e.Reason, Since: e.At}
	case *ContainerStarted:
		a.containers[e.ID] = view(e.Container, cpapi.ContainerRunning, e.At, cpapi.ExitCodeUnknown)
	case *ContainerStopped:
		a.containers[e.ID] = view(e.Container, cpapi.ContainerStopped, e.At, e.ExitCode)
	case *ContainerDestroyed:
		delete(a.containers, e.ID)
	case *ContainerRenamed:
		if v, ok := a.containers[e.ID]; ok {
			v.Name = e.Name
			a.containers[e.ID] = v
		}
	}
}

func view(c Container, st cpapi.ContainerState, at time.Time, exit int) ContainerView {
	return ContainerView{ID: c.ID, Name: c.Name, Purpose: c.Purpose, Project: c.Project, Agent: c.Agent, State: st, Since: at, ExitCode: exit}
}

func (a *Actor) snapshot() *State {
	s := &State{
		Containers: make([]ContainerView, 0, len(a.containers)),
		Sessions:   make([]SessionView, 0, len(a.sessions)),
		Bus:        cpapi.BusStats{Subscribers: len(a.subscribers), Published: a.published, Dropped: a.dropped},
	}
	for _, v := range a.containers {
		s.Containers = append(s.Containers, v)
	}
	sort.Slice(s.Containers, func(i, j int) bool {
		if s.Containers[i].Name != s.Containers[j].Name {
			return s.Containers[i].Name < s.Containers[j].Name
		}
		return s.Containers[i].ID < s.Containers[j].ID
	})
	for _, v := range a.sessions {
		s.Sessions = append(s.Sessions, v)
	}
	sort.Slice(s.Sessions, func(i, j int) bool { return s.Sessions[i].Agent < s.Sessions[j].Agent })
	return s
}
