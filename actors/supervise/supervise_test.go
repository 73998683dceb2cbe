package supervise_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/testkit"
	"github.com/clawker/clawker-cp/pkg/testkit/actortest"
)

// echo is answered by the test actor's own Receive; it proves a message got
// through the mailbox and the middleware to the actor.
type echo struct{}
type echoReply struct{ Incarnation int }

// boom makes the test actor panic inside its own Receive.
type boom struct{ msg string }

// noop is swallowed.
type noop struct{}

// recorder keeps the types of the messages that reached an actor's Receive.
type recorder struct {
	mu   sync.Mutex
	seen []string
}

func (r *recorder) add(m any) {
	r.mu.Lock()
	r.seen = append(r.seen, fmt.Sprintf("%T", m))
	r.mu.Unlock()
}

func (r *recorder) has(typ string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.seen {
		if s == typ {
			return true
		}
	}
	return false
}

// spec describes a test actor: the children it spawns (each built with
// Tree.Props) and where it records what reaches its Receive.
type spec struct {
	tree     *supervise.Tree
	in       supervise.Intensity
	children []spec
	name     string
	rec      *recorder
	// gated spawns the children one at a time, each after the previous one
	// reported Ready (as the root and the firewall do); otherwise all at once.
	gated bool
	// incarnations counts how often the producer ran for this spec.
	incarnations *int64mu
}

type int64mu struct {
	mu sync.Mutex
	n  int
}

func (c *int64mu) inc() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	return c.n
}

type testActor struct {
	s           spec
	incarnation int
	next        int // gated: index of the child being started
}

func (s spec) producer() actor.Producer {
	return func() actor.Actor {
		a := &testActor{s: s}
		if s.incarnations != nil {
			a.incarnation = s.incarnations.inc()
		}
		return a
	}
}

func (s spec) props() *actor.Props { return s.tree.Props(s.producer(), s.in) }

func (a *testActor) Receive(ctx actor.Context) {
	if a.s.rec != nil {
		a.s.rec.add(ctx.Message())
	}
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if a.s.gated {
			a.spawnNext(ctx)
		} else {
			for _, c := range a.s.children {
				if _, err := ctx.SpawnNamed(c.props(), c.name); err != nil {
					panic(err)
				}
			}
		}
		supervise.ReportReady(ctx, nil)
	case *supervise.Ready:
		if a.s.gated && a.next < len(a.s.children) && m.Name == a.s.children[a.next].name {
			a.next++
			a.spawnNext(ctx)
		}
	case *echo:
		ctx.Respond(&echoReply{Incarnation: a.incarnation})
	case *boom:
		panic(m.msg)
	}
}

func (a *testActor) spawnNext(ctx actor.Context) {
	if a.next >= len(a.s.children) {
		return
	}
	c := a.s.children[a.next]
	if _, err := ctx.SpawnNamed(c.props(), c.name); err != nil {
		panic(err)
	}
}

func request(t *testing.T, sys *actor.ActorSystem, pid *actor.PID, msg any, timeout time.Duration) (any, error) {
	t.Helper()
	return sys.Root.RequestFuture(pid, msg, timeout).Result()
}

func find(n cpapi.ActorNode, path string) (cpapi.ActorNode, bool) {
	if n.Path == path {
		return n, true
	}
	for _, c := range n.Children {
		if f, ok := find(c, path); ok {
			return f, true
		}
	}
	return cpapi.ActorNode{}, false
}

func names(ns []cpapi.ActorNode) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.Name)
	}
	return out
}

var wide = supervise.Intensity{Max: 10, Window: time.Minute}

