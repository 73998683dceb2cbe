package netlogger_test

import (
	"encoding/pem"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/actors/firewall/dns"
	"github.com/clawker/clawker-cp/actors/netlogger"
	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/bpf"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/egressrules"
	"github.com/clawker/clawker-cp/pkg/metrics"
	"github.com/clawker/clawker-cp/pkg/netlog"
	"github.com/clawker/clawker-cp/pkg/netlog/netlogtest"
	"github.com/clawker/clawker-cp/pkg/settings"
)

const (
	ctrID = "aaaaaaaaaaaabbbbbbbbbbbbccccccccccccddddddddddddeeeeeeeeeeeeffff"
	cgid  = 777
)

// responder is a fake sibling answering one request type.
func responder(sys *actor.ActorSystem, answer func(msg any) any) *actor.PID {
	return sys.Root.Spawn(actor.PropsFromFunc(func(c actor.Context) {
		if _, ok := c.Message().(actor.SystemMessage); ok {
			return
		}
		if a := answer(c.Message()); a != nil {
			c.Respond(a)
		}
	}))
}

type fixture struct {
	sys  *actor.ActorSystem
	rcv  *netlogtest.Receiver
	src  *netlog.MemSource
	logs *observer.ObservedLogs
	cfg  netlogger.Config
}

func newFixture(t *testing.T, ebpfKnows bool) *fixture {
	t.Helper()
	m := netlogtest.Material(t)
	bundle := filepath.Join(t.TempDir(), "bundle")
	if err := m.WriteServerBundle(bundle); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "collector-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.CA.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	sys := actor.NewActorSystem()
	t.Cleanup(sys.Shutdown)
	core, logs := observer.New(zapcore.DebugLevel)
	f := &fixture{sys: sys, rcv: netlogtest.NewReceiver(t, m, "127.0.0.1:0"), src: netlog.NewMemSource(100000), logs: logs}
	ebpfPID := responder(sys, func(msg any) any {
		if _, ok := msg.(*ebpf.GetState); ok {
			st := &ebpf.State{Loaded: true}
			if ebpfKnows {
				st.Agents = []ebpf.AgentState{{ContainerID: ctrID, Enrollment: egress.Enrollment{CgroupID: cgid}}}
			}
			return st
		}
		return nil
	})
	overseerPID := responder(sys, func(msg any) any {
		if _, ok := msg.(*overseer.GetState); ok {
			return &overseer.State{Containers: []cpapi.ContainerView{{ID: ctrID, Name: "clawker.myapp.dev", Purpose: "agent", Project: "myapp", Agent: "dev", State: cpapi.ContainerRunning}}}
		}
		return nil
	})
	dnsPID := responder(sys, func(msg any) any {
		if _, ok := msg.(*dns.GetIdentities); ok {
			return &dns.Identities{Entries: map[netip.Addr]dns.IdentityEntry{netip.MustParseAddr("203.0.113.30"): {Kernel: 7}}}
		}
		return nil
	})
	fwPID := responder(sys, func(msg any) any {
		if _, ok := msg.(*firewall.ListRules); ok {
			return &firewall.RulesResult{Rules: []egressrules.Entry{{ID: 7, Rule: egressrules.Rule{Dst: "github.com"}}, {ID: 9, Rule: egressrules.Rule{Dst: "example.org"}}}}
		}
		return nil
	})
	f.cfg = netlogger.Config{
		Monitoring: settings.Monitoring{OTLPCA: caFile, EgressEventsPerSecond: 1000},
		AuthDir:    bundle, HostName: "cp-host",
		EBPF: ebpfPID, Overseer: overseerPID, DNS: dnsPID, Firewall: fwPID,
		CgroupOf: func(id string) (string, uint64, error) {
			if id == ctrID {
				return "/sys/fs/cgroup/fake", cgid, nil
			}
			return "", 0, os.ErrNotExist
		},
		OpenSource: func() (netlog.Source, error) { return f.src, nil },
		Tune:       func(c *netlog.Config) { c.ExportInterval = 50 * time.Millisecond },
		Log:        zap.New(core),
	}
	return f
}

