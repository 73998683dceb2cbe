package firewall_test

import (
	"log/slog"
	"net/netip"
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
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// enrollingEBPF enrolls the containers it is told to enforce at the
// address addrOf gives and forgets them on release, as the eBPF owner
// does with Docker's address of the container.
type enrollingEBPF struct {
	mu       sync.Mutex
	addrOf   map[string]netip.Addr
	enrolled map[string]netip.Addr
}

func (f *enrollingEBPF) Receive(ctx actor.Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch m := ctx.Message().(type) {
	case *ebpf.Enforce:
		f.enrolled[m.ContainerID] = f.addrOf[m.ContainerID]
		ctx.Respond(&ebpf.Enforced{CgroupID: 1})
	case *ebpf.Release:
		delete(f.enrolled, m.ContainerID)
		ctx.Respond(&ebpf.Done{})
	case *ebpf.GetState:
		st := &ebpf.State{Loaded: true}
		for id, ip := range f.enrolled {
			st.Agents = append(st.Agents, ebpf.AgentState{ContainerID: id, Enrollment: egress.Enrollment{Config: egress.Config{Self: ip}}})
		}
		ctx.Respond(st)
	case *ebpf.SetBypass, *ebpf.SetDisabled, *ebpf.SyncRoutes, *ebpf.SyncIPRules:
		ctx.Respond(&ebpf.Done{})
	}
}

// subscribingWorld is a worldview that takes the firewall's subscription.
type subscribingWorld struct {
	worldOverseer
	subscribed chan *actor.PID
}

func (o *subscribingWorld) Receive(ctx actor.Context) {
	if m, ok := ctx.Message().(*overseer.Subscribe); ok {
		o.subscribed <- m.Subscriber
		return
	}
	o.worldOverseer.Receive(ctx)
}

// The policy doc names each enforced agent's address with its project
// (the worldview's label), after its start, and drops it after its stop.
func TestAgentsProjectsPublished(t *testing.T) {
	t.Parallel()
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.DiscardHandler)
	}))
	fe := &enrollingEBPF{enrolled: map[string]netip.Addr{}, addrOf: map[string]netip.Addr{
		"c1": netip.MustParseAddr("10.99.7.10"), "c2": netip.MustParseAddr("10.99.7.11")}}
	world := &subscribingWorld{subscribed: make(chan *actor.PID, 4), worldOverseer: worldOverseer{containers: []cpapi.ContainerView{
		{ID: "c1", Purpose: dockerx.PurposeAgent, Project: "alpha", Agent: "a", State: cpapi.ContainerRunning},
		{ID: "c2", Purpose: dockerx.PurposeAgent, Project: "beta", Agent: "b", State: cpapi.ContainerRunning},
	}}}
	pubs := &publications{}
	tree := supervise.NewTree()
	in := supervise.Intensity{Max: 5, Window: time.Minute}
	cfg := firewall.Config{
		Enable: true, Tree: tree, Intensity: in, RulesDir: t.TempDir(), Publish: pubs.publish,
		EBPF:      sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return fe })),
		Overseer:  sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return world })),
		Network:   firewall.AgentNetwork{Name: "clawker-net", Subnet: testSubnet, Gateway: netip.MustParseAddr("10.99.7.1")},
		ProxyPort: 15001, StackWait: 300 * time.Millisecond, StackDial: answerOK, OpTimeout: 5 * time.Second, Log: zap.NewNop(),
	}
	ready := make(chan *supervise.Ready, 4)
	p := &parent{props: func() *actor.Props { return tree.SpecProps(firewall.Spec(cfg), in) }, ready: ready}
	top, err := sys.Root.SpawnNamed(tree.Props(func() actor.Actor { return p }, in), "cp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.Root.StopFuture(top).Wait(); sys.Shutdown() })
	if m := <-ready; m.Err != nil {
		t.Fatal(m.Err)
	}
	fw := <-world.subscribed
	lastAgents := func() map[string]string {
		docs := pubs.all()
		if len(docs) == 0 {
			return nil
		}
		return docs[len(docs)-1].Agents
	}
	for _, id := range []string{"c1", "c2"} {
		sys.Root.Send(fw, &overseer.ContainerStarted{Container: overseer.Container{ID: id, Purpose: dockerx.PurposeAgent}})
	}
	waitFor(t, 5*time.Second, "both agents in the doc", func() bool {
		a := lastAgents()
		return a["10.99.7.10"] == "alpha" && a["10.99.7.11"] == "beta"
	})
	doc := pubs.all()[len(pubs.all())-1]
	if _, err := doc.Compile(); err != nil {
		t.Fatalf("published doc does not compile: %v", err)
	}
	sys.Root.Send(fw, &overseer.ContainerStopped{Container: overseer.Container{ID: "c1", Purpose: dockerx.PurposeAgent}})
	waitFor(t, 5*time.Second, "c1 gone from the doc", func() bool {
		a := lastAgents()
		_, still := a["10.99.7.10"]
		return !still && a["10.99.7.11"] == "beta"
	})
	// A rule change keeps the map.
	r := &rig{sys: sys, fw: fw}
	if res := r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{{Dst: "api.example.com", Projects: []string{"beta"}}}}); res.Err != nil {
		t.Fatal(res.Err)
	}
	if a := lastAgents(); a["10.99.7.11"] != "beta" {
		t.Fatalf("agents after a rule change: %v", a)
	}
}
