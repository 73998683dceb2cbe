package overseer_test

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/testkit"
	"github.com/clawker/clawker-cp/pkg/testkit/actortest"
)

func getState(t *testing.T, sys *actor.ActorSystem, pid *actor.PID) *overseer.State {
	t.Helper()
	res, err := sys.Root.RequestFuture(pid, &overseer.GetState{}, time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	return res.(*overseer.State)
}

func agent(id, name string) overseer.Container {
	return overseer.Container{ID: id, Name: name, Purpose: "agent", Project: "p", Agent: name}
}

func TestFoldsContainerLifecycle(t *testing.T) {
	t.Parallel()
	sys := actortest.System(t)
	o := sys.Root.Spawn(actor.PropsFromProducer(overseer.New()))
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	pub := func(ev any) { sys.Root.Send(o, &overseer.Publish{Event: ev}) }

	pub(&overseer.ContainerStarted{Container: agent("b", "bee"), At: t0})
	pub(&overseer.ContainerStarted{Container: agent("a", "ant"), At: t0})
	pub(&overseer.ContainerStarted{Container: agent("c", "cat"), At: t0})
	pub(&overseer.ContainerStopped{Container: agent("a", "ant"), ExitCode: 137, At: t0.Add(time.Second)})
	pub(&overseer.ContainerRenamed{Container: agent("b", "bumblebee"), OldName: "bee", At: t0.Add(2 * time.Second)})
	pub(&overseer.ContainerDestroyed{Container: agent("c", "cat"), At: t0.Add(3 * time.Second)})
	pub(&overseer.ContainerRenamed{Container: agent("zz", "ghost"), OldName: "x", At: t0}) // unknown: ignored
	pub(&overseer.SessionEvent{Agent: "p.ant", ContainerID: "a", State: overseer.SessionConnected, At: t0})

	st := getState(t, sys, o)
	want := []cpapi.ContainerView{
		{ID: "a", Name: "ant", Purpose: "agent", Project: "p", Agent: "ant", State: cpapi.ContainerStopped, Since: t0.Add(time.Second), ExitCode: 137},
		{ID: "b", Name: "bumblebee", Purpose: "agent", Project: "p", Agent: "bee", State: cpapi.ContainerRunning, Since: t0, ExitCode: cpapi.ExitCodeUnknown},
	}
	if len(st.Containers) != len(want) {
		t.Fatalf("containers %+v, want %+v", st.Containers, want)
	}
	for i := range want {
		if st.Containers[i] != want[i] {
			t.Errorf("container %d: %+v, want %+v", i, st.Containers[i], want[i])
		}
	}
	if len(st.Sessions) != 1 || st.Sessions[0].State != overseer.SessionConnected {
		t.Errorf("sessions %+v", st.Sessions)
	}
	if st.Bus.Published != 8 {
		t.Errorf("published %d, want 8", st.Bus.Published)
	}

	// The JSON shape /debug/state serves.
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var back cpapi.WorldState
	if err := json.Unmarshal(b, &back); err != nil || len(back.Containers) != 2 || back.Containers[0].ExitCode != 137 {
		t.Errorf("round trip: %v %s", err, b)
	}
}

// GetState answers a deep copy: changing it changes nothing in the overseer.
func TestStateIsACopy(t *testing.T) {
	t.Parallel()
	sys := actortest.System(t)
	o := sys.Root.Spawn(actor.PropsFromProducer(overseer.New()))
	sys.Root.Send(o, &overseer.Publish{Event: &overseer.ContainerStarted{Container: agent("a", "ant"), At: time.Now()}})
	s1 := getState(t, sys, o)
	s1.Containers[0].Name = "changed"
	s1.Containers = append(s1.Containers, cpapi.ContainerView{ID: "x"})
	s2 := getState(t, sys, o)
	if len(s2.Containers) != 1 || s2.Containers[0].Name != "ant" {
		t.Errorf("the overseer's state changed through a copy: %+v", s2.Containers)
	}
}

type collector struct {
	mu  sync.Mutex
	got []any
}

func (c *collector) Receive(ctx actor.Context) {
	if _, ok := ctx.Message().(*overseer.ContainerStarted); ok {
		c.mu.Lock()
		c.got = append(c.got, ctx.Message())
		c.mu.Unlock()
	}
}

func (c *collector) n() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.got)
}

