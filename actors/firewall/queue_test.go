package firewall_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// fakeEBPF stands in for the eBPF owner: it records every order with the
// instants it started and finished, takes delay to carry each out, and
// answers with fail when set.
type fakeEBPF struct {
	mu     sync.Mutex
	orders []order
	delay  time.Duration
	fail   error
	active int // orders being carried out right now
	maxAct int
}

type order struct {
	msg        interface{}
	start, end time.Time
}

func (f *fakeEBPF) Receive(ctx actor.Context) {
	msg := ctx.Message()
	switch msg.(type) {
	case *ebpf.Enforce, *ebpf.Release, *ebpf.SetBypass, *ebpf.SetDisabled, *ebpf.SyncRoutes, *ebpf.SyncIPRules:
	default:
		return
	}
	f.mu.Lock()
	f.active++
	if f.active > f.maxAct {
		f.maxAct = f.active
	}
	fail := f.fail
	f.mu.Unlock()
	start := time.Now()
	// Answer from another goroutine after the delay, so the fake itself
	// never serialises: only the firewall's queue may.
	sender := ctx.Sender()
	sys := ctx.ActorSystem()
	go func() {
		time.Sleep(f.delay)
		f.mu.Lock()
		f.active--
		f.orders = append(f.orders, order{msg: msg, start: start, end: time.Now()})
		f.mu.Unlock()
		var res interface{} = &ebpf.Done{Err: fail}
		if e, ok := msg.(*ebpf.Enforce); ok {
			res = &ebpf.Enforced{CgroupID: uint64(len(e.ContainerID)), Err: fail}
		}
		if sender != nil {
			sys.Root.Send(sender, res)
		}
	}()
}

func (f *fakeEBPF) snapshot() []order {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]order(nil), f.orders...)
}

type subscriberSink struct{ subscribed chan *actor.PID }

func (s *subscriberSink) Receive(ctx actor.Context) {
	if m, ok := ctx.Message().(*overseer.Subscribe); ok {
		s.subscribed <- m.Subscriber
	}
}

type enabledRig struct {
	rig
	ebpf       *fakeEBPF
	subscribed chan *actor.PID
}

var testSubnet = netip.MustParsePrefix("10.99.7.0/24")

