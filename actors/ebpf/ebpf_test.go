package ebpf_test

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/egress"
)

// fakePrograms keeps enrollments and attachments in memory and records the
// calls that change them. The real thing is exercised end to end in
// cmd/clawker-cp's firewall tests.
type fakePrograms struct {
	mu       sync.Mutex
	enrolled map[uint64]egress.Enrollment
	attached map[uint64]bool
	peers    map[netip.Addr]uint32
	cuts     []string // Cut calls, "<cgid> <path>"
	calls    []string
	flushed  bool
	closed   bool
}

func newFake() *fakePrograms {
	return &fakePrograms{enrolled: map[uint64]egress.Enrollment{}, attached: map[uint64]bool{}}
}

func (f *fakePrograms) log(s string) { f.calls = append(f.calls, s) }

func (f *fakePrograms) AttachCgroup(path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log("attach " + path)
	f.attached[cgidOfPath(path)] = true
	return nil
}
func (f *fakePrograms) DetachCgroupID(cgid uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log("detach " + itoa(cgid))
	delete(f.attached, cgid)
	return nil
}
func (f *fakePrograms) Attached() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []uint64
	for id := range f.attached {
		out = append(out, id)
	}
	return out
}
func (f *fakePrograms) Enroll(cgid uint64, cfg egress.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log("enroll " + itoa(cgid))
	f.enrolled[cgid] = egress.Enrollment{CgroupID: cgid, Config: cfg.Canonical()} // as the kernel reports it back
	return nil
}
func (f *fakePrograms) Reconfigure(cgid uint64, cfg egress.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log("reconfigure " + itoa(cgid))
	e, ok := f.enrolled[cgid]
	if !ok {
		return egress.ErrNotEnrolled
	}
	e.Config = cfg.Canonical()
	f.enrolled[cgid] = e
	return nil
}
func (f *fakePrograms) SetPeer(ip netip.Addr, project uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.peers == nil {
		f.peers = map[netip.Addr]uint32{}
	}
	f.peers[ip] = project
	return nil
}
func (f *fakePrograms) DeletePeer(ip netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.peers, ip)
	return nil
}
func (f *fakePrograms) Cut(cgid uint64, path string, initPid int) (egress.CutResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cuts = append(f.cuts, itoa(cgid)+" "+path)
	return egress.CutResult{}, nil
}
func (f *fakePrograms) takeCuts() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := strings.Join(f.cuts, ", ")
	f.cuts = nil
	return s
}
func (f *fakePrograms) Unenroll(cgid uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log("unenroll " + itoa(cgid))
	delete(f.enrolled, cgid)
	return nil
}
func (f *fakePrograms) Enrolled() ([]egress.Enrollment, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []egress.Enrollment
	for _, e := range f.enrolled {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CgroupID < out[j].CgroupID })
	return out, nil
}
func (f *fakePrograms) modify(cgid uint64, fn func(*egress.Enrollment)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.enrolled[cgid]
	if !ok {
		return egress.ErrNotEnrolled
	}
	fn(&e)
	f.enrolled[cgid] = e
	return nil
}
func (f *fakePrograms) Bypass(cgid uint64, until time.Time) error {
	return f.modify(cgid, func(e *egress.Enrollment) { e.BypassUntil = until })
}
func (f *fakePrograms) Disable(cgid uint64) error {
	return f.modify(cgid, func(e *egress.Enrollment) { e.Disabled = true })
}
func (f *fakePrograms) Enable(cgid uint64) error {
	return f.modify(cgid, func(e *egress.Enrollment) { e.Disabled, e.BypassUntil = false, time.Time{} })
}
func (f *fakePrograms) SyncRoutes([]egress.Route) error        { return nil }
func (f *fakePrograms) SyncIPRules([]egress.IPRuleEntry) error { return nil }
func (f *fakePrograms) Routes() ([]egress.Route, error)        { return nil, nil }
func (f *fakePrograms) SetIdentity(ip netip.Addr, id uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log(fmt.Sprintf("identity %s=%d", ip, id))
	return nil
}
func (f *fakePrograms) DeleteIdentity(ip netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log("forget " + ip.String())
	return nil
}
func (f *fakePrograms) Reused() []string             { return nil }
func (f *fakePrograms) Migrated() []egress.Migration { return nil }
func (f *fakePrograms) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}
func (f *fakePrograms) FlushAll() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flushed = true
	return nil
}

