package root_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/clawker/clawker-cp/actors/root"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/testkit"
	"github.com/clawker/clawker-cp/pkg/testkit/actortest"
)

// ---- helpers ---------------------------------------------------------------

// events is the shared, ordered record of what the fake children did.
type events struct {
	mu   sync.Mutex
	list []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	e.list = append(e.list, s)
	e.mu.Unlock()
}

func (e *events) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.list...)
}

func (e *events) has(s string) bool {
	for _, x := range e.all() {
		if x == s {
			return true
		}
	}
	return false
}

// since returns the events recorded after the first occurrence of mark.
func (e *events) since(mark string) []string {
	all := e.all()
	for i, x := range all {
		if x == mark {
			return all[i+1:]
		}
	}
	return nil
}

// childSpec configures one fake subsystem.
type childSpec struct {
	name       string
	readyDelay time.Duration // report Ready this long after Started (off the mailbox)
	readyErr   error         // Ready carries this error on the first start
	// readyErrAfterRestart is carried by the Ready of every later start.
	readyErrAfterRestart error
	neverReady           bool
	stepDelay            time.Duration     // answer DrainStep this long after it arrived
	stepGate             chan struct{}     // answer DrainStep once this is closed
	silent               map[string]bool   // steps never answered
	outcome              map[string]string // outcome per step; done by default
	incarnations         *atomic.Int32     // counts producer runs; set by the harness
	ev                   *events           // set by the harness
}

type readyNow struct{}

type echo struct{}
type echoReply struct{ Incarnation int32 }

type boom struct{ msg string }

type fakeChild struct {
	s           childSpec
	incarnation int32
}

func (c childSpec) producer() actor.Producer {
	return func() actor.Actor { return &fakeChild{s: c, incarnation: c.incarnations.Add(1)} }
}

func (f *fakeChild) ready(ctx actor.Context) {
	f.s.ev.add("ready:" + f.s.name)
	err := f.s.readyErr
	if f.incarnation > 1 {
		err = f.s.readyErrAfterRestart
	}
	supervise.ReportReady(ctx, err)
}

func (f *fakeChild) Receive(ctx actor.Context) {
	name := f.s.name
	switch m := ctx.Message().(type) {
	case *actor.Started:
		f.s.ev.add("start:" + name)
		switch {
		case f.s.neverReady:
		case f.s.readyDelay > 0 && f.incarnation == 1:
			self, sys := ctx.Self(), ctx.ActorSystem()
			time.AfterFunc(f.s.readyDelay, func() { sys.Root.Send(self, &readyNow{}) })
		default:
			f.ready(ctx)
		}
	case *readyNow:
		f.ready(ctx)
	case *actor.Stopping:
		f.s.ev.add("stop:" + name)
	case *supervise.DrainStep:
		step := m.Step
		f.s.ev.add("step-begin:" + step)
		if f.s.silent[step] {
			return
		}
		outcome := supervise.OutcomeDone
		if o, ok := f.s.outcome[step]; ok {
			outcome = o
		}
		answer := &supervise.StepDone{Step: step, Outcome: outcome, Detail: name + " did " + step}
		if f.s.stepDelay == 0 && f.s.stepGate == nil {
			f.s.ev.add("step-end:" + step)
			ctx.Respond(answer)
			return
		}
		// Answer later, off the mailbox, as a real owner doing I/O would.
		sender, sys := ctx.Sender(), ctx.ActorSystem()
		delay, gate, ev := f.s.stepDelay, f.s.stepGate, f.s.ev
		go func() {
			if gate != nil {
				<-gate
			}
			time.Sleep(delay)
			ev.add("step-end:" + step)
			sys.Root.Send(sender, answer)
		}()
	case *echo:
		ctx.Respond(&echoReply{Incarnation: f.incarnation})
	case *boom:
		panic(m.msg)
	}
}

// harness runs one root with fake children in its own actor system.
type harness struct {
	t         testing.TB
	sys       *actor.ActorSystem
	tree      *supervise.Tree
	logs      *observer.ObservedLogs
	ev        *events
	pid       *actor.PID
	exits     chan int
	exitCount atomic.Int32
	readyN    atomic.Int32
	drainingN atomic.Int32
	ready     chan map[string]*actor.PID

	mu        sync.Mutex
	restarted []string
}

