package watcher_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/clawker/clawker-cp/actors/root"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/actors/watcher"
	"github.com/clawker/clawker-cp/pkg/testkit"
	"github.com/clawker/clawker-cp/pkg/testkit/actortest"
)

// fakeDocker answers ContainerList from a script: each call takes the next
// answer (a count of running agents, or an error); the last one repeats.
type fakeDocker struct {
	mu     sync.Mutex
	script []answer
	calls  int
	opts   []client.ContainerListOptions
}

type answer struct {
	n   int
	err error
}

func agents(n int) answer { return answer{n: n} }

var down = answer{err: errors.New("Cannot connect to the Docker daemon at unix:///var/run/docker.sock")}

func (f *fakeDocker) ContainerList(_ context.Context, o client.ContainerListOptions) (client.ContainerListResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.opts = append(f.opts, o)
	a := f.script[min(f.calls, len(f.script)-1)]
	f.calls++
	if a.err != nil {
		return client.ContainerListResult{}, a.err
	}
	return client.ContainerListResult{Items: make([]container.Summary, a.n)}, nil
}

// then replaces the script from the next call on.
func (f *fakeDocker) then(script ...answer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.script = append(f.script[:min(f.calls, len(f.script))], script...)
}

func (f *fakeDocker) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// parent plays the root: it spawns the watcher and records DrainToZero.
type parent struct {
	props *actor.Props
	mu    sync.Mutex
	drain []time.Time
}

func (p *parent) Receive(ctx actor.Context) {
	switch ctx.Message().(type) {
	case *actor.Started:
		ctx.Spawn(p.props)
	case *root.DrainToZero:
		p.mu.Lock()
		p.drain = append(p.drain, time.Now())
		p.mu.Unlock()
	case *supervise.Ready:
	}
}

func (p *parent) drains() []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Time(nil), p.drain...)
}

type rig struct {
	p       *parent
	d       *fakeDocker
	logs    *observer.ObservedLogs
	started time.Time
}

func start(t *testing.T, cfg watcher.Config, script ...answer) *rig {
	t.Helper()
	sys := actortest.System(t)
	core, logs := observer.New(zapcore.DebugLevel)
	d := &fakeDocker{script: script}
	cfg.Docker, cfg.Log = d, zap.New(core)
	if cfg.Started.IsZero() {
		cfg.Started = time.Now()
	}
	p := &parent{props: actor.PropsFromProducer(watcher.New(cfg))}
	sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return p }))
	return &rig{p: p, d: d, logs: logs, started: cfg.Started}
}

func (r *rig) logged(event string) []observer.LoggedEntry {
	return r.logs.FilterField(zap.String("event", event)).All()
}

func (r *rig) waitPolls(t *testing.T, n int) {
	t.Helper()
	testkit.WaitForSeen(t, 5*time.Second, fmt.Sprintf("%d polls", n), func() (bool, string) {
		c := r.d.callCount()
		return c >= n, fmt.Sprint(c)
	})
}

func (r *rig) waitDrain(t *testing.T) time.Time {
	t.Helper()
	testkit.WaitForSeen(t, 5*time.Second, "DrainToZero", func() (bool, string) {
		return len(r.p.drains()) > 0, fmt.Sprintf("%d polls", r.d.callCount())
	})
	return r.p.drains()[0]
}

func cfg(poll, grace time.Duration, streak int) watcher.Config {
	return watcher.Config{Enable: true, PollInterval: poll, Grace: grace, ZeroStreak: streak}
}

// No agents: DrainToZero once the grace has passed and the streak is met,
// exactly once however long the watcher keeps running.
func TestDrainToZeroOnce(t *testing.T) {
	t.Parallel()
	r := start(t, cfg(10*time.Millisecond, 150*time.Millisecond, 2), agents(0))
	at := r.waitDrain(t)
	if since := at.Sub(r.started); since < 150*time.Millisecond {
		t.Errorf("DrainToZero %s after start, before the 150ms grace", since)
	}
	polls := r.d.callCount()
	time.Sleep(100 * time.Millisecond)
	if n := len(r.p.drains()); n != 1 {
		t.Errorf("DrainToZero sent %d times, want once", n)
	}
	if more := r.d.callCount() - polls; more > 1 {
		t.Errorf("%d more polls after the drain request", more)
	}
	l := r.logged("drain_to_zero")
	if len(l) != 1 {
		t.Fatalf("drain_to_zero lines %v, want one", l)
	}
	m := l[0].ContextMap()
	if m["agents"] != int64(0) || m["zero_streak"].(int64) < 2 || m["polls"].(int64) < 2 {
		t.Errorf("drain_to_zero fields %v", m)
	}
	r.d.mu.Lock()
	opts := r.d.opts[0]
	r.d.mu.Unlock()
	if opts.All || !opts.Filters["label"]["dev.clawker.purpose=agent"] || !opts.Filters["label"]["dev.clawker.managed=true"] {
		t.Errorf("list options %+v: want running containers labelled purpose=agent and managed=true", opts)
	}
}

