package netlogger_test

import (
	"encoding/pem"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
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
		StepTimeout: 5 * time.Second,
		OpenSource:  func() (netlog.Source, error) { return f.src, nil },
		Tune:        func(c *netlog.Config) { c.ExportInterval = 50 * time.Millisecond },
		Log:         zap.New(core),
	}
	return f
}

func (f *fixture) spawn(t *testing.T) *actor.PID {
	t.Helper()
	pid, err := f.sys.Root.SpawnNamed(actor.PropsFromProducer(netlogger.New(f.cfg)), "netlogger")
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
	res, err := f.sys.Root.RequestFuture(pid, &supervise.DrainStep{Step: supervise.StepNetloggerStop}, 6*time.Second).Result()
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
	res, _ = f.sys.Root.RequestFuture(pid, &supervise.DrainStep{Step: supervise.StepNetloggerStop}, time.Second).Result()
	if d := res.(*supervise.StepDone); d.Outcome != supervise.OutcomeNothing {
		t.Fatalf("second drain %+v", d)
	}
	res, _ = f.sys.Root.RequestFuture(pid, &supervise.DrainStep{Step: supervise.StepEBPFFlush}, time.Second).Result()
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
	res, _ = f.sys.Root.RequestFuture(pid, &supervise.DrainStep{Step: supervise.StepNetloggerStop}, time.Second).Result()
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