func newHarness(t testing.TB, tweak func(*root.Config), children ...childSpec) *harness {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	h := &harness{
		t:     t,
		sys:   actortest.Quiet(),
		tree:  supervise.NewTree(),
		logs:  logs,
		ev:    &events{},
		exits: make(chan int, 8),
		ready: make(chan map[string]*actor.PID, 1),
	}
	in := supervise.Intensity{Max: 2, Window: time.Minute}
	var kids []supervise.Spec
	var steps []cpapi.DrainStep
	for _, c := range children {
		c.ev = h.ev
		c.incarnations = &atomic.Int32{}
		kids = append(kids, supervise.Spec{Name: c.name, Producer: c.producer()})
		steps = append(steps, cpapi.DrainStep{Name: "step_" + c.name, Owner: c.name})
	}
	cfg := root.Config{
		Log:          zap.New(core),
		Tree:         h.tree,
		Intensity:    in,
		StartTimeout: 5 * time.Second,
		StepTimeout:  5 * time.Second,
		Children:     kids,
		Steps:        steps,
		OnReady: func(ctx actor.Context, pids map[string]*actor.PID) {
			h.readyN.Add(1)
			h.ev.add("onready")
			cp := map[string]*actor.PID{}
			for k, v := range pids {
				cp[k] = v
			}
			select {
			case h.ready <- cp:
			default:
			}
		},
		OnRestarted: func(ctx actor.Context, name string, _ map[string]*actor.PID) {
			h.mu.Lock()
			h.restarted = append(h.restarted, name)
			h.mu.Unlock()
		},
		OnDraining: func(actor.Context, map[string]*actor.PID) {
			h.drainingN.Add(1)
			h.ev.add("ondraining")
		},
		Exit: func(code int) {
			h.exitCount.Add(1)
			h.ev.add(fmt.Sprintf("exit:%d", code))
			h.exits <- code
		},
	}
	if tweak != nil {
		tweak(&cfg)
	}
	// Each fake owns the steps the (tweaked) table gives it, as a real
	// owner's spec declares them.
	for i, k := range cfg.Children {
		for _, s := range cfg.Steps {
			if s.Owner == k.Name {
				cfg.Children[i].Steps = append(cfg.Children[i].Steps, s.Name)
			}
		}
	}
	pid, err := h.sys.Root.SpawnNamed(h.tree.Props(root.New(cfg), in), root.Name)
	if err != nil {
		t.Fatal(err)
	}
	h.pid = pid
	t.Cleanup(func() {
		_ = h.sys.Root.StopFuture(pid).Wait()
		h.sys.Shutdown()
	})
	return h
}

func (h *harness) waitReady() map[string]*actor.PID {
	h.t.Helper()
	select {
	case pids := <-h.ready:
		return pids
	case <-time.After(10 * time.Second):
		h.t.Fatalf("the root did not become ready; events %v", h.ev.all())
		return nil
	}
}

func (h *harness) waitExit() int {
	h.t.Helper()
	select {
	case code := <-h.exits:
		return code
	case <-time.After(10 * time.Second):
		h.t.Fatalf("Exit was not called; events %v", h.ev.all())
		return -1
	}
}

func (h *harness) entries(event string) []observer.LoggedEntry {
	return h.logs.FilterField(zap.String("event", event)).All()
}

// drainSteps returns the step, outcome and duration_ms of every drain_step
// log entry, in order.
type stepLog struct {
	step, outcome, owner, detail string
	index                        int64
	ms                           float64
}

func (h *harness) drainSteps() []stepLog {
	h.t.Helper()
	var out []stepLog
	for _, e := range h.entries("drain_step") {
		m := e.ContextMap()
		d, ok := m["duration_ms"].(float64)
		if !ok {
			h.t.Errorf("drain_step entry without a float duration_ms: %v", m)
		}
		s, _ := m["step"].(string)
		o, _ := m["outcome"].(string)
		ow, _ := m["owner"].(string)
		det, _ := m["detail"].(string)
		idx, _ := m["index"].(int64)
		if s == "" || o == "" {
			h.t.Errorf("drain_step entry without step/outcome: %v", m)
		}
		out = append(out, stepLog{step: s, outcome: o, owner: ow, detail: det, index: idx, ms: d})
	}
	return out
}

func eq(a, b []string) bool { return strings.Join(a, "|") == strings.Join(b, "|") }

// ---- start-up --------------------------------------------------------------