func TestSnapshotShape(t *testing.T) {
	t.Parallel()
	sys := actortest.System(t)
	tree := supervise.NewTree()
	leaf := func(name string, kids ...spec) spec {
		return spec{tree: tree, in: wide, name: name, children: kids, gated: true}
	}
	// Spawn order deliberately not alphabetical: children must list in spawn order.
	top := leaf("top", leaf("zeta", leaf("inner")), leaf("alpha"), leaf("mid"))
	before := time.Now()
	pid, err := sys.Root.SpawnNamed(top.props(), "top")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.Root.StopFuture(pid).Wait() })

	want := []string{"top", "top/alpha", "top/mid", "top/zeta", "top/zeta/inner"}
	testkit.WaitFor(t, 5*time.Second, "all five actors registered and running", func() bool {
		if strings.Join(tree.Names(), ",") != strings.Join(want, ",") {
			return false
		}
		snap, ok := tree.Snapshot("top")
		if !ok {
			return false
		}
		for _, p := range want {
			n, ok := find(snap, p)
			if !ok || n.State != cpapi.ActorRunning || n.MailboxDepth != 0 {
				return false
			}
		}
		return true
	})

	snap, ok := tree.Snapshot("top")
	if !ok {
		t.Fatal("Snapshot(top) = false for a live actor")
	}
	if snap.Name != "top" || snap.Path != "top" || snap.PID == "" {
		t.Errorf("root node: name %q path %q pid %q", snap.Name, snap.Path, snap.PID)
	}
	if got := names(snap.Children); strings.Join(got, ",") != "zeta,alpha,mid" {
		t.Errorf("children of top = %v, want spawn order [zeta alpha mid]", got)
	}
	zeta := snap.Children[0]
	if zeta.Path != "top/zeta" || len(zeta.Children) != 1 || zeta.Children[0].Path != "top/zeta/inner" || zeta.Children[0].Name != "inner" {
		t.Errorf("zeta subtree = %+v", zeta)
	}
	var walk func(n cpapi.ActorNode)
	walk = func(n cpapi.ActorNode) {
		if n.UptimeSec < 0 {
			t.Errorf("%s: uptime %v < 0", n.Path, n.UptimeSec)
		}
		if n.StartedAt.Before(before.Add(-time.Second)) || n.StartedAt.After(time.Now()) {
			t.Errorf("%s: started_at %v is not around the spawn", n.Path, n.StartedAt)
		}
		if n.StartedAt.Location() != time.UTC {
			t.Errorf("%s: started_at not in UTC", n.Path)
		}
		if n.Restarts != 0 || n.LastError != "" {
			t.Errorf("%s: restarts %d last error %q on a fresh tree", n.Path, n.Restarts, n.LastError)
		}
		if n.PID == "" || !strings.Contains(n.PID, n.Path) {
			t.Errorf("%s: pid %q does not name the path", n.Path, n.PID)
		}
		for _, c := range n.Children {
			walk(c)
		}
	}
	walk(snap)

	// A subtree can be rendered from any live actor.
	sub, ok := tree.Snapshot("top/zeta")
	if !ok || sub.Path != "top/zeta" || len(sub.Children) != 1 {
		t.Errorf("Snapshot(top/zeta) = %+v, %v", sub, ok)
	}
	if _, ok := tree.Snapshot("nope"); ok {
		t.Error("Snapshot of an unknown actor reported ok")
	}
	if p, ok := tree.Lookup("top/mid"); !ok || p.Id != "top/mid" {
		t.Errorf("Lookup(top/mid) = %v, %v", p, ok)
	}

	// Stopping an actor removes it (and its subtree) from the mirror.
	zpid, _ := tree.Lookup("top/zeta")
	if err := sys.Root.StopFuture(zpid).Wait(); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "zeta and inner removed", func() bool {
		return strings.Join(tree.Names(), ",") == "top,top/alpha,top/mid"
	})
	snap, _ = tree.Snapshot("top")
	if got := names(snap.Children); strings.Join(got, ",") != "alpha,mid" {
		t.Errorf("children after stopping zeta = %v", got)
	}
	if _, ok := tree.Lookup("top/zeta/inner"); ok {
		t.Error("inner still looked up after its parent stopped")
	}
}

