package ebpf_test

import (
	"errors"
	"log/slog"
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
	"github.com/clawker/clawker-cp/pkg/egress"
)

// fakePrograms keeps enrollments and attachments in memory and records the
// calls that change them. The real thing is exercised end to end in
// cmd/clawker-cp's firewall tests.
type fakePrograms struct {
	mu       sync.Mutex
	enrolled map[uint64]egress.Enrollment
	attached map[uint64]bool
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
	f.enrolled[cgid] = egress.Enrollment{CgroupID: cgid, Config: cfg}
	return nil
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
func (f *fakePrograms) SyncRoutes([]egress.Route) error { return nil }
func (f *fakePrograms) Routes() ([]egress.Route, error) { return nil, nil }
func (f *fakePrograms) Reused() []string                { return nil }
func (f *fakePrograms) Migrated() []egress.Migration    { return nil }
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
	p := &parent{props: tree.Props(ebpf.New(cfg), in), ready: make(chan *supervise.Ready, 2)}
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

	d := ask[*supervise.StepDone](t, sys, pid, &supervise.DrainStep{Step: supervise.StepEBPFFlush})
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
	d := ask[*supervise.StepDone](t, sys, pid, &supervise.DrainStep{Step: supervise.StepEBPFFlush})
	if d.Outcome != supervise.OutcomeNothing || flushes != 0 {
		t.Errorf("flush without pins = %+v (%d flushes)", d, flushes)
	}
	if err := os.Mkdir(cfg.PinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	sys, pid, _ = start(t, cfg)
	d = ask[*supervise.StepDone](t, sys, pid, &supervise.DrainStep{Step: supervise.StepEBPFFlush})
	if d.Outcome != supervise.OutcomeDone || flushes != 1 {
		t.Errorf("flush with an earlier generation's pins = %+v (%d flushes)", d, flushes)
	}
}
