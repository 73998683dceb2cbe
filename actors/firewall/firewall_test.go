package firewall_test

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
)

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// parent hosts the firewall the way the root does and hands its Ready to the test.
type parent struct {
	props func() *actor.Props
	ready chan *supervise.Ready
}

func (p *parent) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if _, err := ctx.SpawnNamed(p.props(), "firewall"); err != nil {
			panic(err)
		}
	case *supervise.Ready:
		p.ready <- m
	}
}

type rig struct {
	sys  *actor.ActorSystem
	tree *supervise.Tree
	fw   *actor.PID
	// stepTimeout is how far away the deadline of each step it sends is.
	stepTimeout time.Duration
}

func startFirewall(t *testing.T, stepTimeout time.Duration) *rig {
	t.Helper()
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.DiscardHandler)
	}))
	tree := supervise.NewTree()
	in := supervise.Intensity{Max: 5, Window: time.Minute}
	ready := make(chan *supervise.Ready, 4)
	p := &parent{
		props: func() *actor.Props {
			return tree.SpecProps(firewall.Spec(firewall.Config{Tree: tree, Intensity: in}), in)
		},
		ready: ready,
	}
	top, err := sys.Root.SpawnNamed(tree.Props(func() actor.Actor { return p }, in), "cp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sys.Root.StopFuture(top).Wait()
		sys.Shutdown()
	})
	select {
	case m := <-ready:
		if m.Name != "firewall" || m.Err != nil {
			t.Fatalf("Ready = %+v", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the firewall never reported Ready")
	}
	fw, _ := tree.Lookup("cp/firewall")
	return &rig{sys: sys, tree: tree, fw: fw, stepTimeout: stepTimeout}
}

func (r *rig) step(t *testing.T, step string) *supervise.StepDone {
	t.Helper()
	res, err := r.sys.Root.RequestFuture(r.fw, &supervise.DrainStep{Step: step, Deadline: time.Now().Add(r.stepTimeout)}, 5*time.Second).Result()
	if err != nil {
		t.Fatalf("%s: %v", step, err)
	}
	d, ok := res.(*supervise.StepDone)
	if !ok {
		t.Fatalf("%s answered %T", step, res)
	}
	if d.Step != step {
		t.Errorf("answer names step %q, want %q", d.Step, step)
	}
	return d
}

func TestStartsDNSThenProxy(t *testing.T) {
	t.Parallel()
	r := startFirewall(t, time.Second)
	waitFor(t, 5*time.Second, "dns and proxy running", func() bool {
		snap, ok := r.tree.Snapshot("cp/firewall")
		if !ok || len(snap.Children) != 2 {
			return false
		}
		return snap.Children[0].State == cpapi.ActorRunning && snap.Children[1].State == cpapi.ActorRunning
	})
	snap, _ := r.tree.Snapshot("cp/firewall")
	if snap.Children[0].Path != "cp/firewall/dns" || snap.Children[1].Path != "cp/firewall/proxy" {
		t.Errorf("children %s, %s; want dns then proxy", snap.Children[0].Path, snap.Children[1].Path)
	}
}

func TestOwnSteps(t *testing.T) {
	t.Parallel()
	r := startFirewall(t, time.Second)
	cases := []struct{ step, outcome, detail string }{
		{cpapi.StepFirewallQueueClose, supervise.OutcomeDone, "action queue closed to new mutations"},
		{cpapi.StepBypassTimersCancel, supervise.OutcomeNothing, "no bypass timers armed"},
		{cpapi.StepDNSGCStop, supervise.OutcomeNothing, "no DNS cache GC running"},
		{cpapi.StepGRPCStop, supervise.OutcomeFailed, "cp/firewall does not own drain step grpc_stop"},
		{cpapi.StepEBPFFlush, supervise.OutcomeFailed, "cp/firewall does not own drain step ebpf_flush"},
	}
	for _, c := range cases {
		d := r.step(t, c.step)
		if d.Outcome != c.outcome || d.Detail != c.detail {
			t.Errorf("%s = %s %q, want %s %q", c.step, d.Outcome, d.Detail, c.outcome, c.detail)
		}
	}
}

func TestStackStopForwardsProxyThenDNS(t *testing.T) {
	t.Parallel()
	r := startFirewall(t, time.Second)
	d := r.step(t, cpapi.StepStackStop)
	// The details are joined in the order the children were asked.
	if d.Outcome != supervise.OutcomeNothing || d.Detail != "no proxy container running; no DNS container running" {
		t.Errorf("stack_stop = %s %q", d.Outcome, d.Detail)
	}
}

func TestStackStopFailsWhenAChildDoesNotAnswer(t *testing.T) {
	t.Parallel()
	r := startFirewall(t, 300*time.Millisecond)
	waitFor(t, 5*time.Second, "proxy registered", func() bool { _, ok := r.tree.Lookup("cp/firewall/proxy"); return ok })
	proxy, _ := r.tree.Lookup("cp/firewall/proxy")
	// The proxy's mailbox stalls well past the firewall's per-child bound
	// (half the step's: the proxy is the first of two children).
	r.sys.Root.Send(proxy, &supervise.Fault{Kind: supervise.FaultBlock, Duration: 700 * time.Millisecond})

	stack := r.sys.Root.RequestFuture(r.fw, &supervise.DrainStep{Step: cpapi.StepStackStop, Deadline: time.Now().Add(2 * r.stepTimeout)}, 5*time.Second)
	// Only one goroutine may wait on a protoactor Future: its completion
	// wakes a single waiter (sync.Cond.Signal), a second one would hang.
	type result struct {
		res interface{}
		err error
	}
	stackDone := make(chan result, 1)
	go func() {
		res, err := stack.Result()
		stackDone <- result{res, err}
	}()
	// The firewall's mailbox is not held while it waits on its children: a
	// later step is answered while stack_stop still waits for the proxy.
	if d := r.step(t, cpapi.StepFirewallQueueClose); d.Outcome != supervise.OutcomeDone {
		t.Errorf("queue close during stack_stop = %+v", d)
	}
	select {
	case <-stackDone:
		t.Fatal("queue close was answered only after stack_stop: the mailbox was held")
	default:
	}
	var got result
	select {
	case got = <-stackDone:
	case <-time.After(10 * time.Second):
		t.Fatal("stack_stop never answered")
	}
	if got.err != nil {
		t.Fatal(got.err)
	}
	d := got.res.(*supervise.StepDone)
	if d.Outcome != supervise.OutcomeFailed {
		t.Errorf("stack_stop with a stalled proxy = %s", d.Outcome)
	}
	// The proxy's failure is named, and DNS was still asked afterwards.
	if !strings.HasPrefix(d.Detail, "cp/firewall/proxy: future: timeout; ") || !strings.HasSuffix(d.Detail, "no DNS container running") {
		t.Errorf("detail %q", d.Detail)
	}
}

func TestStackStopFailsWhenAChildIsGone(t *testing.T) {
	t.Parallel()
	r := startFirewall(t, time.Second)
	waitFor(t, 5*time.Second, "dns registered", func() bool { _, ok := r.tree.Lookup("cp/firewall/dns"); return ok })
	dns, _ := r.tree.Lookup("cp/firewall/dns")
	if err := r.sys.Root.StopFuture(dns).Wait(); err != nil {
		t.Fatal(err)
	}
	d := r.step(t, cpapi.StepStackStop)
	if d.Outcome != supervise.OutcomeFailed {
		t.Errorf("stack_stop with DNS gone = %s %q", d.Outcome, d.Detail)
	}
	if !strings.HasPrefix(d.Detail, "no proxy container running; cp/firewall/dns: ") {
		t.Errorf("detail %q", d.Detail)
	}
	if d := r.step(t, cpapi.StepDNSGCStop); d.Outcome != supervise.OutcomeFailed {
		t.Errorf("dns_gc_stop with DNS gone = %s %q", d.Outcome, d.Detail)
	}
}

// restartingParent spawns the firewall and, before the firewall handles any
// Ready, stalls its mailbox and queues a second Ready of "dns" — what a DNS
// child restarted during the stack's start-up sends.
type restartingParent struct {
	props func() *actor.Props
	ready chan *supervise.Ready
}

func (p *restartingParent) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		pid, err := ctx.SpawnNamed(p.props(), "firewall")
		if err != nil {
			panic(err)
		}
		// Both Readies of dns (this one and the real one) queue up behind the
		// stall and are handled back to back, before the proxy can answer.
		ctx.Send(pid, &supervise.Fault{Kind: supervise.FaultBlock, Duration: 300 * time.Millisecond})
		ctx.Send(pid, &supervise.Ready{Name: "dns"})
	case *supervise.Ready:
		p.ready <- m
	}
}