func TestChildrenStartStrictlyInOrder(t *testing.T) {
	t.Parallel()
	// Each child reports Ready a little later, off its mailbox: a root that
	// did not wait would start the next one in between.
	d := 15 * time.Millisecond
	h := newHarness(t, nil,
		childSpec{name: "alpha", readyDelay: d},
		childSpec{name: "bravo", readyDelay: d},
		childSpec{name: "charlie", readyDelay: d},
	)
	pids := h.waitReady()
	want := []string{"start:alpha", "ready:alpha", "start:bravo", "ready:bravo", "start:charlie", "ready:charlie", "onready"}
	if got := h.ev.all(); !eq(got, want) {
		t.Errorf("events = %v\nwant     %v", got, want)
	}
	if len(pids) != 3 || pids["bravo"] == nil || pids["bravo"].Id != root.Name+"/bravo" {
		t.Errorf("OnReady pids = %v", pids)
	}
	// OnReady runs once; a later message does not run it again.
	res, err := h.sys.Root.RequestFuture(pids["alpha"], &echo{}, 2*time.Second).Result()
	if err != nil || res.(*echoReply).Incarnation != 1 {
		t.Fatalf("echo: %v %v", res, err)
	}
	if n := h.readyN.Load(); n != 1 {
		t.Errorf("OnReady called %d times", n)
	}
	var started []string
	for _, e := range h.entries("subsystem_started") {
		started = append(started, e.ContextMap()["subsystem"].(string))
	}
	if !eq(started, []string{"alpha", "bravo", "charlie"}) {
		t.Errorf("subsystem_started logged for %v", started)
	}
	// The ready line is written just after OnReady returns.
	testkit.WaitFor(t, 5*time.Second, "the ready log entry", func() bool { return len(h.entries("ready")) >= 1 })
	if n := len(h.entries("ready")); n != 1 {
		t.Errorf("%d ready log entries", n)
	}
	// The tree lists the children in start order under the root.
	testkit.WaitFor(t, 5*time.Second, "the tree to show three running children", func() bool {
		snap, ok := h.tree.Snapshot(root.Name)
		if !ok || len(snap.Children) != 3 {
			return false
		}
		for _, c := range snap.Children {
			if c.State != cpapi.ActorRunning {
				return false
			}
		}
		return snap.Children[0].Name == "alpha" && snap.Children[1].Name == "bravo" && snap.Children[2].Name == "charlie"
	})
	if h.exitCount.Load() != 0 {
		t.Error("Exit called without a drain")
	}
}

func TestReadyErrorBeforeReadyExits1WithoutDrain(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil,
		childSpec{name: "alpha"},
		childSpec{name: "bravo", readyErr: errors.New("port 7443 in use")},
		childSpec{name: "charlie"},
	)
	if code := h.waitExit(); code != root.ExitStartupFailure {
		t.Fatalf("exit code %d, want %d", code, root.ExitStartupFailure)
	}
	want := []string{"start:alpha", "ready:alpha", "start:bravo", "ready:bravo", "stop:bravo", "stop:alpha", "exit:1"}
	if got := h.ev.all(); !eq(got, want) {
		t.Errorf("events = %v\nwant     %v", got, want)
	}
	if s := h.drainSteps(); len(s) != 0 {
		t.Errorf("drain steps ran before ready: %+v", s)
	}
	if n := len(h.entries("drain_begin")); n != 0 {
		t.Errorf("%d drain_begin entries", n)
	}
	fails := h.entries("startup_failed")
	if len(fails) != 1 || !strings.Contains(fails[0].ContextMap()["error"].(string), "bravo: port 7443 in use") {
		t.Errorf("startup_failed entries: %v", fails)
	}
	if h.readyN.Load() != 0 || h.drainingN.Load() != 0 {
		t.Errorf("OnReady %d / OnDraining %d calls on a failed start", h.readyN.Load(), h.drainingN.Load())
	}
	if h.exitCount.Load() != 1 {
		t.Errorf("Exit called %d times", h.exitCount.Load())
	}
	// Every child is gone from the tree; only the root remains.
	testkit.WaitFor(t, 5*time.Second, "children removed from the tree", func() bool {
		return eq(h.tree.Names(), []string{root.Name})
	})
}

func TestStartTimeoutExits1(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(c *root.Config) { c.StartTimeout = 100 * time.Millisecond },
		childSpec{name: "alpha"},
		childSpec{name: "bravo", neverReady: true},
		childSpec{name: "charlie"},
	)
	begin := time.Now()
	if code := h.waitExit(); code != root.ExitStartupFailure {
		t.Fatalf("exit code %d, want 1", code)
	}
	if el := time.Since(begin); el < 100*time.Millisecond {
		t.Errorf("exited after %s, before the start timeout", el)
	}
	fails := h.entries("startup_failed")
	if len(fails) != 1 || !strings.Contains(fails[0].ContextMap()["error"].(string), "bravo did not finish starting within 100ms") {
		t.Errorf("startup_failed entries: %v", fails)
	}
	if got := h.ev.all(); !eq(got, []string{"start:alpha", "ready:alpha", "start:bravo", "stop:bravo", "stop:alpha", "exit:1"}) {
		t.Errorf("events = %v", got)
	}
	if len(h.drainSteps()) != 0 {
		t.Error("drain steps ran after a start timeout")
	}
}