func (f *fixture) spawn(t *testing.T) *actor.PID {
	t.Helper()
	// As the root spawns it: the middleware answers the steps it does not own.
	pid, err := f.sys.Root.SpawnNamed(supervise.NewTree().SpecProps(netlogger.Spec(f.cfg), supervise.Intensity{Max: 1, Window: time.Minute}), "netlogger")
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func (f *fixture) put(evs ...bpf.EgressEvent) {
	for i := range evs {
		f.src.Put(netlog.Encode(&evs[i]))
	}
}

func (f *fixture) waitLog(t *testing.T, event string) observer.LoggedEntry {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range f.logs.All() {
			for _, fl := range e.Context {
				if fl.Key == "event" && fl.String == event {
					return e
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %s log line; got %v", event, f.logs.All())
	return observer.LoggedEntry{}
}

func connect(dst string, v egress.Verdict, nw string) bpf.EgressEvent {
	d := netip.MustParseAddrPort(dst)
	ev := bpf.EgressEvent{TsNs: 1, CgroupId: cgid, Pid: 42, Uid: 1000, Family: 2, Proto: 6, Hook: uint8(egress.HookConnect4), Verdict: uint8(v),
		OrigAddr: netlog.AddrWords(netip.AddrFrom16(d.Addr().As16())), OrigPort: netlog.NetPort(d.Port())}
	if nw != "" {
		n := netip.MustParseAddrPort(nw)
		ev.NewAddr, ev.NewPort = netlog.AddrWords(netip.AddrFrom16(n.Addr().As16())), netlog.NetPort(n.Port())
	}
	return ev
}

func check(t *testing.T, r netlogtest.Record, want map[string]any) {
	t.Helper()
	for k, v := range want {
		if r.Attrs[k] != v {
			t.Errorf("%s = %v, want %v (record %v)", k, r.Attrs[k], v, r.Attrs)
		}
	}
}

func TestAgentsEnforcedBeforeStartAreEnriched(t *testing.T) {
	for _, ebpfKnows := range []bool{true, false} { // false: only the worldview and the cgroup lookup know
		t.Run(map[bool]string{true: "ebpf owner", false: "worldview"}[ebpfKnows], func(t *testing.T) {
			f := newFixture(t, ebpfKnows)
			f.rcv.Start(t)
			f.cfg.Monitoring.OTLPEndpoint = f.rcv.Addr
			// The events are in the ring before the netlogger starts.
			f.put(connect("203.0.113.30:443", egress.RedirectProxy, "172.30.0.200:15001"),
				connect("172.30.0.5:8080", egress.AllowSubnet, "172.30.0.5:8080"))
			ev := connect("198.51.100.99:123", egress.DenyUDP, "")
			ev.Hook, ev.Proto = uint8(egress.HookSendmsg4), 17
			f.put(ev)
			f.spawn(t)
			if err := f.rcv.WaitCount(3, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			got := f.rcv.Records()
			common := map[string]any{"container_id": ctrID, "agent": "dev", "project": "myapp", "cgroup_id": int64(cgid)}
			for _, r := range got {
				check(t, r, common)
				if r.Service != "ebpf-egress" || r.Host != "cp-host" || r.ClientCN != certs.NetloggerCommonName {
					t.Errorf("resource %q %q client %q", r.Service, r.Host, r.ClientCN)
				}
			}
			check(t, got[0], map[string]any{"action": "redirected", "verdict": "redirect-proxy", "dst_ip": "203.0.113.30", "dst_port": int64(443), "dst_host": "github.com", "new_ip": "172.30.0.200", "new_port": int64(15001)})
			check(t, got[1], map[string]any{"action": "allowed", "verdict": "allow-subnet", "dst_ip": "172.30.0.5", "dst_port": int64(8080)})
			check(t, got[2], map[string]any{"action": "denied", "verdict": "deny-udp", "dst_ip": "198.51.100.99", "dst_port": int64(123), "l4_proto": "udp"})
			if got[2].Log.EventName != "ebpf.egress.sendmsg" || got[0].Log.EventName != "ebpf.egress.connect" {
				t.Errorf("event names %q %q", got[0].Log.EventName, got[2].Log.EventName)
			}
			f.waitLog(t, "netlogger_connected")
		})
	}
}

func TestCollectorDownAtStartThenUp(t *testing.T) {
	f := newFixture(t, true)
	addr := netlogtest.FreeAddr(t)
	f.cfg.Monitoring.OTLPEndpoint = addr
	pid := f.spawn(t)
	e := f.waitLog(t, "netlogger_unavailable")
	if !strings.Contains(e.Message, "cannot reach the collector at "+addr) {
		t.Fatalf("unavailable line %q", e.Message)
	}
	f.put(connect("203.0.113.30:443", egress.RedirectProxy, "172.30.0.200:15001"))
	// Still answering: nothing waits on the collector.
	if _, err := f.sys.Root.RequestFuture(pid, &netlogger.GetStats{}, time.Second).Result(); err != nil {
		t.Fatal(err)
	}
	f.rcv.Addr = addr
	f.rcv.Start(t)
	if err := f.rcv.WaitCount(1, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	f.waitLog(t, "netlogger_available")
	f.put(connect("172.30.0.5:8080", egress.AllowSubnet, "172.30.0.5:8080"))
	if err := f.rcv.WaitCount(2, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// One line for the outage, however often the connection was retried.
	if n := f.countLogs("netlogger_unavailable"); n != 1 {
		t.Fatalf("%d netlogger_unavailable lines for one outage", n)
	}
}

func TestDrainStepExportsEverythingRead(t *testing.T) {
	f := newFixture(t, true)
	f.rcv.Start(t)
	f.cfg.Monitoring.OTLPEndpoint = f.rcv.Addr
	f.cfg.Tune = func(c *netlog.Config) { c.ExportInterval = time.Hour; c.Buffer = 20000 } // only the drain exports
	pid := f.spawn(t)
	f.waitLog(t, "netlogger_connected")
	const n = 5000
	for i := 0; i < n; i++ {
		ev := connect("203.0.113.30:443", egress.RedirectProxy, "172.30.0.200:15001")
		ev.Pid = uint32(i)
		f.put(ev)
	}
	// A generous bound (a loaded CI machine under -race): the step must
	// export everything read, however long that takes within it.
	res, err := f.sys.Root.RequestFuture(pid, &supervise.DrainStep{Step: cpapi.StepNetloggerStop, Deadline: time.Now().Add(30 * time.Second)}, 31*time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	d := res.(*supervise.StepDone)
	if d.Outcome != supervise.OutcomeDone || !strings.Contains(d.Detail, "read 5000 records from the ring, exported 5000 to "+f.rcv.Addr) {
		t.Fatalf("step %+v", d)
	}
	if c := f.rcv.Count(); c != n {
		t.Fatalf("receiver has %d of %d", c, n)
	}
	// A second drain has nothing left.
	res, _ = f.sys.Root.RequestFuture(pid, &supervise.DrainStep{Step: cpapi.StepNetloggerStop}, time.Second).Result()
	if d := res.(*supervise.StepDone); d.Outcome != supervise.OutcomeNothing {
		t.Fatalf("second drain %+v", d)
	}
	res, _ = f.sys.Root.RequestFuture(pid, &supervise.DrainStep{Step: cpapi.StepEBPFFlush}, time.Second).Result()
	if d := res.(*supervise.StepDone); d.Outcome != supervise.OutcomeFailed {
		t.Fatalf("foreign step %+v", d)
	}
}

func TestOffAndMisconfiguredDoNotGetInTheWay(t *testing.T) {
	f := newFixture(t, true)
	pid := f.spawn(t) // no endpoint
	f.waitLog(t, "netlogger_off")
	res, _ := f.sys.Root.RequestFuture(pid, &netlogger.GetStats{}, time.Second).Result()
	if st := res.(*netlogger.Stats); st.Enabled {
		t.Fatalf("stats %+v", st)
	}
	res, _ = f.sys.Root.RequestFuture(pid, &supervise.DrainStep{Step: cpapi.StepNetloggerStop}, time.Second).Result()
	if d := res.(*supervise.StepDone); d.Outcome != supervise.OutcomeNothing || !strings.Contains(d.Detail, "monitoring.otlp_endpoint") {
		t.Fatalf("drain %+v", d)
	}

	// A bundle without the netlogger pair: one line naming the fix.
	g := newFixture(t, true)
	g.rcv.Start(t)
	g.cfg.Monitoring.OTLPEndpoint = g.rcv.Addr
	for _, n := range []string{certs.NetloggerCertFile, certs.NetloggerKeyFile} {
		if err := os.Remove(filepath.Join(g.cfg.AuthDir, n)); err != nil {
			t.Fatal(err)
		}
	}
	pid2, err := g.sys.Root.SpawnNamed(actor.PropsFromProducer(netlogger.New(g.cfg)), "netlogger2")
	if err != nil {
		t.Fatal(err)
	}
	e := g.waitLog(t, "netlogger_unavailable")
	if !strings.Contains(e.Message, "clawker auth rotate") {
		t.Fatalf("unavailable line %q", e.Message)
	}
	if _, err := g.sys.Root.RequestFuture(pid2, &netlogger.GetStats{}, time.Second).Result(); err != nil {
		t.Fatal(err)
	}
}

// countLogs is how many lines carry event.
func (f *fixture) countLogs(event string) int {
	n := 0
	for _, e := range f.logs.All() {
		for _, fl := range e.Context {
			if fl.Key == "event" && fl.String == event {
				n++
			}
		}
	}
	return n
}

// scrapeRegistry is the CP's /metrics view of the netlogger: a registry
// whose collector asks the actor, as actors/cp wires it.
func scrapeRegistry(t *testing.T, sys *actor.ActorSystem, pid *actor.PID) *metrics.Registry {
	t.Helper()
	reg := metrics.New()
	if err := reg.Register(metrics.Netlogger(func() (netlog.Stats, bool, bool) {
		res, err := sys.Root.RequestFuture(pid, &netlogger.GetStats{}, time.Second).Result()
		st, ok := res.(*netlogger.Stats)
		if err != nil || !ok {
			return netlog.Stats{}, false, false
		}
		return st.Stats, st.Enabled, true
	})); err != nil {
		t.Fatal(err)
	}
	return reg
}

// series reads one series' value (name{labels} as exposed), -1 if absent.
func series(t *testing.T, reg *metrics.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue next
				}
			}
			if m.Counter != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

func TestCollectorKilledMidStreamDropsAreCountedAndFlowResumes(t *testing.T) {
	f := newFixture(t, true)
	f.rcv.Start(t)
	f.cfg.Monitoring.OTLPEndpoint = f.rcv.Addr
	f.cfg.Tune = func(c *netlog.Config) {
		c.ExportInterval, c.Buffer, c.BatchSize, c.RetryFor = 20*time.Millisecond, 50, 10, 300*time.Millisecond
	}
	pid := f.spawn(t)
	reg := scrapeRegistry(t, f.sys, pid)
	burst := func(from, n int) {
		for i := from; i < from+n; i++ {
			ev := connect("203.0.113.30:443", egress.RedirectProxy, "172.30.0.200:15001")
			ev.Pid = uint32(i)
			f.put(ev)
		}
	}
	burst(0, 5)
	if err := f.rcv.WaitCount(5, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	f.waitLog(t, "netlogger_connected")
	if up := series(t, reg, "clawker_netlogger_collector_up", nil); up != 1 {
		t.Fatalf("collector_up %v while it answers", up)
	}

	f.rcv.Stop()
	f.waitLog(t, "netlogger_unavailable")
	burst(5, 500) // ten times the buffer
	stats := func() netlog.Stats {
		res, err := f.sys.Root.RequestFuture(pid, &netlogger.GetStats{}, time.Second).Result()
		if err != nil {
			t.Fatal(err)
		}
		return res.(*netlogger.Stats).Stats
	}
	// Settled: every record read is exported, dropped or given up.
	deadline := time.Now().Add(15 * time.Second)
	var st netlog.Stats
	for st = stats(); !(st.Read == 505 && st.InFlight == 0 && st.Parked == 0) && time.Now().Before(deadline); st = stats() {
		time.Sleep(20 * time.Millisecond)
	}
	down := series(t, reg, "clawker_netlogger_records_lost_total", map[string]string{"stage": "dropped_collector_down"})
	failed := series(t, reg, "clawker_netlogger_records_lost_total", map[string]string{"stage": "export_failed"})
	exported := series(t, reg, "clawker_netlogger_records_exported_total", nil)
	read := series(t, reg, "clawker_netlogger_records_read_total", nil)
	if read != 505 || exported != 5 || down < 400 || down+failed+exported != read {
		t.Fatalf("after the outage: read %v exported %v dropped while down %v failed %v; stats %+v", read, exported, down, failed, st)
	}
	if up := series(t, reg, "clawker_netlogger_collector_up", nil); up != 0 {
		t.Fatalf("collector_up %v while it is away", up)
	}
	if n := f.countLogs("netlogger_unavailable"); n != 1 {
		t.Fatalf("%d netlogger_unavailable lines for one outage", n)
	}

	// Back: the next records flow without a restart of anything.
	f.rcv.Start(t)
	f.waitLog(t, "netlogger_available")
	burst(1000, 5)
	if err := f.rcv.WaitCount(10, 20*time.Second); err != nil {
		t.Fatalf("%v: %+v", err, stats())
	}
	var pids []int64
	for _, r := range f.rcv.Records()[5:] {
		pids = append(pids, r.Attrs["pid"].(int64))
	}
	if len(pids) != 5 || pids[0] != 1000 || pids[4] != 1004 {
		t.Fatalf("after the return the receiver got pids %v", pids)
	}
	// The receiver holds a batch before the exporter hears it was taken
	// (and counts it): wait for the count rather than read it once.
	deadline = time.Now().Add(10 * time.Second)
	got := series(t, reg, "clawker_netlogger_records_exported_total", nil)
	for got != 10 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		got = series(t, reg, "clawker_netlogger_records_exported_total", nil)
	}
	if got != 10 {
		t.Fatalf("exported %v, want 10", got)
	}
}

// A restarted netlogger adds to the counters of the one before: the
// series never go back.
func TestCountersSurviveARestart(t *testing.T) {
	f := newFixture(t, true)
	f.rcv.Start(t)
	f.cfg.Monitoring.OTLPEndpoint = f.rcv.Addr
	srcs := []*netlog.MemSource{netlog.NewMemSource(100), netlog.NewMemSource(100)}
	var opened atomic.Int32
	f.cfg.OpenSource = func() (netlog.Source, error) { return srcs[min(int(opened.Add(1))-1, 1)], nil }
	// Under a supervisor of the tree, as in the CP: a panic restarts it.
	tree, in := supervise.NewTree(), supervise.Intensity{Max: 3, Window: time.Minute}
	parent := f.sys.Root.Spawn(tree.Props(func() actor.Actor {
		return actor.ReceiveFunc(func(c actor.Context) {
			if _, ok := c.Message().(*actor.Started); ok {
				_, _ = c.SpawnNamed(tree.Props(netlogger.New(f.cfg), in), "netlogger")
			}
		})
	}, in))
	pid := actor.NewPID(f.sys.Address(), parent.Id+"/netlogger")
	reg := scrapeRegistry(t, f.sys, pid)
	ev := connect("203.0.113.30:443", egress.RedirectProxy, "172.30.0.200:15001")
	for range 3 {
		srcs[0].Put(netlog.Encode(&ev))
	}
	if err := f.rcv.WaitCount(3, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	waitSeries(t, reg, "clawker_netlogger_records_exported_total", 3)
	f.sys.Root.Send(pid, &supervise.Fault{Kind: supervise.FaultPanic})
	for deadline := time.Now().Add(10 * time.Second); opened.Load() < 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the netlogger was not restarted")
		}
	}
	for range 2 {
		srcs[1].Put(netlog.Encode(&ev))
	}
	if err := f.rcv.WaitCount(5, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	waitSeries(t, reg, "clawker_netlogger_records_exported_total", 5)
	if got := series(t, reg, "clawker_netlogger_records_read_total", nil); got != 5 {
		t.Fatalf("read %v after the restart, want 5", got)
	}
}

func waitSeries(t *testing.T, reg *metrics.Registry, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := series(t, reg, name, nil)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want %v", name, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