func startEnabled(t *testing.T, dial func(context.Context, string) error, fe *fakeEBPF) (*enabledRig, *supervise.Ready) {
	t.Helper()
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.DiscardHandler)
	}))
	tree := supervise.NewTree()
	in := supervise.Intensity{Max: 5, Window: time.Minute}
	ebpfPID := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return fe }))
	sink := &subscriberSink{subscribed: make(chan *actor.PID, 4)}
	ovPID := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return sink }))
	ready := make(chan *supervise.Ready, 4)
	p := &parent{
		props: func() *actor.Props {
			return tree.SpecProps(firewall.Spec(firewall.Config{
				Enable: true, Tree: tree, Intensity: in,
				EBPF: ebpfPID, Overseer: ovPID,
				Network:   firewall.AgentNetwork{Name: "clawker-net", Subnet: testSubnet, Gateway: netip.MustParseAddr("10.99.7.1")},
				ProxyPort: 15001, StackWait: 300 * time.Millisecond, StackDial: dial,
				OpTimeout: 5 * time.Second, Log: zap.NewNop(),
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
	var m *supervise.Ready
	select {
	case m = <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("the firewall never reported Ready")
	}
	fw, _ := tree.Lookup("cp/firewall")
	return &enabledRig{rig: rig{sys: sys, tree: tree, fw: fw, stepTimeout: time.Second}, ebpf: fe, subscribed: sink.subscribed}, m
}

func answerOK(context.Context, string) error { return nil }

func (r *enabledRig) ask(t *testing.T, msg interface{}) interface{} {
	t.Helper()
	res, err := r.sys.Root.RequestFuture(r.fw, msg, 10*time.Second).Result()
	if err != nil {
		t.Fatalf("%T: %v", msg, err)
	}
	return res
}

func TestEnabledStartChecksTheStackAndSubscribes(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var dialed []string
	r, ready := startEnabled(t, func(_ context.Context, addr string) error {
		mu.Lock()
		dialed = append(dialed, addr)
		mu.Unlock()
		return nil
	}, &fakeEBPF{})
	if ready.Err != nil {
		t.Fatalf("Ready = %v", ready.Err)
	}
	mu.Lock()
	got := strings.Join(dialed, " ")
	mu.Unlock()
	// DNS first (the proxy resolves through it), each at its fixed octet.
	if got != "10.99.7.201:53 10.99.7.200:15001" {
		t.Errorf("stack checks dialed %q", got)
	}
	select {
	case pid := <-r.subscribed:
		if pid.Id != r.fw.Id {
			t.Errorf("subscriber %s, want the firewall %s", pid.Id, r.fw.Id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the enabled firewall never subscribed to container events")
	}
}

func TestEnabledStartFailsWithoutAStack(t *testing.T) {
	t.Parallel()
	_, ready := startEnabled(t, func(context.Context, string) error { return errors.New("connection refused") }, &fakeEBPF{})
	if ready.Err == nil {
		t.Fatal("start-up succeeded with no DNS server answering")
	}
	for _, want := range []string{"10.99.7.201:53", "firewall.enable: false", "connection refused"} {
		if !strings.Contains(ready.Err.Error(), want) {
			t.Errorf("start-up error %q does not name %q", ready.Err, want)
		}
	}
}

// Orders asked at once run one after the other, in arrival order, and each
// requester gets its own answer only once its order is done.
func TestMutationsAreSerialised(t *testing.T) {
	t.Parallel()
	fe := &fakeEBPF{delay: 20 * time.Millisecond}
	r, ready := startEnabled(t, answerOK, fe)
	if ready.Err != nil {
		t.Fatal(ready.Err)
	}
	const n = 8
	futures := make([]*actor.Future, n)
	for i := range futures {
		id := fmt.Sprintf("c%02d", i)
		var msg interface{} = &firewall.Disable{ContainerID: id}
		if i%2 == 1 {
			msg = &firewall.Enable{ContainerID: id}
		}
		futures[i] = r.sys.Root.RequestFuture(r.fw, msg, 10*time.Second)
	}
	for i, f := range futures {
		res, err := f.Result()
		if err != nil {
			t.Fatalf("order %d: %v", i, err)
		}
		if rr, ok := res.(*firewall.Result); !ok || rr.Err != nil {
			t.Fatalf("order %d answered %#v", i, res)
		}
	}
	orders := fe.snapshot()
	if len(orders) != n {
		t.Fatalf("%d orders reached the eBPF owner, want %d", len(orders), n)
	}
	fe.mu.Lock()
	maxAct := fe.maxAct
	fe.mu.Unlock()
	if maxAct != 1 {
		t.Errorf("%d orders were in flight at once, want 1", maxAct)
	}
	for i, o := range orders {
		sd := o.msg.(*ebpf.SetDisabled)
		if want := fmt.Sprintf("c%02d", i); sd.ContainerID != want || sd.Disabled != (i%2 == 0) {
			t.Errorf("order %d = %+v, want %s disabled=%v", i, sd, want, i%2 == 0)
		}
		if i > 0 && o.start.Before(orders[i-1].end) {
			t.Errorf("order %d started before order %d ended", i, i-1)
		}
	}
}

func TestBypass(t *testing.T) {
	t.Parallel()
	fe := &fakeEBPF{}
	r, ready := startEnabled(t, answerOK, fe)
	if ready.Err != nil {
		t.Fatal(ready.Err)
	}
	for _, d := range []time.Duration{-time.Second, 500 * time.Millisecond, 2 * time.Hour} {
		res := r.ask(t, &firewall.Bypass{ContainerID: "c1", Duration: d}).(*firewall.Result)
		if !errors.Is(res.Err, firewall.ErrBadDuration) {
			t.Errorf("bypass of %s answered %v, want ErrBadDuration", d, res.Err)
		}
	}
	if n := len(fe.snapshot()); n != 0 {
		t.Fatalf("%d orders reached the eBPF owner for refused durations", n)
	}

	before := time.Now()
	res := r.ask(t, &firewall.Bypass{ContainerID: "c1"}).(*firewall.Result)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if d := res.Until.Sub(before); d < firewall.DefaultBypass || d > firewall.DefaultBypass+5*time.Second {
		t.Errorf("default bypass ends %s after the request, want %s", d, firewall.DefaultBypass)
	}
	// A short bypass: armed, then tidied by the timer after it lapsed.
	res = r.ask(t, &firewall.Bypass{ContainerID: "c2", Duration: time.Second}).(*firewall.Result)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	waitFor(t, 5*time.Second, "the bypass of c2 tidied", func() bool { return len(fe.snapshot()) == 3 })
	orders := fe.snapshot()
	tidy := orders[2].msg.(*ebpf.SetBypass)
	if tidy.ContainerID != "c2" || !tidy.Until.IsZero() {
		t.Errorf("third order %+v, want the tidy of c2", tidy)
	}
	if orders[2].start.Before(res.Until) {
		t.Errorf("c2 tidied at %s, before its bypass ended at %s", orders[2].start, res.Until)
	}
	// c1's timer is still armed: the drain step cancels it.
	d := r.step(t, cpapi.StepBypassTimersCancel)
	if d.Outcome != supervise.OutcomeDone || !strings.HasPrefix(d.Detail, "cancelled 1 bypass timers") {
		t.Errorf("bypass_timers_cancel = %s %q", d.Outcome, d.Detail)
	}
}

func TestContainerEventsEnforceAndRelease(t *testing.T) {
	t.Parallel()
	fe := &fakeEBPF{}
	r, ready := startEnabled(t, answerOK, fe)
	if ready.Err != nil {
		t.Fatal(ready.Err)
	}
	agent := overseer.Container{ID: "agent-1", Purpose: dockerx.PurposeAgent}
	cp := overseer.Container{ID: "cp-1", Purpose: dockerx.PurposeControlPlane}
	r.sys.Root.Send(r.fw, &overseer.ContainerStarted{Container: cp})
	r.sys.Root.Send(r.fw, &overseer.ContainerStarted{Container: agent})
	r.sys.Root.Send(r.fw, &overseer.ContainerStopped{Container: agent})
	r.sys.Root.Send(r.fw, &overseer.ContainerDestroyed{Container: cp})
	waitFor(t, 5*time.Second, "two orders", func() bool { return len(fe.snapshot()) >= 2 })
	time.Sleep(100 * time.Millisecond) // a wrong third order would show up by now
	orders := fe.snapshot()
	if len(orders) != 2 {
		t.Fatalf("%d orders, want enforce and release of the agent only", len(orders))
	}
	e, ok := orders[0].msg.(*ebpf.Enforce)
	if !ok || e.ContainerID != "agent-1" {
		t.Fatalf("first order %#v, want Enforce of agent-1", orders[0].msg)
	}
	want := "10.99.7.200:15001 10.99.7.201:53 10.99.7.0/24 10.99.7.1"
	if got := fmt.Sprint(e.Config.Proxy, " ", e.Config.DNS, " ", e.Config.Subnet, " ", e.Config.Gateway); got != want {
		t.Errorf("enforced config %s, want %s", got, want)
	}
	if rel, ok := orders[1].msg.(*ebpf.Release); !ok || rel.ContainerID != "agent-1" {
		t.Errorf("second order %#v, want Release of agent-1", orders[1].msg)
	}
}

func TestErrorsReachTheRequester(t *testing.T) {
	t.Parallel()
	fe := &fakeEBPF{fail: fmt.Errorf("container x: %w", ebpf.ErrNotEnforced)}
	r, ready := startEnabled(t, answerOK, fe)
	if ready.Err != nil {
		t.Fatal(ready.Err)
	}
	res := r.ask(t, &firewall.Enable{ContainerID: "x"}).(*firewall.Result)
	if !errors.Is(res.Err, firewall.ErrUnknownContainer) {
		t.Errorf("enable of an unenforced container = %v, want ErrUnknownContainer", res.Err)
	}
	er := r.ask(t, &firewall.Enforce{ContainerID: "x"}).(*firewall.EnforceResult)
	if er.Err == nil {
		t.Error("a failed enforce answered without an error")
	}

	if d := r.step(t, cpapi.StepFirewallQueueClose); d.Outcome != supervise.OutcomeDone {
		t.Fatalf("queue close = %+v", d)
	}
	n := len(fe.snapshot())
	res = r.ask(t, &firewall.Disable{ContainerID: "x"}).(*firewall.Result)
	if !errors.Is(res.Err, firewall.ErrQueueClosed) {
		t.Errorf("disable after the queue closed = %v, want ErrQueueClosed", res.Err)
	}
	if len(fe.snapshot()) != n {
		t.Error("an order reached the eBPF owner after the queue closed")
	}
}

func TestDisabledFirewallRefusesMutations(t *testing.T) {
	t.Parallel()
	r := startFirewall(t, time.Second)
	res, err := r.sys.Root.RequestFuture(r.fw, &firewall.Bypass{ContainerID: "x", Duration: time.Minute}, 5*time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	if rr := res.(*firewall.Result); !errors.Is(rr.Err, firewall.ErrFirewallDisabled) {
		t.Errorf("bypass with the firewall disabled = %v", rr.Err)
	}
	res, err = r.sys.Root.RequestFuture(r.fw, &firewall.GetStatus{}, 5*time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	if st := res.(*firewall.Status); st.Enabled || len(st.Agents) != 0 {
		t.Errorf("status of a disabled firewall = %+v", st)
	}
}