func TestDrainBeforeReadyAbortsStartup(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil,
		childSpec{name: "alpha"},
		childSpec{name: "bravo", neverReady: true},
		childSpec{name: "charlie"},
	)
	testkit.WaitFor(t, 5*time.Second, "bravo to start", func() bool { return h.ev.has("start:bravo") })
	h.sys.Root.Send(h.pid, &root.Drain{Reason: "signal", ExitCode: root.ExitClean})
	if code := h.waitExit(); code != root.ExitClean {
		t.Fatalf("exit code %d, want 0", code)
	}
	if len(h.drainSteps()) != 0 || len(h.entries("drain_begin")) != 0 {
		t.Error("a drain ran before ready")
	}
	ab := h.entries("startup_aborted")
	if len(ab) != 1 || ab[0].ContextMap()["reason"] != "signal" {
		t.Errorf("startup_aborted entries: %v", ab)
	}
	if got := h.ev.all(); !eq(got, []string{"start:alpha", "ready:alpha", "start:bravo", "stop:bravo", "stop:alpha", "exit:0"}) {
		t.Errorf("events = %v", got)
	}
	if h.readyN.Load() != 0 {
		t.Error("OnReady called")
	}
}

// ---- drain -----------------------------------------------------------------

func TestDrainRunsStepsInOrderOneAtATime(t *testing.T) {
	t.Parallel()
	delay := 40 * time.Millisecond
	h := newHarness(t, func(c *root.Config) {
		// Owners are visited out of spawn order, and alpha twice.
		c.Steps = []cpapi.DrainStep{
			{Name: "one", Owner: "alpha"},
			{Name: "two", Owner: "charlie"},
			{Name: "three", Owner: "bravo"},
			{Name: "four", Owner: "alpha"},
		}
	},
		childSpec{name: "alpha", stepDelay: delay},
		childSpec{name: "bravo", outcome: map[string]string{"three": supervise.OutcomeNothing}},
		childSpec{name: "charlie", stepDelay: delay},
	)
	h.waitReady()
	h.sys.Root.Send(h.pid, &root.Drain{Reason: "signal", ExitCode: root.ExitClean})
	if code := h.waitExit(); code != root.ExitClean {
		t.Fatalf("exit code %d, want 0", code)
	}
	want := []string{
		"ondraining",
		"step-begin:one", "step-end:one",
		"step-begin:two", "step-end:two",
		"step-begin:three", "step-end:three",
		"step-begin:four", "step-end:four",
		"stop:charlie", "stop:bravo", "stop:alpha",
		"exit:0",
	}
	if got := h.ev.since("onready"); !eq(got, want) {
		t.Errorf("events after ready = %v\nwant                 %v", got, want)
	}
	steps := h.drainSteps()
	wantSteps := []struct {
		step, owner, outcome string
		slow                 bool
	}{
		{"one", "alpha", supervise.OutcomeDone, true},
		{"two", "charlie", supervise.OutcomeDone, true},
		{"three", "bravo", supervise.OutcomeNothing, false},
		{"four", "alpha", supervise.OutcomeDone, true},
	}
	if len(steps) != len(wantSteps) {
		t.Fatalf("%d drain_step entries, want %d: %+v", len(steps), len(wantSteps), steps)
	}
	for i, w := range wantSteps {
		s := steps[i]
		if s.step != w.step || s.owner != w.owner || s.outcome != w.outcome || s.index != int64(i+1) {
			t.Errorf("entry %d = %+v, want %+v", i, s, w)
		}
		if s.ms < 0 || (w.slow && s.ms < float64(delay.Milliseconds())) {
			t.Errorf("entry %d duration_ms = %v (answer delayed %s)", i, s.ms, delay)
		}
		if s.detail != w.owner+" did "+w.step {
			t.Errorf("entry %d detail = %q", i, s.detail)
		}
	}
	var stopped []string
	for _, e := range h.entries("subsystem_stopped") {
		stopped = append(stopped, e.ContextMap()["subsystem"].(string))
	}
	if !eq(stopped, []string{"charlie", "bravo", "alpha"}) {
		t.Errorf("subsystem_stopped order %v", stopped)
	}
	ex := h.entries("exit")
	if len(ex) != 1 || ex[0].ContextMap()["exit_code"] != int64(0) || ex[0].ContextMap()["drain_ms"] == nil {
		t.Errorf("exit entries: %v", ex)
	}
	if h.exitCount.Load() != 1 || h.drainingN.Load() != 1 {
		t.Errorf("Exit called %d times, OnDraining %d times", h.exitCount.Load(), h.drainingN.Load())
	}
	if eq(h.tree.Names(), []string{root.Name}) == false {
		t.Errorf("tree after the drain: %v", h.tree.Names())
	}
}