func (f *fakePrograms) takeCalls() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := strings.Join(f.calls, ", ")
	f.calls = nil
	return s
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }

// Container cgroups in the fake: /cg/<container>/<generation>; the cgroup
// id is the generation, so a "restart" is a new generation.
var (
	genMu sync.Mutex
	gens  = map[string]uint64{}
)

func cgidOfPath(p string) uint64 {
	id, _ := strconv.ParseUint(filepath.Base(p), 10, 64)
	return id
}

func cgroupOf(containerID string) (string, uint64, error) {
	genMu.Lock()
	defer genMu.Unlock()
	id, ok := gens[containerID]
	if !ok {
		return "", 0, errors.New("no such container")
	}
	return "/cg/" + containerID + "/" + itoa(id), id, nil
}

func setGen(containerID string, id uint64) {
	genMu.Lock()
	gens[containerID] = id
	genMu.Unlock()
}

type parent struct {
	props *actor.Props
	ready chan *supervise.Ready
}

func (p *parent) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if _, err := ctx.SpawnNamed(p.props, "ebpf"); err != nil {
			panic(err)
		}
	case *supervise.Ready:
		p.ready <- m
	}
}

func start(t *testing.T, cfg ebpf.Config) (*actor.ActorSystem, *actor.PID, *supervise.Ready) {
	t.Helper()
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.DiscardHandler)
	}))
	tree := supervise.NewTree()
	in := supervise.Intensity{Max: 1, Window: time.Minute}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	p := &parent{props: tree.SpecProps(ebpf.Spec(cfg), in), ready: make(chan *supervise.Ready, 2)}
	top, err := sys.Root.SpawnNamed(tree.Props(func() actor.Actor { return p }, in), "cp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sys.Root.StopFuture(top).Wait()
		sys.Shutdown()
	})
	var r *supervise.Ready
	select {
	case r = <-p.ready:
	case <-time.After(5 * time.Second):
		t.Fatal("no Ready")
	}
	pid, _ := tree.Lookup("cp/ebpf")
	return sys, pid, r
}

