package dns

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/actors/firewall/stack"
	"github.com/clawker/clawker-cp/pkg/stackapi"
	"github.com/clawker/clawker-cp/pkg/testkit/actortest"
)

// fakeEBPF records the identity orders and holds each answer until the
// test lets it go (hold), so a test can see that a report is answered only
// after the kernel map was written.
type fakeEBPF struct {
	mu     sync.Mutex
	kernel map[netip.Addr]uint32
	orders int
	hold   chan struct{} // nil: answer at once
}

func (f *fakeEBPF) Receive(ctx actor.Context) {
	m, ok := ctx.Message().(*ebpf.SetIdentities)
	if !ok {
		return
	}
	if f.hold != nil {
		<-f.hold
	}
	f.mu.Lock()
	f.orders++
	for ip, id := range m.Set {
		f.kernel[ip] = id
	}
	for _, ip := range m.Delete {
		delete(f.kernel, ip)
	}
	f.mu.Unlock()
	ctx.Respond(&ebpf.Done{})
}

func (f *fakeEBPF) snapshot() (map[netip.Addr]uint32, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[netip.Addr]uint32, len(f.kernel))
	for k, v := range f.kernel {
		out[k] = v
	}
	return out, f.orders
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type rig struct {
	sys   *actor.ActorSystem
	fake  *fakeEBPF
	clock *clock
	dns   *actor.PID
}

func newRig(t *testing.T, hold chan struct{}) *rig {
	t.Helper()
	sys := actortest.System(t)
	fake := &fakeEBPF{kernel: map[netip.Addr]uint32{}, hold: hold}
	epid := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return fake }))
	c := &clock{now: time.Unix(1_000_000, 0)}
	// A long GC interval: the test drives the GC itself.
	pid := sys.Root.Spawn(actor.PropsFromProducer(New(Config{Member: stack.Member{}, EBPF: epid, GCInterval: time.Hour, Now: c.Now})))
	return &rig{sys: sys, fake: fake, clock: c, dns: pid}
}

func (r *rig) report(t *testing.T, answers ...stackapi.Answer) error {
	t.Helper()
	res, err := r.sys.Root.RequestFuture(r.dns, &ReportAnswers{Answers: answers}, 5*time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	return res.(*AnswersDone).Err
}

func ans(name, ip string, ttl uint32, ids ...uint32) stackapi.Answer {
	return stackapi.Answer{Name: name, IP: netip.MustParseAddr(ip), RuleIDs: ids, TTL: ttl}
}

func TestReportWritesTheKernelBeforeItIsAnswered(t *testing.T) {
	hold := make(chan struct{})
	r := newRig(t, hold)
	f := r.sys.Root.RequestFuture(r.dns, &ReportAnswers{Answers: []stackapi.Answer{ans("example.com", "203.0.113.7", 60, 4)}}, 5*time.Second)
	done := make(chan struct{})
	go func() { _, _ = f.Result(); close(done) }()
	select {
	case <-done:
		t.Fatal("the report was answered before the eBPF owner wrote the address")
	case <-time.After(200 * time.Millisecond):
	}
	close(hold)
	<-done
	k, _ := r.fake.snapshot()
	if k[netip.MustParseAddr("203.0.113.7")] != 4 {
		t.Fatalf("kernel table %v, want 203.0.113.7 -> 4", k)
	}
}

func TestSharedAddressKeepsEveryRuleAndExpires(t *testing.T) {
	r := newRig(t, nil)
	ip := netip.MustParseAddr("203.0.113.7")
	// Two allowed names behind one CDN address: the kernel gets the
	// lowest id, the table keeps both.
	if err := r.report(t, ans("b.example.com", "203.0.113.7", 60, 9)); err != nil {
		t.Fatal(err)
	}
	if err := r.report(t, ans("a.example.org", "203.0.113.7", 30, 3)); err != nil {
		t.Fatal(err)
	}
	k, orders := r.fake.snapshot()
	if k[ip] != 3 || orders != 2 {
		t.Fatalf("kernel %v after %d orders, want 3 after 2", k, orders)
	}
	res, _ := r.sys.Root.RequestFuture(r.dns, &GetIdentities{}, time.Second).Result()
	e := res.(*Identities).Entries[ip]
	if len(e.Rules) != 2 || e.Kernel != 3 {
		t.Fatalf("entry %+v, want rules 3 and 9, kernel 3", e)
	}
	// The same answer again changes nothing in the kernel.
	if err := r.report(t, ans("a.example.org", "203.0.113.7", 30, 3)); err != nil {
		t.Fatal(err)
	}
	if _, n := r.fake.snapshot(); n != 2 {
		t.Fatalf("%d kernel orders after a repeat, want still 2", n)
	}
	// Rule 3's entry ends at TTL 30 + grace 30; rule 9's at 60 + 30.
	r.clock.Add(61 * time.Second)
	r.sys.Root.Send(r.dns, &gcTick{})
	waitKernel(t, r, func(k map[netip.Addr]uint32) bool { return k[ip] == 9 }, "the address rewritten to rule 9 once rule 3 expired")
	r.clock.Add(30 * time.Second)
	r.sys.Root.Send(r.dns, &gcTick{})
	waitKernel(t, r, func(k map[netip.Addr]uint32) bool { _, ok := k[ip]; return !ok }, "the address forgotten once every rule expired")
}

func TestReportWithoutTheFirewallFails(t *testing.T) {
	sys := actortest.System(t)
	pid := sys.Root.Spawn(actor.PropsFromProducer(New(Config{})))
	res, err := sys.Root.RequestFuture(pid, &ReportAnswers{Answers: []stackapi.Answer{ans("example.com", "203.0.113.7", 60, 1)}}, time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	if res.(*AnswersDone).Err == nil {
		t.Fatal("a report was accepted with the firewall disabled (no eBPF owner)")
	}
}

func waitKernel(t *testing.T, r *rig, cond func(map[netip.Addr]uint32) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		k, _ := r.fake.snapshot()
		if cond(k) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: kernel %v", what, k)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