func TestSetStateAndRecordFailure(t *testing.T) {
	t.Parallel()
	sys := actortest.System(t)
	tree := supervise.NewTree()
	s := spec{tree: tree, in: wide}
	pid, err := sys.Root.SpawnNamed(s.props(), "solo")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.Root.StopFuture(pid).Wait() })
	testkit.WaitFor(t, 5*time.Second, "solo running", func() bool {
		n, ok := tree.Snapshot("solo")
		return ok && n.State == cpapi.ActorRunning
	})
	tree.SetState(pid, cpapi.ActorDraining)
	if n, _ := tree.Snapshot("solo"); n.State != cpapi.ActorDraining {
		t.Errorf("state after SetState = %q", n.State)
	}
	tree.RecordFailure(pid, "first", false)
	n, _ := tree.Snapshot("solo")
	if n.Restarts != 0 || n.LastError != "first" || n.State != cpapi.ActorDraining {
		t.Errorf("after a non-restart failure: %+v", n)
	}
	tree.RecordFailure(pid, fmt.Errorf("second"), true)
	n, _ = tree.Snapshot("solo")
	if n.Restarts != 1 || n.LastError != "second" || n.State != cpapi.ActorRestarting || tree.Restarts(pid) != 1 {
		t.Errorf("after a restart failure: %+v", n)
	}
	// Unknown PIDs are ignored, not added.
	ghost := actor.NewPID("nonhost", "ghost")
	tree.RecordFailure(ghost, "x", true)
	tree.SetState(ghost, cpapi.ActorRunning)
	if tree.Restarts(ghost) != 0 {
		t.Error("Restarts of an unknown pid != 0")
	}
	if _, ok := tree.Lookup("ghost"); ok {
		t.Error("unknown pid appeared in the tree")
	}
}

func TestPingAnsweredByMiddleware(t *testing.T) {
	t.Parallel()
	sys := actortest.System(t)
	tree := supervise.NewTree()
	rec := &recorder{}
	s := spec{tree: tree, in: wide, rec: rec}
	pid, err := sys.Root.SpawnNamed(s.props(), "pinged")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.Root.StopFuture(pid).Wait() })

	res, err := request(t, sys, pid, &supervise.Ping{}, 2*time.Second)
	if err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if _, ok := res.(*supervise.Pong); !ok {
		t.Fatalf("Ping answered with %T, want *supervise.Pong", res)
	}
	// The mailbox is FIFO: once echo is answered, a Ping that reached Receive
	// would already be recorded.
	if res, err := request(t, sys, pid, &echo{}, 2*time.Second); err != nil {
		t.Fatalf("echo: %v", err)
	} else if _, ok := res.(*echoReply); !ok {
		t.Fatalf("echo answered with %T", res)
	}
	if rec.has("*supervise.Ping") {
		t.Error("Ping reached the actor's Receive")
	}
	if !rec.has("*supervise_test.echo") {
		t.Errorf("echo did not reach Receive; saw %v", rec.seen)
	}
	// A Ping without a sender is swallowed, not delivered.
	sys.Root.Send(pid, &supervise.Ping{})
	if _, err := request(t, sys, pid, &echo{}, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if rec.has("*supervise.Ping") {
		t.Error("a sender-less Ping reached the actor's Receive")
	}
}

func TestMailboxDepthWhileBlocked(t *testing.T) {
	t.Parallel()
	sys := actortest.System(t)
	tree := supervise.NewTree()
	rec := &recorder{}
	s := spec{tree: tree, in: wide, rec: rec}
	pid, err := sys.Root.SpawnNamed(s.props(), "blocked")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.Root.StopFuture(pid).Wait() })
	depth := func() int64 {
		n, ok := tree.Snapshot("blocked")
		if !ok {
			return -1
		}
		return n.MailboxDepth
	}
	testkit.WaitFor(t, 5*time.Second, "an idle mailbox", func() bool { return depth() == 0 })

	const queued = 5
	block := 1500 * time.Millisecond
	sys.Root.Send(pid, &supervise.Fault{Kind: supervise.FaultBlock, Duration: block})
	for i := 0; i < queued; i++ {
		sys.Root.Send(pid, &noop{})
	}
	// The fault message itself is in flight (posted, not yet received), the
	// noops wait behind it.
	var peak int64
	testkit.WaitFor(t, block, "the queued messages to show as mailbox depth", func() bool {
		if d := depth(); d > peak {
			peak = d
		}
		return peak >= queued
	})
	// A stalled mailbox fails the liveness probe.
	if _, err := request(t, sys, pid, &supervise.Ping{}, 50*time.Millisecond); err == nil {
		t.Error("Ping answered while the mailbox was blocked")
	}
	testkit.WaitFor(t, block+5*time.Second, "the mailbox to drain back to 0", func() bool { return depth() == 0 })
	if res, err := request(t, sys, pid, &supervise.Ping{}, 2*time.Second); err != nil {
		t.Errorf("Ping after the block: %v", err)
	} else if _, ok := res.(*supervise.Pong); !ok {
		t.Errorf("Ping after the block answered %T", res)
	}
	if rec.has("*supervise.Fault") {
		t.Error("the Fault reached the actor's Receive")
	}
}