func ask[T any](t *testing.T, sys *actor.ActorSystem, pid *actor.PID, msg interface{}) T {
	t.Helper()
	res, err := sys.Root.RequestFuture(pid, msg, 5*time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	v, ok := res.(T)
	if !ok {
		t.Fatalf("%T answered %T", msg, res)
	}
	return v
}

func TestEnforceLifecycle(t *testing.T) {
	f := newFake()
	// Left by an earlier generation: cgroup 7 still has its links, cgroup 9
	// lost them with its cgroup.
	f.enrolled[7] = egress.Enrollment{CgroupID: 7}
	f.enrolled[9] = egress.Enrollment{CgroupID: 9}
	f.attached[7] = true
	sys, pid, ready := start(t, ebpf.Config{Enable: true, PinDir: "/unused", Open: func() (ebpf.Programs, error) { return f, nil }, CgroupOf: cgroupOf})
	if ready.Err != nil {
		t.Fatal(ready.Err)
	}
	if got := f.takeCalls(); got != "unenroll 9" {
		t.Errorf("start-up calls %q, want the stale enrollment of cgroup 9 retired", got)
	}

	setGen("ca", 11)
	cfg := egress.Config{Events: true}
	if r := ask[*ebpf.Enforced](t, sys, pid, &ebpf.Enforce{ContainerID: "ca", Config: cfg}); r.Err != nil || r.CgroupID != 11 {
		t.Fatalf("enforce = %+v", r)
	}
	// Enrolled before attached: the first packet already finds its config.
	if got := f.takeCalls(); got != "enroll 11, attach /cg/ca/11" {
		t.Errorf("enforce calls %q", got)
	}
	if r := ask[*ebpf.Done](t, sys, pid, &ebpf.SetDisabled{ContainerID: "ca", Disabled: true}); r.Err != nil {
		t.Fatal(r.Err)
	}
	// Enforcing again on the same cgroup keeps the disable in force.
	if r := ask[*ebpf.Enforced](t, sys, pid, &ebpf.Enforce{ContainerID: "ca", Config: cfg}); r.Err != nil {
		t.Fatal(r.Err)
	}
	if got := f.takeCalls(); got != "attach /cg/ca/11" {
		t.Errorf("re-enforce calls %q, want no re-enrollment", got)
	}
	if !f.enrolled[11].Disabled {
		t.Error("re-enforcing cleared the disable")
	}

	// The container restarted: new cgroup 12, the old one is retired.
	setGen("ca", 12)
	r := ask[*ebpf.Enforced](t, sys, pid, &ebpf.Enforce{ContainerID: "ca", Config: cfg})
	if r.Err != nil || r.CgroupID != 12 || r.Retired != 11 {
		t.Fatalf("enforce after restart = %+v", r)
	}
	if got := f.takeCalls(); got != "detach 11, unenroll 11, enroll 12, attach /cg/ca/12" {
		t.Errorf("restart calls %q", got)
	}

	st := ask[*ebpf.State](t, sys, pid, &ebpf.GetState{})
	if len(st.Agents) != 1 || st.Agents[0].ContainerID != "ca" || st.Agents[0].Enrollment.CgroupID != 12 {
		t.Errorf("state %+v", st)
	}

	if d := ask[*ebpf.Done](t, sys, pid, &ebpf.SetBypass{ContainerID: "other", Until: time.Now().Add(time.Minute)}); !errors.Is(d.Err, ebpf.ErrNotEnforced) {
		t.Errorf("bypass of an unknown container = %v", d.Err)
	}
	if d := ask[*ebpf.Done](t, sys, pid, &ebpf.Release{ContainerID: "ca"}); d.Err != nil {
		t.Fatal(d.Err)
	}
	if got := f.takeCalls(); got != "detach 12, unenroll 12" {
		t.Errorf("release calls %q", got)
	}

	d := ask[*supervise.StepDone](t, sys, pid, &supervise.DrainStep{Step: cpapi.StepEBPFFlush})
	if d.Outcome != supervise.OutcomeDone || !f.flushed {
		t.Errorf("ebpf_flush = %+v, flushed=%v", d, f.flushed)
	}
	if d := ask[*ebpf.Enforced](t, sys, pid, &ebpf.Enforce{ContainerID: "ca"}); !errors.Is(d.Err, ebpf.ErrNotLoaded) {
		t.Errorf("enforce after the flush = %v", d.Err)
	}
}

func TestLoadFailureFailsStartUp(t *testing.T) {
	_, _, ready := start(t, ebpf.Config{Enable: true, PinDir: "/unused",
		Open: func() (ebpf.Programs, error) { return nil, errors.New("needs CAP_SYS_ADMIN") }})
	if ready.Err == nil || !strings.Contains(ready.Err.Error(), "needs CAP_SYS_ADMIN") {
		t.Fatalf("Ready = %v, want the load error", ready.Err)
	}
}

func TestDisabledFlushesOnlyAnEarlierGenerationsPins(t *testing.T) {
	dir := t.TempDir()
	flushes := 0
	cfg := ebpf.Config{PinDir: filepath.Join(dir, "pins"), FlushPins: func() error { flushes++; return nil },
		Open: func() (ebpf.Programs, error) { t.Error("loaded with the firewall disabled"); return nil, nil }}
	sys, pid, ready := start(t, cfg)
	if ready.Err != nil {
		t.Fatal(ready.Err)
	}
	d := ask[*supervise.StepDone](t, sys, pid, &supervise.DrainStep{Step: cpapi.StepEBPFFlush})
	if d.Outcome != supervise.OutcomeNothing || flushes != 0 {
		t.Errorf("flush without pins = %+v (%d flushes)", d, flushes)
	}
	if err := os.Mkdir(cfg.PinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	sys, pid, _ = start(t, cfg)
	d = ask[*supervise.StepDone](t, sys, pid, &supervise.DrainStep{Step: cpapi.StepEBPFFlush})
	if d.Outcome != supervise.OutcomeDone || flushes != 1 {
		t.Errorf("flush with an earlier generation's pins = %+v (%d flushes)", d, flushes)
	}
}

// TestAgentPeersAndCut: Enforce fills in the agent's address and project,
// records it as a peer (and forgets it on Release), and every point where
// enforcement resumes cuts the sockets connected while unfiltered; an
// enrollment with another config (an older build's) is reconfigured and
// keeps its disable.
func TestAgentPeersAndCut(t *testing.T) {
	f := newFake()
	agents := map[string]ebpf.Agent{
		"ca": {Project: "p1", IPs: []netip.Addr{netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("10.5.0.7")}},
		"cb": {Project: "p1", IPs: []netip.Addr{netip.MustParseAddr("10.5.0.8")}},
		"cc": {Project: "p2", IPs: []netip.Addr{netip.MustParseAddr("10.5.0.9")}},
	}
	sys, pid, ready := start(t, ebpf.Config{Enable: true, PinDir: "/unused", Open: func() (ebpf.Programs, error) { return f, nil }, CgroupOf: cgroupOf,
		AgentOf: func(id string) (ebpf.Agent, error) { return agents[id], nil }})
	if ready.Err != nil {
		t.Fatal(ready.Err)
	}
	cfg := egress.Config{
		Proxy: netip.MustParseAddrPort("10.5.0.200:15001"), DNS: netip.MustParseAddrPort("10.5.0.201:53"),
		Subnet: netip.MustParsePrefix("10.5.0.0/24"), AgentToAgent: egress.AgentToAgentProject,
	}
	for i, id := range []string{"ca", "cb", "cc"} {
		setGen(id, uint64(21+i))
		if r := ask[*ebpf.Enforced](t, sys, pid, &ebpf.Enforce{ContainerID: id, Config: cfg}); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	ca, cb, cc := f.enrolled[21].Config, f.enrolled[22].Config, f.enrolled[23].Config
	if ca.Self != netip.MustParseAddr("10.5.0.7") || cb.Self != netip.MustParseAddr("10.5.0.8") {
		t.Errorf("self addresses %v %v, want the ones on the agent network", ca.Self, cb.Self)
	}
	if ca.ProjectID == 0 || ca.ProjectID != cb.ProjectID || cc.ProjectID == ca.ProjectID {
		t.Errorf("project ids %d %d %d: want p1's shared and p2's another", ca.ProjectID, cb.ProjectID, cc.ProjectID)
	}
	if f.peers[ca.Self] != ca.ProjectID || f.peers[cc.Self] != cc.ProjectID || len(f.peers) != 3 {
		t.Errorf("peers %v", f.peers)
	}
	if got := f.takeCuts(); got != "21 /cg/ca/21, 22 /cg/cb/22, 23 /cg/cc/23" {
		t.Errorf("cuts at enforce: %q", got)
	}

	// Resuming enforcement cuts; starting a bypass or a disable does not.
	for _, m := range []interface{}{
		&ebpf.SetBypass{ContainerID: "ca", Until: time.Now().Add(time.Minute)},
		&ebpf.SetBypass{ContainerID: "ca"},
		&ebpf.SetDisabled{ContainerID: "ca", Disabled: true},
		&ebpf.SetDisabled{ContainerID: "ca", Disabled: false},
	} {
		if d := ask[*ebpf.Done](t, sys, pid, m); d.Err != nil {
			t.Fatal(d.Err)
		}
	}
	if got := f.takeCuts(); got != "21 /cg/ca/21, 21 /cg/ca/21" {
		t.Errorf("cuts %q, want one after the bypass ended and one after the enable", got)
	}

	// An enrollment of an older build (no CP, no project) under a disable:
	// brought up to date, still disabled.
	f.enrolled[22] = egress.Enrollment{CgroupID: 22, Config: egress.Config{Proxy: cfg.Proxy, DNS: cfg.DNS}.Canonical(), Disabled: true}
	f.takeCalls()
	cfg.CP, cfg.CPPorts = netip.MustParseAddr("10.5.0.202"), [2]uint16{7444, 4444}
	if r := ask[*ebpf.Enforced](t, sys, pid, &ebpf.Enforce{ContainerID: "cb", Config: cfg}); r.Err != nil {
		t.Fatal(r.Err)
	}
	if got := f.takeCalls(); got != "reconfigure 22, attach /cg/cb/22" {
		t.Errorf("calls %q, want a reconfigure", got)
	}
	if e := f.enrolled[22]; !e.Disabled || e.Config.CP != cfg.CP || e.Config.ProjectID != cb.ProjectID {
		t.Errorf("after reconfigure %+v", e)
	}

	if d := ask[*ebpf.Done](t, sys, pid, &ebpf.Release{ContainerID: "cc"}); d.Err != nil {
		t.Fatal(d.Err)
	}
	if _, ok := f.peers[cc.Self]; ok || len(f.peers) != 2 {
		t.Errorf("peers after release %v", f.peers)
	}
}

// TestEnforceLooksUpOffTheMailbox: while an Enforce waits for its Docker
// inspect, the owner still answers GetState and SetIdentities (the DNS
// sibling's answers must not wait behind a slow daemon).
func TestEnforceLooksUpOffTheMailbox(t *testing.T) {
	f := newFake()
	release := make(chan struct{})
	sys, pid, ready := start(t, ebpf.Config{Enable: true, PinDir: "/unused", Open: func() (ebpf.Programs, error) { return f, nil }, CgroupOf: cgroupOf,
		AgentOf: func(string) (ebpf.Agent, error) {
			<-release
			return ebpf.Agent{Project: "p", IPs: []netip.Addr{netip.MustParseAddr("10.5.0.7")}}, nil
		}})
	if ready.Err != nil {
		t.Fatal(ready.Err)
	}
	cfg := egress.Config{Proxy: netip.MustParseAddrPort("10.5.0.200:15001"), DNS: netip.MustParseAddrPort("10.5.0.201:53"), Subnet: netip.MustParsePrefix("10.5.0.0/24")}
	setGen("slow", 31)
	pending := sys.Root.RequestFuture(pid, &ebpf.Enforce{ContainerID: "slow", Config: cfg}, 10*time.Second)
	if st := ask[*ebpf.State](t, sys, pid, &ebpf.GetState{}); st.Err != nil {
		t.Fatalf("GetState while an Enforce is looking up: %v", st.Err)
	}
	if d := ask[*ebpf.Done](t, sys, pid, &ebpf.SetIdentities{Set: map[netip.Addr]uint32{netip.MustParseAddr("203.0.113.7"): 1}}); d.Err != nil {
		t.Fatalf("SetIdentities while an Enforce is looking up: %v", d.Err)
	}
	f.mu.Lock()
	_, early := f.enrolled[31]
	f.mu.Unlock()
	if early {
		t.Fatal("the cgroup was enrolled before its lookup ended")
	}
	close(release)
	res, err := pending.Result()
	if err != nil {
		t.Fatal(err)
	}
	if r := res.(*ebpf.Enforced); r.Err != nil || f.enrolled[31].Config.Self != netip.MustParseAddr("10.5.0.7") {
		t.Fatalf("the Enforce after its lookup: %+v, enrolled %+v", r, f.enrolled[31])
	}
}