// TestDNSRestartDuringStartSpawnsOneProxy documents a defect: childReady
// spawns the proxy on every Ready of "dns" until the firewall is ready, so a
// DNS restart between its first Ready and the proxy's makes the firewall
// spawn "proxy" a second time, which fails (name exists) and fails start-up.
func TestDNSRestartDuringStartSpawnsOneProxy(t *testing.T) {
	t.Parallel()
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.DiscardHandler)
	}))
	tree := supervise.NewTree()
	in := supervise.Intensity{Max: 5, Window: time.Minute}
	ready := make(chan *supervise.Ready, 4)
	p := &restartingParent{
		props: func() *actor.Props {
			return tree.SpecProps(firewall.Spec(firewall.Config{Tree: tree, Intensity: in}), in)
		},
		ready: ready,
	}
	top, err := sys.Root.SpawnNamed(tree.Props(func() actor.Actor { return p }, in), "cp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sys.Root.StopFuture(top).Wait()
		sys.Shutdown()
	})
	var first *supervise.Ready
	select {
	case first = <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("the firewall never reported Ready")
	}
	if first.Err != nil {
		t.Fatalf("a second Ready of dns before the proxy is ready fails start-up: %v", first.Err)
	}
}

// TestUnreadableNetworkFailsStartWithTheFix: the agent network is read
// before the tree starts (firewall.ResolveNetwork); when that failed, the
// enabled firewall fails its start at once with the reason and the fix,
// without asking Docker itself.
func TestUnreadableNetworkFailsStartWithTheFix(t *testing.T) {
	t.Parallel()
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.DiscardHandler)
	}))
	tree := supervise.NewTree()
	in := supervise.Intensity{Max: 5, Window: time.Minute}
	ready := make(chan *supervise.Ready, 4)
	p := &parent{
		props: func() *actor.Props {
			return tree.SpecProps(firewall.Spec(firewall.Config{
				Enable: true, Tree: tree, Intensity: in,
				Network: firewall.AgentNetwork{Name: "clawker-net", Err: errors.New("network clawker-net not found")},
			}), in)
		},
		ready: ready,
	}
	top, err := sys.Root.SpawnNamed(tree.Props(func() actor.Actor { return p }, in), "cp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sys.Root.StopFuture(top).Wait()
		sys.Shutdown()
	})
	select {
	case m := <-ready:
		if m.Err == nil || !strings.Contains(m.Err.Error(), "agent network cannot be read (network clawker-net not found)") ||
			!strings.Contains(m.Err.Error(), "firewall.enable: false") {
			t.Fatalf("Ready = %+v, want the network's error and the fix", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the firewall never reported Ready")
	}
}
