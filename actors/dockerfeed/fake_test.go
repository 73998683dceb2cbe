package dockerfeed_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/clawker/clawker-cp/actors/dockerfeed"
	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/actors/registry"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/testkit"
	"github.com/clawker/clawker-cp/pkg/testkit/actortest"
)

// fakeDocker is a scripted daemon: a set of containers for ContainerList and
// ContainerInspect, and one event channel per Events call.
type fakeDocker struct {
	mu         sync.Mutex
	containers map[string]container.Summary
	exitCodes  map[string]int
	startedAt  map[string]time.Time
	subs       []*fakeSub
	calls      []string
	// down makes every call fail as if the socket were missing.
	down bool
	// hangEvents makes Events block until its context ends.
	hangEvents bool
	// onList runs inside ContainerList, before the listing is taken.
	onList func()
}

type fakeSub struct {
	since string
	ctx   context.Context
	msgs  chan events.Message
	errs  chan error
}

var errDown = errors.New("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?")

func newFakeDocker() *fakeDocker {
	return &fakeDocker{containers: map[string]container.Summary{}, exitCodes: map[string]int{}, startedAt: map[string]time.Time{}}
}

func (f *fakeDocker) Events(ctx context.Context, o client.EventsListOptions) client.EventsResult {
	f.mu.Lock()
	f.calls = append(f.calls, "events since="+o.Since)
	down, hang := f.down, f.hangEvents
	f.mu.Unlock()
	errs := make(chan error, 1)
	if hang {
		<-ctx.Done()
		errs <- ctx.Err()
		return client.EventsResult{Messages: make(chan events.Message), Err: errs}
	}
	if down {
		errs <- errDown
		return client.EventsResult{Messages: make(chan events.Message), Err: errs}
	}
	s := &fakeSub{since: o.Since, ctx: ctx, msgs: make(chan events.Message, 64), errs: errs}
	f.mu.Lock()
	f.subs = append(f.subs, s)
	f.mu.Unlock()
	return client.EventsResult{Messages: s.msgs, Err: s.errs}
}

func (f *fakeDocker) ContainerList(ctx context.Context, o client.ContainerListOptions) (client.ContainerListResult, error) {
	f.mu.Lock()
	f.calls = append(f.calls, "list")
	hook := f.onList
	f.mu.Unlock()
	if hook != nil {
		hook()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return client.ContainerListResult{}, errDown
	}
	if !o.All {
		return client.ContainerListResult{}, fmt.Errorf("the feeder must list stopped containers too")
	}
	var out []container.Summary
	for _, c := range f.containers {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return client.ContainerListResult{Items: out}, nil
}

func (f *fakeDocker) ContainerInspect(ctx context.Context, id string, _ client.ContainerInspectOptions) (client.ContainerInspectResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "inspect "+id)
	if f.down {
		return client.ContainerInspectResult{}, errDown
	}
	c, ok := f.containers[id]
	if !ok {
		return client.ContainerInspectResult{}, fmt.Errorf("No such container: %s", id)
	}
	return client.ContainerInspectResult{Container: container.InspectResponse{
		ID: c.ID, State: &container.State{Status: c.State, ExitCode: f.exitCodes[id], StartedAt: f.startedAt[id].UTC().Format(time.RFC3339Nano)},
	}}, nil
}

func (f *fakeDocker) set(id, name string, st container.ContainerState, labels map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.containers[id] = container.Summary{ID: id, Names: []string{"/" + name}, State: st, Labels: labels}
}

func (f *fakeDocker) remove(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.containers, id)
}

func (f *fakeDocker) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
}

func (f *fakeDocker) callLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeDocker) sub(i int) *fakeSub {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i < len(f.subs) {
		return f.subs[i]
	}
	return nil
}

func (f *fakeDocker) subCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

// emit sends an event on subscription s.
func (s *fakeSub) emit(t *testing.T, m events.Message) {
	t.Helper()
	select {
	case s.msgs <- m:
	case <-time.After(5 * time.Second):
		t.Fatal("the feeder does not drain the event stream")
	}
}

// end ends subscription s with err, as a daemon going away does.
func (s *fakeSub) end(err error) { s.errs <- err }

func agentLabels(project, agent string) map[string]string {
	return map[string]string{
		dockerx.LabelManaged: "true", dockerx.LabelPurpose: dockerx.PurposeAgent,
		dockerx.LabelProject: project, dockerx.LabelAgent: agent,
	}
}

func otherLabels(purpose string) map[string]string {
	return map[string]string{dockerx.LabelManaged: "true", dockerx.LabelPurpose: purpose}
}

// event builds a container event as the daemon sends it: the name and the
// labels among the attributes.
func event(action events.Action, id, name string, at time.Time, labels map[string]string, extra ...string) events.Message {
	attrs := map[string]string{"name": name, "image": "test"}
	for k, v := range labels {
		attrs[k] = v
	}
	for i := 0; i+1 < len(extra); i += 2 {
		attrs[extra[i]] = extra[i+1]
	}
	return events.Message{
		Type: events.ContainerEventType, Action: action, Actor: events.Actor{ID: id, Attributes: attrs},
		Time: at.Unix(), TimeNano: at.UnixNano(),
	}
}

// ---- the rig ---------------------------------------------------------------

// recorder collects what the overseer forwards to its subscribers.
type recorder struct {
	mu  sync.Mutex
	evs []any
}