func TestPanicRestartsAndKeepsDepthAccurate(t *testing.T) {
	t.Parallel()
	sys := actortest.System(t)
	tree := supervise.NewTree()
	inc := &int64mu{}
	child := spec{tree: tree, in: wide, name: "kid", incarnations: inc}
	parent := spec{tree: tree, in: supervise.Intensity{Max: 3, Window: time.Minute}, children: []spec{child}}
	pid, err := sys.Root.SpawnNamed(parent.props(), "parent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.Root.StopFuture(pid).Wait() })
	testkit.WaitFor(t, 5*time.Second, "kid registered", func() bool { _, ok := tree.Lookup("parent/kid"); return ok })
	kid, _ := tree.Lookup("parent/kid")

	sys.Root.Send(kid, &boom{msg: "kaboom\nsecond line"})
	testkit.WaitFor(t, 5*time.Second, "kid restarted once", func() bool { return tree.Restarts(kid) == 1 })
	res, err := request(t, sys, kid, &echo{}, 2*time.Second)
	if err != nil {
		t.Fatalf("echo after restart: %v", err)
	}
	if r := res.(*echoReply); r.Incarnation != 2 {
		t.Errorf("answered by incarnation %d, want 2 (a fresh actor)", r.Incarnation)
	}
	testkit.WaitFor(t, 5*time.Second, "kid running with depth 0", func() bool {
		n, ok := tree.Snapshot("parent/kid")
		return ok && n.State == cpapi.ActorRunning && n.MailboxDepth == 0
	})
	n, _ := tree.Snapshot("parent/kid")
	if n.LastError != "kaboom\nsecond line" {
		t.Errorf("last error = %q", n.LastError)
	}
	if p, _ := tree.Snapshot("parent"); p.Restarts != 0 {
		t.Errorf("the parent counted %d restarts for its child's failure", p.Restarts)
	}
}

// TestFaultPanicKeepsDepthAccurate: a debug panic fault goes through
// Tree.invoke like any handler, whose recover compensates the mailbox's
// skipped "received" count for the panicking message; without it the depth
// stays one too high for good.
func TestFaultPanicKeepsDepthAccurate(t *testing.T) {
	t.Parallel()
	sys := actortest.System(t)
	tree := supervise.NewTree()
	parent := spec{tree: tree, in: wide, children: []spec{{tree: tree, in: wide, name: "kid"}}}
	pid, err := sys.Root.SpawnNamed(parent.props(), "fp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.Root.StopFuture(pid).Wait() })
	testkit.WaitFor(t, 5*time.Second, "kid registered", func() bool { _, ok := tree.Lookup("fp/kid"); return ok })
	kid, _ := tree.Lookup("fp/kid")
	sys.Root.Send(kid, &supervise.Fault{Kind: supervise.FaultPanic})
	testkit.WaitFor(t, 5*time.Second, "kid restarted", func() bool { return tree.Restarts(kid) == 1 })
	if _, err := request(t, sys, kid, &echo{}, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	n, _ := tree.Snapshot("fp/kid")
	if !strings.Contains(n.LastError, "debug fault injected into fp/kid") {
		t.Errorf("last error = %q", n.LastError)
	}
	testkit.WaitFor(t, 5*time.Second, "kid's mailbox depth back to 0 after the fault", func() bool {
		n, _ := tree.Snapshot("fp/kid")
		return n.MailboxDepth == 0
	})
}

func TestStrategyEscalatesPastTheBound(t *testing.T) {
	t.Parallel()
	sys := actortest.System(t)
	tree := supervise.NewTree()
	childInc := &int64mu{}
	child := spec{tree: tree, in: wide, name: "c", incarnations: childInc}
	parentInc := &int64mu{}
	// The parent tolerates one restart of its child per minute.
	parent := spec{tree: tree, in: supervise.Intensity{Max: 1, Window: time.Minute}, name: "p", children: []spec{child}, incarnations: parentInc}
	grand := spec{tree: tree, in: wide, children: []spec{parent}}
	gpid, err := sys.Root.SpawnNamed(grand.props(), "g")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.Root.StopFuture(gpid).Wait() })
	testkit.WaitFor(t, 5*time.Second, "g/p/c registered", func() bool { _, ok := tree.Lookup("g/p/c"); return ok })
	c, _ := tree.Lookup("g/p/c")
	p, _ := tree.Lookup("g/p")

	// Within the bound: the parent restarts the child, nothing escalates.
	sys.Root.Send(c, &boom{msg: "one"})
	testkit.WaitFor(t, 5*time.Second, "c restarted", func() bool { return tree.Restarts(c) == 1 })
	if _, err := request(t, sys, c, &echo{}, 2*time.Second); err != nil {
		t.Fatalf("c after its first restart: %v", err)
	}
	if tree.Restarts(p) != 0 {
		t.Fatalf("p restarted after one child failure")
	}

	// Past the bound: the child is stopped and the parent fails to the
	// grandparent, which restarts it (and with it a fresh child).
	sys.Root.Send(c, &boom{msg: "two"})
	testkit.WaitFor(t, 5*time.Second, "p restarted by g", func() bool { return tree.Restarts(p) == 1 })
	pn, _ := find(mustSnap(t, tree, "g"), "g/p")
	if !strings.Contains(pn.LastError, "child g/p/c exceeded 1 restarts in 1m0s") || !strings.Contains(pn.LastError, "two") {
		t.Errorf("p's last error = %q", pn.LastError)
	}
	testkit.WaitFor(t, 5*time.Second, "a fresh c under the restarted p", func() bool {
		snap, ok := tree.Snapshot("g")
		if !ok {
			return false
		}
		n, ok := find(snap, "g/p/c")
		return ok && n.State == cpapi.ActorRunning && n.Restarts == 0 && n.LastError == ""
	})
	res, err := request(t, sys, c, &echo{}, 2*time.Second)
	if err != nil {
		t.Fatalf("c after p's restart: %v", err)
	}
	// Incarnations of c: original, restart by p, fresh spawn by p's new incarnation.
	if r := res.(*echoReply); r.Incarnation != 3 {
		t.Errorf("c incarnation = %d, want 3", r.Incarnation)
	}
	if res, err := request(t, sys, p, &echo{}, 2*time.Second); err != nil {
		t.Fatalf("p after its restart: %v", err)
	} else if r := res.(*echoReply); r.Incarnation != 2 {
		t.Errorf("p incarnation = %d, want 2", r.Incarnation)
	}
	if g, _ := tree.Snapshot("g"); g.Restarts != 0 || g.State != cpapi.ActorRunning {
		t.Errorf("g itself affected: %+v", g)
	}
}

func mustSnap(t *testing.T, tree *supervise.Tree, path string) cpapi.ActorNode {
	t.Helper()
	n, ok := tree.Snapshot(path)
	if !ok {
		t.Fatalf("no live actor %s", path)
	}
	return n
}

func TestReportReadyAndSteps(t *testing.T) {
	t.Parallel()
	sys := actortest.System(t)
	tree := supervise.NewTree()
	got := make(chan any, 4)
	type start struct{}
	// The worker owns netlogger_stop only: the middleware answers every
	// other step without the worker seeing it.
	worker := supervise.Spec{Name: "worker", Steps: []string{cpapi.StepNetloggerStop}, Producer: func() actor.Actor {
		return actor.ReceiveFunc(func(c actor.Context) {
			switch d := c.Message().(type) {
			case *actor.Started:
				supervise.ReportReady(c, fmt.Errorf("no socket"))
			case *supervise.DrainStep:
				if d.Step != cpapi.StepNetloggerStop {
					t.Errorf("the worker saw %s, a step it does not own", d.Step)
				}
				supervise.AnswerStep(c, d.Step, supervise.OutcomeDone, "worker did it")
			}
		})
	}}
	parentProps := actor.PropsFromFunc(func(ctx actor.Context) {
		switch m := ctx.Message().(type) {
		case *start:
			_, _ = ctx.SpawnNamed(tree.SpecProps(worker, supervise.Intensity{Max: 1, Window: time.Minute}), worker.Name)
		case *supervise.Ready:
			got <- m
		}
	})
	ppid, err := sys.Root.SpawnNamed(parentProps, "boss")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.Root.StopFuture(ppid).Wait() })
	sys.Root.Send(ppid, &start{})
	select {
	case m := <-got:
		r := m.(*supervise.Ready)
		if r.Name != "worker" || r.Err == nil || r.Err.Error() != "no socket" {
			t.Errorf("Ready = %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no Ready reached the parent")
	}
	res, err := request(t, sys, actor.NewPID(sys.Address(), "boss/worker"), &supervise.DrainStep{Step: cpapi.StepEBPFFlush}, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	d := res.(*supervise.StepDone)
	if d.Step != cpapi.StepEBPFFlush || d.Outcome != supervise.OutcomeFailed || d.Detail != "boss/worker does not own drain step ebpf_flush" {
		t.Errorf("the middleware answered %+v", d)
	}
	res, err = request(t, sys, actor.NewPID(sys.Address(), "boss/worker"), &supervise.DrainStep{Step: cpapi.StepNetloggerStop}, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if d := res.(*supervise.StepDone); d.Outcome != supervise.OutcomeDone || d.Detail != "worker did it" {
		t.Errorf("the owned step answered %+v", d)
	}

	// ReportReady of a top-level actor (no parent) is a no-op, not a crash.
	done := make(chan struct{})
	orphan, err := sys.Root.SpawnNamed(actor.PropsFromFunc(func(c actor.Context) {
		if _, ok := c.Message().(*actor.Started); ok {
			supervise.ReportReady(c, nil)
			close(done)
		}
	}), "orphan")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.Root.StopFuture(orphan).Wait() })
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("orphan did not start")
	}
}