func TestDrainStepTimeoutContinuesChain(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(c *root.Config) {
		c.StepTimeout = 100 * time.Millisecond
		c.Steps = []cpapi.DrainStep{
			{Name: cpapi.StepFirewallQueueClose, Owner: "alpha"},
			{Name: cpapi.StepGRPCStop, Owner: "bravo"},
			{Name: cpapi.StepNetloggerStop, Owner: "ghost"},
			{Name: cpapi.StepEBPFFlush, Owner: "charlie"},
		}
	},
		childSpec{name: "alpha"},
		childSpec{name: "bravo", silent: map[string]bool{cpapi.StepGRPCStop: true}},
		childSpec{name: "charlie"},
	)
	h.waitReady()
	h.sys.Root.Send(h.pid, &root.Drain{Reason: "signal", ExitCode: root.ExitClean})
	if code := h.waitExit(); code != root.ExitClean {
		t.Fatalf("exit code %d, want 0", code)
	}
	steps := h.drainSteps()
	var got []string
	for _, s := range steps {
		got = append(got, s.step+"="+s.outcome)
	}
	want := []string{
		"firewall_queue_close=done",
		"grpc_stop=timeout",
		"netlogger_stop=failed",
		"ebpf_flush=done",
	}
	if !eq(got, want) {
		t.Fatalf("steps = %v, want %v", got, want)
	}
	if steps[1].ms < 100 || steps[1].detail != "no answer within 100ms" {
		t.Errorf("timed-out step: %+v", steps[1])
	}
	if steps[2].detail != "no actor named ghost" {
		t.Errorf("ownerless step: %+v", steps[2])
	}
	if !h.ev.has("step-begin:" + cpapi.StepEBPFFlush) {
		t.Error("the eBPF flush step never reached its owner")
	}
	// The timeout and failure entries are warnings, the others info.
	for _, e := range h.entries("drain_step") {
		o := e.ContextMap()["outcome"]
		warn := o == supervise.OutcomeTimeout || o == supervise.OutcomeFailed
		if warn != (e.Level == zapcore.WarnLevel) {
			t.Errorf("outcome %v logged at %v", o, e.Level)
		}
	}
}

func TestDrainToZeroAndSecondDrainIgnored(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	h := newHarness(t, nil,
		childSpec{name: "alpha", stepGate: gate},
		childSpec{name: "bravo"},
	)
	h.waitReady()
	h.sys.Root.Send(h.pid, &root.DrainToZero{})
	testkit.WaitFor(t, 5*time.Second, "the first step to be under way", func() bool { return h.ev.has("step-begin:step_alpha") })
	// A second request while the first step is held open.
	h.sys.Root.Send(h.pid, &root.Drain{Reason: "signal", ExitCode: root.ExitEscalated})
	testkit.WaitFor(t, 5*time.Second, "drain_already_running", func() bool { return len(h.entries("drain_already_running")) == 1 })
	close(gate)
	if code := h.waitExit(); code != root.ExitClean {
		t.Fatalf("exit code %d, want 0", code)
	}
	begin := h.entries("drain_begin")
	if len(begin) != 1 || begin[0].ContextMap()["reason"] != "drain_to_zero" || begin[0].ContextMap()["exit_code"] != int64(0) {
		t.Errorf("drain_begin entries: %v", begin)
	}
	if s := h.drainSteps(); len(s) != 2 {
		t.Errorf("%d steps ran, want 2 (the chain ran once): %+v", len(s), s)
	}
	// Yet another request after the exit: logged and ignored, Exit not called again.
	h.sys.Root.Send(h.pid, &root.DrainToZero{})
	testkit.WaitFor(t, 5*time.Second, "the late request to be seen", func() bool { return len(h.entries("drain_already_running")) == 2 })
	if n := h.exitCount.Load(); n != 1 {
		t.Errorf("Exit called %d times", n)
	}
}

// ---- supervision -----------------------------------------------------------