// The streak must be consecutive: a poll that finds agents resets it.
func TestStreakResetByAgents(t *testing.T) {
	t.Parallel()
	r := start(t, cfg(10*time.Millisecond, 0, 3), agents(0), agents(0), agents(1), agents(0), agents(0), agents(2))
	r.waitPolls(t, 12)
	if n := len(r.p.drains()); n != 0 {
		t.Fatalf("drained with agents running (%d)", n)
	}
	r.d.then(agents(0))
	r.waitDrain(t)
}

// A failed poll is not a zero: it resets the streak and is logged, and
// Docker being down never drains the CP.
func TestFailedPollResetsStreak(t *testing.T) {
	t.Parallel()
	// Zero, failure, zero, failure...: never two zeros in a row.
	r := start(t, cfg(10*time.Millisecond, 0, 2), agents(0), down, agents(0), down, agents(0), down, agents(0), down)
	r.waitPolls(t, 8)
	if n := len(r.p.drains()); n != 0 {
		t.Fatalf("drained across failed polls (%d)", n)
	}
	// Docker down for good: still no drain.
	r.d.then(down)
	r.waitPolls(t, 15)
	if n := len(r.p.drains()); n != 0 {
		t.Fatalf("drained while Docker was down (%d)", n)
	}
	u := r.logged("watcher_unavailable")
	if len(u) < 4 {
		t.Fatalf("%d watcher_unavailable lines, want one per failed poll", len(u))
	}
	if e, _ := u[0].ContextMap()["error"].(string); e == "" {
		t.Errorf("watcher_unavailable without the reason: %v", u[0].ContextMap())
	}
	r.d.then(agents(0))
	r.waitDrain(t)
	if len(r.logged("watcher_recovered")) == 0 {
		t.Error("no watcher_recovered line once Docker answered again")
	}
}

// The grace counts from the CP's start, not the watcher's.
func TestGraceCountsFromCPStart(t *testing.T) {
	t.Parallel()
	c := cfg(10*time.Millisecond, time.Hour, 1)
	c.Started = time.Now().Add(-2 * time.Hour)
	r := start(t, c, agents(0))
	r.waitDrain(t)
}

// With agents running through the grace, the CP stays; it drains once the
// last one is gone.
func TestDrainsWhenLastAgentGoes(t *testing.T) {
	t.Parallel()
	r := start(t, cfg(10*time.Millisecond, 50*time.Millisecond, 2), agents(1))
	time.Sleep(120 * time.Millisecond)
	if n := len(r.p.drains()); n != 0 {
		t.Fatalf("drained with an agent running (%d)", n)
	}
	r.d.then(agents(0))
	r.waitDrain(t)
}

func TestDisabled(t *testing.T) {
	t.Parallel()
	c := cfg(5*time.Millisecond, 0, 1)
	c.Enable = false
	r := start(t, c, agents(0))
	time.Sleep(60 * time.Millisecond)
	if n := r.d.callCount(); n != 0 {
		t.Errorf("a disabled watcher polled %d times", n)
	}
	if n := len(r.p.drains()); n != 0 {
		t.Errorf("a disabled watcher drained")
	}
	if len(r.logged("watcher_disabled")) != 1 {
		t.Error("no watcher_disabled line")
	}
}

// A list call that hangs is cut by CallTimeout and counts as a failure;
// ticks meanwhile do not pile up calls.
func TestHangingPollIsBounded(t *testing.T) {
	t.Parallel()
	h := &hangingDocker{}
	sys := actortest.System(t)
	core, logs := observer.New(zapcore.DebugLevel)
	c := cfg(5*time.Millisecond, 0, 1)
	c.Docker, c.Log, c.CallTimeout = h, zap.New(core), 60*time.Millisecond
	p := &parent{props: actor.PropsFromProducer(watcher.New(c))}
	sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return p }))
	testkit.WaitForSeen(t, 5*time.Second, "a timed-out poll", func() (bool, string) {
		return len(logs.FilterField(zap.String("event", "watcher_unavailable")).All()) > 0, ""
	})
	if n := h.max(); n != 1 {
		t.Errorf("%d list calls in flight at once, want 1", n)
	}
	if len(p.drains()) != 0 {
		t.Error("drained on a timed-out poll")
	}
}

type hangingDocker struct {
	mu               sync.Mutex
	inflight, maxInf int
}

func (h *hangingDocker) ContainerList(ctx context.Context, _ client.ContainerListOptions) (client.ContainerListResult, error) {
	h.mu.Lock()
	h.inflight++
	h.maxInf = max(h.maxInf, h.inflight)
	h.mu.Unlock()
	<-ctx.Done()
	h.mu.Lock()
	h.inflight--
	h.mu.Unlock()
	return client.ContainerListResult{}, ctx.Err()
}

func (h *hangingDocker) max() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.maxInf
}