// TestSiblingsSpawnedAtOnceListInSpawnOrder documents a defect: Tree numbers
// an actor when it processes Started (on its own goroutine), not when it is
// spawned, so siblings spawned back to back list in whatever order their
// mailboxes first ran. The ordered spawns of the root and the firewall are
// not affected (each waits for the previous child's Ready).
func TestSiblingsSpawnedAtOnceListInSpawnOrder(t *testing.T) {
	t.Parallel()
	want := "k0,k1,k2,k3,k4,k5,k6,k7"
	for round := 0; round < 20; round++ {
		sys := actortest.System(t)
		tree := supervise.NewTree()
		var kids []spec
		for i := 0; i < 8; i++ {
			kids = append(kids, spec{tree: tree, in: wide, name: fmt.Sprintf("k%d", i)})
		}
		top := spec{tree: tree, in: wide, children: kids}
		pid, err := sys.Root.SpawnNamed(top.props(), "burst")
		if err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, 5*time.Second, "all kids registered", func() bool { return len(tree.Names()) == 9 })
		got := strings.Join(names(mustSnap(t, tree, "burst").Children), ",")
		_ = sys.Root.StopFuture(pid).Wait()
		if got != want {
			t.Fatalf("siblings spawned at once listed as %s, want spawn order %s", got, want)
		}
	}
}