func TestPanicAfterReadyRestartsChild(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil,
		childSpec{name: "alpha"},
		childSpec{name: "bravo"},
	)
	pids := h.waitReady()
	bravo := pids["bravo"]
	h.sys.Root.Send(bravo, &boom{msg: "bravo lost its socket"})
	testkit.WaitFor(t, 5*time.Second, "bravo restarted once", func() bool { return h.tree.Restarts(bravo) == 1 })
	res, err := h.sys.Root.RequestFuture(bravo, &echo{}, 2*time.Second).Result()
	if err != nil {
		t.Fatalf("bravo after its restart: %v", err)
	}
	if r := res.(*echoReply); r.Incarnation != 2 {
		t.Errorf("answered by incarnation %d, want 2", r.Incarnation)
	}
	snap, _ := h.tree.Snapshot(root.Name)
	var node cpapi.ActorNode
	for _, c := range snap.Children {
		if c.Name == "bravo" {
			node = c
		}
	}
	if node.Restarts != 1 || node.LastError != "bravo lost its socket" {
		t.Errorf("bravo in the tree: %+v", node)
	}
	testkit.WaitFor(t, 5*time.Second, "the root to see bravo's new Ready", func() bool { return len(h.entries("subsystem_restarted")) == 1 })
	h.mu.Lock()
	restarted := append([]string(nil), h.restarted...)
	h.mu.Unlock()
	if !eq(restarted, []string{"bravo"}) {
		t.Errorf("OnRestarted called for %v", restarted)
	}
	rs := h.entries("subsystem_restart")
	if len(rs) != 1 || rs[0].ContextMap()["subsystem"] != "bravo" || rs[0].ContextMap()["restarts"] != int64(1) ||
		rs[0].ContextMap()["failures_in_window"] != int64(1) {
		t.Errorf("subsystem_restart entries: %v", rs)
	}
	if n := h.exitCount.Load(); n != 0 {
		t.Fatalf("Exit called %d times after one panic", n)
	}
	// The root is still in charge: a drain now exits 0, the first Exit call.
	h.sys.Root.Send(h.pid, &root.Drain{Reason: "signal"})
	if code := h.waitExit(); code != root.ExitClean {
		t.Errorf("exit code %d, want 0", code)
	}
	if len(h.drainSteps()) != 2 {
		t.Errorf("drain steps: %+v", h.drainSteps())
	}
}

func TestChildBackBrokenAfterRestartDegrades(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil,
		childSpec{name: "alpha", readyErrAfterRestart: errors.New("socket still gone")},
	)
	pids := h.waitReady()
	h.sys.Root.Send(pids["alpha"], &boom{msg: "x"})
	testkit.WaitFor(t, 5*time.Second, "alpha_unavailable", func() bool { return len(h.entries("alpha_unavailable")) == 1 })
	e := h.entries("alpha_unavailable")[0]
	if e.Level != zapcore.ErrorLevel || e.ContextMap()["error"] != "socket still gone" {
		t.Errorf("alpha_unavailable entry: %v %v", e.Level, e.ContextMap())
	}
	if h.exitCount.Load() != 0 {
		t.Error("a degraded subsystem made the CP exit")
	}
}

func TestRestartIntensityExceededDrainsAndExits2(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(c *root.Config) { c.Intensity = supervise.Intensity{Max: 2, Window: time.Minute} },
		childSpec{name: "alpha"},
		childSpec{name: "bravo"},
		childSpec{name: "charlie"},
	)
	pids := h.waitReady()
	// Three failures within the window: one more than the bound.
	for i := 1; i <= 3; i++ {
		h.sys.Root.Send(pids["bravo"], &boom{msg: fmt.Sprintf("failure %d", i)})
	}
	if code := h.waitExit(); code != root.ExitEscalated {
		t.Fatalf("exit code %d, want %d", code, root.ExitEscalated)
	}
	if n := len(h.entries("subsystem_restart")); n != 3 {
		t.Errorf("%d subsystem_restart entries, want 3", n)
	}
	ex := h.entries("restart_intensity_exceeded")
	if len(ex) != 1 || !strings.Contains(ex[0].ContextMap()["error"].(string), "bravo failed 3 times within 1m0s (bound 2)") {
		t.Errorf("restart_intensity_exceeded entries: %v", ex)
	}
	begin := h.entries("drain_begin")
	if len(begin) != 1 || !strings.HasPrefix(begin[0].ContextMap()["reason"].(string), "escalation: bravo failed 3 times") {
		t.Errorf("drain_begin entries: %v", begin)
	}
	// The drain ran in full, bravo (restarted) answering its own step.
	var got []string
	for _, s := range h.drainSteps() {
		got = append(got, s.step+"="+s.outcome)
	}
	if !eq(got, []string{"step_alpha=done", "step_bravo=done", "step_charlie=done"}) {
		t.Errorf("steps = %v", got)
	}
	if tail := h.ev.all()[len(h.ev.all())-4:]; !eq(tail, []string{"stop:charlie", "stop:bravo", "stop:alpha", "exit:2"}) {
		t.Errorf("last events = %v", tail)
	}
	if h.exitCount.Load() != 1 {
		t.Errorf("Exit called %d times", h.exitCount.Load())
	}
}

