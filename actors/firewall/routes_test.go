package firewall_test

import (
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// spawnRouted runs an enabled firewall with a rules store and fe as its
// eBPF owner.
func spawnRouted(t *testing.T, fe *fakeEBPF) *rig {
	t.Helper()
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.DiscardHandler)
	}))
	tree := supervise.NewTree()
	in := supervise.Intensity{Max: 5, Window: time.Minute}
	cfg := firewall.Config{
		Enable: true, Tree: tree, Intensity: in, RulesDir: t.TempDir(),
		EBPF:      sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return fe })),
		Overseer:  sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return &subscriberSink{subscribed: make(chan *actor.PID, 4)} })),
		Network:   firewall.AgentNetwork{Name: "clawker-net", Subnet: testSubnet, Gateway: netip.MustParseAddr("10.99.7.1")},
		ProxyPort: 15001, StackWait: 300 * time.Millisecond, StackDial: answerOK,
		OpTimeout: 5 * time.Second, Log: zap.NewNop(),
	}
	ready := make(chan *supervise.Ready, 4)
	p := &parent{props: func() *actor.Props { return tree.SpecProps(firewall.Spec(cfg), in) }, ready: ready}
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
		if m.Err != nil {
			t.Fatalf("Ready = %v", m.Err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the firewall never reported Ready")
	}
	fw, _ := tree.Lookup("cp/firewall")
	return &rig{sys: sys, tree: tree, fw: fw, stepTimeout: time.Second}
}

// lastRoutes waits for the eBPF owner's latest SyncRoutes to satisfy ok.
func lastRoutes(t *testing.T, fe *fakeEBPF, what string, ok func([]egress.Route) bool) []egress.Route {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var last []egress.Route
		seen := false
		for _, o := range fe.snapshot() {
			if m, is := o.msg.(*ebpf.SyncRoutes); is {
				last, seen = m.Routes, true
			}
		}
		if seen && ok(last) {
			return last
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kernel's routes never became %s; last %+v", what, last)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRuleChangesSyncTheKernelRoutes(t *testing.T) {
	t.Parallel()
	fe := &fakeEBPF{}
	r := spawnRouted(t, fe)
	res := r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{
		rule("github.com", "", 0, ""),                     // https 443: the catch-all's
		rule("github.com", egressrules.SSH, 0, ""),        // ssh 22: routed
		rule("db.example.com", egressrules.TCP, 5432, ""), // routed
	}})
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	ids := map[string]uint32{}
	for _, e := range res.Rules {
		ids[e.Key()] = e.ID
	}
	// What the proxy opens from the same rules (its catch-all and health
	// ports avoided the same way).
	want := egressrules.Compile(res.Rules, nil).Routes(15001, firewall.ProxyHealthPort(15001))
	listen := func(id uint32, port uint16) uint16 {
		for _, l := range want.Listeners {
			if l.RuleID == id && l.Port == port {
				return l.Listen
			}
		}
		t.Fatalf("no listener for rule %d port %d", id, port)
		return 0
	}
	wantRoutes := []egress.Route{
		// github.com's addresses carry its lowest id, the https rule's.
		{Identity: min(ids["github.com:https:443"], ids["github.com:ssh:22"]), Port: 22, Proto: egress.TCP, ListenerPort: listen(ids["github.com:ssh:22"], 22)},
		{Identity: ids["db.example.com:tcp:5432"], Port: 5432, Proto: egress.TCP, ListenerPort: listen(ids["db.example.com:tcp:5432"], 5432)},
	}
	sortRoutes(wantRoutes)
	lastRoutes(t, fe, "github.com's ssh and db's tcp", func(got []egress.Route) bool {
		sortRoutes(got)
		return slices.Equal(got, wantRoutes)
	})

	// A hand route (FirewallSyncRoutes) stays beside the rules' across the
	// next rule change.
	hand := egress.Route{Identity: 999, Port: 7, Proto: egress.UDP, ListenerPort: 15999}
	res2, err := r.sys.Root.RequestFuture(r.fw, &firewall.SyncRoutes{Routes: []egress.Route{hand}}, 5*time.Second).Result()
	if err != nil || res2.(*firewall.Result).Err != nil {
		t.Fatalf("SyncRoutes: %v %v", res2, err)
	}
	if res := r.rules(t, &firewall.RemoveRule{Rule: rule("db.example.com", egressrules.TCP, 5432, "")}); res.Err != nil {
		t.Fatal(res.Err)
	}
	lastRoutes(t, fe, "github.com's ssh and the hand route", func(got []egress.Route) bool {
		return len(got) == 2 && slices.Contains(got, hand) && slices.Contains(got, wantRoutes[0])
	})
}

func TestAddRefusesARangeTooLargeToRoute(t *testing.T) {
	t.Parallel()
	fe := &fakeEBPF{}
	r := spawnRouted(t, fe)
	res := r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{
		rule("ok.example.com", egressrules.TCP, 22, ""),
		{Dst: "big.example.com", Proto: egressrules.TCP, Port: egressrules.PortRange{Lo: 2000, Hi: 2100}},
	}})
	var fe2 *egressrules.FieldError
	if !errors.As(res.Err, &fe2) || fe2.Index != 1 || fe2.Field != "port" || fe2.Value != "2000-2100" {
		t.Fatalf("add: %v, want rules[1] port 2000-2100 refused", res.Err)
	}
	if list := r.rules(t, &firewall.ListRules{}); len(list.Rules) != 0 {
		t.Errorf("stored %v after a refused batch", keys(list.Rules))
	}
}

func sortRoutes(rs []egress.Route) {
	slices.SortFunc(rs, func(a, b egress.Route) int {
		if a.Identity != b.Identity {
			return int(a.Identity) - int(b.Identity)
		}
		return int(a.Port) - int(b.Port)
	})
}