func (r *recorder) Receive(ctx actor.Context) {
	switch ctx.Message().(type) {
	case *overseer.ContainerStarted, *overseer.ContainerStopped, *overseer.ContainerDestroyed, *overseer.ContainerRenamed:
		r.mu.Lock()
		r.evs = append(r.evs, ctx.Message())
		r.mu.Unlock()
	}
}

func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.evs))
	for _, e := range r.evs {
		out = append(out, describe(e))
	}
	return out
}

// describe renders an event compactly: "started a", "stopped b 3 (r)", ...
func describe(e any) string {
	rec := func(b bool) string {
		if b {
			return " (r)"
		}
		return ""
	}
	switch e := e.(type) {
	case *overseer.ContainerStarted:
		return "started " + e.ID + rec(e.Reconciled)
	case *overseer.ContainerStopped:
		return "stopped " + e.ID + " " + strconv.Itoa(e.ExitCode) + rec(e.Reconciled)
	case *overseer.ContainerDestroyed:
		return "destroyed " + e.ID + rec(e.Reconciled)
	case *overseer.ContainerRenamed:
		return "renamed " + e.ID + " " + e.OldName + "->" + e.Name + rec(e.Reconciled)
	}
	return fmt.Sprintf("%T", e)
}

// fakeRegistry answers DeleteContainer and records it.
type fakeRegistry struct {
	mu      sync.Mutex
	deleted []string
}

func (r *fakeRegistry) Receive(ctx actor.Context) {
	if m, ok := ctx.Message().(*registry.DeleteContainer); ok {
		r.mu.Lock()
		r.deleted = append(r.deleted, m.ContainerID)
		r.mu.Unlock()
		ctx.Respond(&registry.DeleteResult{Removed: 1})
	}
}

func (r *fakeRegistry) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.deleted...)
}

// parent spawns the feeder and records its Ready.
type parent struct {
	props *actor.Props
	ready chan *supervise.Ready
	child *actor.PID
}

func (p *parent) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		p.child = ctx.Spawn(p.props)
	case *supervise.Ready:
		p.ready <- m
	}
}

type rig struct {
	sys      *actor.ActorSystem
	docker   *fakeDocker
	overseer *actor.PID
	feeder   *actor.PID
	rec      *recorder
	reg      *fakeRegistry
	logs     *observer.ObservedLogs
	ready    chan *supervise.Ready
}

type rigOpts struct {
	callTimeout time.Duration
	// seed is published to the overseer before the feeder starts.
	seed []any
}

func startRig(t *testing.T, d *fakeDocker, o rigOpts) *rig {
	t.Helper()
	sys := actortest.System(t)
	core, logs := observer.New(zapcore.DebugLevel)
	r := &rig{sys: sys, docker: d, rec: &recorder{}, reg: &fakeRegistry{}, logs: logs, ready: make(chan *supervise.Ready, 4)}
	r.overseer = sys.Root.Spawn(actor.PropsFromProducer(overseer.New()))
	recPID := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return r.rec }))
	regPID := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return r.reg }))
	sys.Root.Send(r.overseer, &overseer.Subscribe{Subscriber: recPID})
	for _, ev := range o.seed {
		sys.Root.Send(r.overseer, &overseer.Publish{Event: ev})
	}
	if o.callTimeout == 0 {
		o.callTimeout = 2 * time.Second
	}
	props := actor.PropsFromProducer(dockerfeed.New(dockerfeed.Config{
		Docker: d, Overseer: r.overseer, Registry: regPID, Log: zap.New(core),
		CallTimeout: o.callTimeout, BackoffMin: 5 * time.Millisecond, BackoffMax: 40 * time.Millisecond,
		RequestTimeout: time.Second,
	}))
	p := &parent{props: props, ready: r.ready}
	sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return p }))
	select {
	case m := <-r.ready:
		if m.Err != nil {
			t.Fatalf("the feeder reported Ready with %v", m.Err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the feeder did not report Ready")
	}
	r.feeder = p.child
	return r
}

func (r *rig) state(t *testing.T) *overseer.State {
	t.Helper()
	res, err := r.sys.Root.RequestFuture(r.overseer, &overseer.GetState{}, time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	return res.(*overseer.State)
}

// connectedRig starts a rig on an empty daemon and waits for its first
// listing: the first subscription is then live, nothing published yet.
func connectedRig(t *testing.T, d *fakeDocker) (*rig, *fakeSub) {
	t.Helper()
	r := startRig(t, d, rigOpts{})
	s := r.waitSub(t, 0)
	testkit.WaitForSeen(t, 5*time.Second, "the first listing", func() (bool, string) {
		return len(r.logged("dockerfeed_connected")) == 1, fmt.Sprint(d.callLog())
	})
	return r, s
}

func (r *rig) logged(event string) []observer.LoggedEntry {
	return r.logs.FilterField(zap.String("event", event)).All()
}

// waitEvents waits until the recorder saw exactly want (in order).
func (r *rig) waitEvents(t *testing.T, want ...string) {
	t.Helper()
	testkit.WaitForSeen(t, 5*time.Second, fmt.Sprint("events ", want), func() (bool, string) {
		got := r.rec.all()
		return fmt.Sprint(got) == fmt.Sprint(want), fmt.Sprint(got)
	})
}

// waitSub waits for the i-th subscription (0-based).
func (r *rig) waitSub(t *testing.T, i int) *fakeSub {
	t.Helper()
	var s *fakeSub
	testkit.WaitForSeen(t, 5*time.Second, fmt.Sprintf("subscription #%d", i+1), func() (bool, string) {
		s = r.docker.sub(i)
		return s != nil, fmt.Sprint(r.docker.callLog())
	})
	return s
}