func TestRootPanicAfterReadyDrainsAndExits2(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(c *root.Config) {
		next := c.OnReady
		c.OnReady = func(ctx actor.Context, pids map[string]*actor.PID) {
			next(ctx, pids)
			panic("wiring bug")
		}
	}, childSpec{name: "alpha"})
	h.waitReady()
	if code := h.waitExit(); code != root.ExitEscalated {
		t.Fatalf("exit code %d, want 2", code)
	}
	if n := len(h.entries("root_panic")); n != 1 {
		t.Errorf("%d root_panic entries", n)
	}
	if s := h.drainSteps(); len(s) != 1 || s[0].outcome != supervise.OutcomeDone {
		t.Errorf("drain steps: %+v", s)
	}
}

// ---- the eBPF flush and the drain's kind -------------------------------------

// flushSteps is a drain whose last step is the real eBPF flush, owned by a
// fake "ebpf" child that records whether the request reached it.
func flushSteps(c *root.Config) {
	c.Steps = []cpapi.DrainStep{
		{Name: "step_alpha", Owner: "alpha"},
		{Name: cpapi.StepEBPFFlush, Owner: "ebpf"},
	}
}

func TestDeliberateDrainSendsEBPFFlush(t *testing.T) {
	t.Parallel()
	for name, drain := range map[string]any{
		"signal":        &root.Drain{Reason: "signal", ExitCode: root.ExitClean},
		"drain_to_zero": &root.DrainToZero{},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, flushSteps, childSpec{name: "alpha"}, childSpec{name: "ebpf"})
			h.waitReady()
			h.sys.Root.Send(h.pid, drain)
			if code := h.waitExit(); code != root.ExitClean {
				t.Fatalf("exit code %d, want 0", code)
			}
			if !h.ev.has("step-end:" + cpapi.StepEBPFFlush) {
				t.Errorf("the owner never carried out %s; events %v", cpapi.StepEBPFFlush, h.ev.all())
			}
			var got []string
			for _, s := range h.drainSteps() {
				got = append(got, s.step+"="+s.outcome)
			}
			if !eq(got, []string{"step_alpha=done", "ebpf_flush=done"}) {
				t.Errorf("steps = %v", got)
			}
			if b := h.entries("drain_begin"); len(b) != 1 || b[0].ContextMap()["kind"] != "deliberate" {
				t.Errorf("drain_begin entries: %v", b)
			}
		})
	}
}

func TestEscalationDrainKeepsEnforcement(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		tweak    func(*root.Config)
		escalate func(h *harness, pids map[string]*actor.PID)
	}{
		"restart intensity": {
			tweak: flushSteps,
			escalate: func(h *harness, pids map[string]*actor.PID) {
				for i := 1; i <= 3; i++ { // the bound is 2
					h.sys.Root.Send(pids["alpha"], &boom{msg: fmt.Sprintf("failure %d", i)})
				}
			},
		},
		"root panic": {
			tweak: func(c *root.Config) {
				flushSteps(c)
				next := c.OnReady
				c.OnReady = func(ctx actor.Context, pids map[string]*actor.PID) {
					next(ctx, pids)
					panic("wiring bug")
				}
			},
			escalate: func(*harness, map[string]*actor.PID) {},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, tc.tweak, childSpec{name: "alpha"}, childSpec{name: "ebpf"})
			tc.escalate(h, h.waitReady())
			if code := h.waitExit(); code != root.ExitEscalated {
				t.Fatalf("exit code %d, want %d", code, root.ExitEscalated)
			}
			if h.ev.has("step-begin:" + cpapi.StepEBPFFlush) {
				t.Errorf("an escalation sent %s to its owner; events %v", cpapi.StepEBPFFlush, h.ev.all())
			}
			// Every other step still runs, and the skipped one is still
			// logged in its place, so the drain's record stays complete.
			steps := h.drainSteps()
			if len(steps) != 2 {
				t.Fatalf("drain steps %+v, want step_alpha then ebpf_flush", steps)
			}
			if s := steps[0]; s.step != "step_alpha" || s.outcome != supervise.OutcomeDone {
				t.Errorf("first step %+v, want step_alpha done", s)
			}
			s := steps[1]
			if s.step != cpapi.StepEBPFFlush || s.outcome != root.OutcomeSkipped || s.owner != "ebpf" || s.index != 2 ||
				!strings.Contains(s.detail, "enforcement stays pinned") {
				t.Errorf("flush step %+v, want ebpf_flush skipped, detail saying enforcement stays pinned", s)
			}
			if b := h.entries("drain_begin"); len(b) != 1 || b[0].ContextMap()["kind"] != "escalation" {
				t.Errorf("drain_begin entries: %v", b)
			}
			// The owner is still stopped like every child (its Stopping
			// keeps the pins); only the flush request is withheld.
			if !h.ev.has("stop:ebpf") {
				t.Errorf("ebpf was not stopped; events %v", h.ev.all())
			}
		})
	}
}