// A subscriber that stops is forgotten; publishing goes on for the others.
func TestGoneSubscriberIsForgotten(t *testing.T) {
	t.Parallel()
	sys := actortest.System(t)
	o := sys.Root.Spawn(actor.PropsFromProducer(overseer.New()))
	live, gone := &collector{}, &collector{}
	livePID := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return live }))
	gonePID := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return gone }))
	sys.Root.Send(o, &overseer.Subscribe{Subscriber: livePID})
	sys.Root.Send(o, &overseer.Subscribe{Subscriber: gonePID})
	if s := getState(t, sys, o); s.Bus.Subscribers != 2 {
		t.Fatalf("subscribers %d, want 2", s.Bus.Subscribers)
	}
	if err := sys.Root.StopFuture(gonePID).Wait(); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "the stopped subscriber to be forgotten", func() bool { return getState(t, sys, o).Bus.Subscribers == 1 })
	sys.Root.Send(o, &overseer.Publish{Event: &overseer.ContainerStarted{Container: agent("a", "ant"), At: time.Now()}})
	testkit.WaitFor(t, 5*time.Second, "the live subscriber to get the event", func() bool { return live.n() == 1 })
}

// An event that reached a gone subscriber as a dead letter (sent before the
// overseer learnt it was gone) is counted as dropped and removes the
// subscriber; dead letters of other messages or PIDs are not counted.
func TestDeadLetterCountedAsDropped(t *testing.T) {
	t.Parallel()
	sys := actortest.System(t)
	o := sys.Root.Spawn(actor.PropsFromProducer(overseer.New()))
	sub := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return &collector{} }))
	sys.Root.Send(o, &overseer.Subscribe{Subscriber: sub})
	stranger := actor.NewPID(sys.Address(), "nobody")
	ev := &overseer.ContainerStarted{Container: agent("a", "ant")}
	// What the dead-letter process publishes for an undeliverable message.
	sys.EventStream.Publish(&actor.DeadLetterEvent{PID: stranger, Message: ev}) // not a subscriber
	sys.EventStream.Publish(&actor.DeadLetterEvent{PID: sub, Message: "hello"}) // not an event of ours
	if s := getState(t, sys, o); s.Bus.Dropped != 0 || s.Bus.Subscribers != 1 {
		t.Fatalf("bus %+v after unrelated dead letters", s.Bus)
	}
	sys.EventStream.Publish(&actor.DeadLetterEvent{PID: sub, Message: ev})
	testkit.WaitFor(t, 5*time.Second, "the drop to be counted", func() bool {
		s := getState(t, sys, o)
		return s.Bus.Dropped == 1 && s.Bus.Subscribers == 0
	})
}

// A restarted overseer stops listening for dead letters of its previous
// incarnation (no double counting).
func TestDeadLetterSubscriptionReleasedOnStop(t *testing.T) {
	t.Parallel()
	sys := actortest.System(t)
	before := sys.EventStream.Length()
	o := sys.Root.Spawn(actor.PropsFromProducer(overseer.New()))
	getState(t, sys, o)
	if sys.EventStream.Length() != before+1 {
		t.Fatalf("event stream subscriptions %d, want %d", sys.EventStream.Length(), before+1)
	}
	if err := sys.Root.StopFuture(o).Wait(); err != nil {
		t.Fatal(err)
	}
	if sys.EventStream.Length() != before {
		t.Errorf("event stream subscriptions %d after stop, want %d", sys.EventStream.Length(), before)
	}
}