// A signal arriving while an escalation drains neither restarts the chain
// nor turns it into a deliberate drain: the flush stays skipped.
func TestSignalDuringEscalationDoesNotFlush(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	h := newHarness(t, flushSteps, childSpec{name: "alpha", stepGate: gate}, childSpec{name: "ebpf"})
	pids := h.waitReady()
	for i := 1; i <= 3; i++ {
		h.sys.Root.Send(pids["ebpf"], &boom{msg: fmt.Sprintf("failure %d", i)})
	}
	testkit.WaitFor(t, 5*time.Second, "the escalation drain to be under way", func() bool { return h.ev.has("step-begin:step_alpha") })
	h.sys.Root.Send(h.pid, &root.Drain{Reason: "signal", ExitCode: root.ExitClean})
	testkit.WaitFor(t, 5*time.Second, "drain_already_running", func() bool { return len(h.entries("drain_already_running")) == 1 })
	close(gate)
	if code := h.waitExit(); code != root.ExitEscalated {
		t.Fatalf("exit code %d, want %d", code, root.ExitEscalated)
	}
	if h.ev.has("step-begin:" + cpapi.StepEBPFFlush) {
		t.Errorf("the flush reached its owner; events %v", h.ev.all())
	}
	if s := h.drainSteps(); len(s) != 2 || s[1].outcome != root.OutcomeSkipped {
		t.Errorf("drain steps %+v, want the flush skipped", s)
	}
}

// ---- benchmarks ------------------------------------------------------------

type benchEcho struct{}

func (benchEcho) Receive(ctx actor.Context) {
	if _, ok := ctx.Message().(*echo); ok {
		ctx.Respond(&echoReply{})
	}
}

// BenchmarkRequestResponseHop measures one RequestFuture -> Respond round trip
// through an actor built with Tree.Props (counted mailbox + middleware) and
// through a plain actor, for comparison.
func BenchmarkRequestResponseHop(b *testing.B) {
	run := func(b *testing.B, props *actor.Props) {
		sys := actortest.Quiet()
		defer sys.Shutdown()
		pid, err := sys.Root.SpawnNamed(props, "echo")
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = sys.Root.StopFuture(pid).Wait() }()
		msg := &echo{}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := sys.Root.RequestFuture(pid, msg, time.Second).Result(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("tree_props", func(b *testing.B) {
		tree := supervise.NewTree()
		run(b, tree.Props(func() actor.Actor { return benchEcho{} }, supervise.Intensity{Max: 5, Window: time.Minute}))
	})
	b.Run("plain_props", func(b *testing.B) {
		run(b, actor.PropsFromProducer(func() actor.Actor { return benchEcho{} }))
	})
}

// BenchmarkDrainChain measures Drain -> Exit through seven step owners that
// answer at once, then the reverse-order stop of all seven.
func BenchmarkDrainChain(b *testing.B) {
	stepNames := []string{
		cpapi.StepFirewallQueueClose, cpapi.StepGRPCStop, cpapi.StepBypassTimersCancel,
		cpapi.StepStackStop, cpapi.StepNetloggerStop, cpapi.StepDNSGCStop, cpapi.StepEBPFFlush,
	}
	b.Run("seven_owners", func(b *testing.B) {
		b.ReportAllocs()
		b.StopTimer()
		for i := 0; i < b.N; i++ {
			sys := actortest.Quiet()
			tree := supervise.NewTree()
			in := supervise.Intensity{Max: 5, Window: time.Minute}
			ev := &events{}
			var kids []supervise.Spec
			var steps []cpapi.DrainStep
			for j, s := range stepNames {
				c := childSpec{name: fmt.Sprintf("owner%d", j), ev: ev, incarnations: &atomic.Int32{}}
				kids = append(kids, supervise.Spec{Name: c.name, Producer: c.producer(), Steps: []string{s}})
				steps = append(steps, cpapi.DrainStep{Name: s, Owner: c.name})
			}
			ready := make(chan struct{})
			exit := make(chan int, 1)
			pid, err := sys.Root.SpawnNamed(tree.Props(root.New(root.Config{
				Log: zap.NewNop(), Tree: tree, Intensity: in,
				StartTimeout: 5 * time.Second, StepTimeout: 5 * time.Second,
				Children: kids, Steps: steps,
				OnReady: func(actor.Context, map[string]*actor.PID) { close(ready) },
				Exit:    func(code int) { exit <- code },
			}), in), root.Name)
			if err != nil {
				b.Fatal(err)
			}
			<-ready
			b.StartTimer()
			sys.Root.Send(pid, &root.Drain{Reason: "bench"})
			code := <-exit
			b.StopTimer()
			if code != 0 {
				b.Fatalf("exit %d", code)
			}
			_ = sys.Root.StopFuture(pid).Wait()
			sys.Shutdown()
		}
	})
}
