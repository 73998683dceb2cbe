package auth

import (
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/ory"
	"github.com/clawker/clawker-cp/pkg/ory/orytest"
	"github.com/clawker/clawker-cp/pkg/testkit"
	"github.com/clawker/clawker-cp/pkg/testkit/actortest"
)

// memberParent spawns one member and hands its Ready over.
type memberParent struct {
	props *actor.Props
	ready chan *supervise.Ready
}

func (p *memberParent) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if _, err := ctx.SpawnNamed(p.props, ory.Hydra); err != nil {
			p.ready <- &supervise.Ready{Err: err}
		}
	case *supervise.Ready:
		p.ready <- m
	}
}

// startedPIDs lists the pids of the ory_process_started lines logged.
func startedPIDs(logs *observer.ObservedLogs) []int {
	var pids []int
	for _, e := range logs.FilterField(zap.String("event", "ory_process_started")).All() {
		pids = append(pids, int(e.ContextMap()["pid"].(int64)))
	}
	return pids
}

// spawnMember runs one member of mc under a parent named auth, as the
// auth actor does, in a system of its own.
func spawnMember(t *testing.T, mc memberConfig) (*actor.ActorSystem, *supervise.Tree, *memberParent, *actor.PID) {
	t.Helper()
	sys := actortest.System(t)
	tree := supervise.NewTree()
	in := supervise.Intensity{Max: 5, Window: time.Minute}
	p := &memberParent{props: tree.Props(newMember(mc), in), ready: make(chan *supervise.Ready, 4)}
	top, err := sys.Root.SpawnNamed(tree.Props(func() actor.Actor { return p }, in), "auth")
	if err != nil {
		t.Fatal(err)
	}
	return sys, tree, p, top
}

// TestMemberAnswersWhileAServerWaitsOutItsGrace runs a "hydra" that never
// becomes ready and ignores SIGTERM, with a stop grace far longer than the
// test waits. The member reports the failed start without waiting out the
// grace, answers a ping while the process still runs, and once restarted
// starts the next process only after the previous one is gone.
func TestMemberAnswersWhileAServerWaitsOutItsGrace(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), ory.Hydra)
	if err := os.WriteFile(bin, []byte("#!/bin/sh\ntrap '' TERM\nwhile :; do sleep 1; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	env := orytest.NewEnv(t)
	core, logs := observer.New(zap.DebugLevel)
	started := func() []int { return startedPIDs(logs) }
	mc := memberConfig{
		name: ory.Hydra, binary: bin, ory: env.Config,
		readyTimeout: 300 * time.Millisecond, stopGrace: time.Minute, output: io.Discard, log: zap.New(core),
	}
	sys, tree, p, top := spawnMember(t, mc)
	t.Cleanup(func() {
		// SIGKILL to each process group ends the grace; then the final stop
		// has nothing left to wait for.
		for _, pid := range started() {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
		_ = sys.Root.StopFuture(top).Wait()
	})
	hydra := actor.NewPID(sys.Address(), "auth/"+ory.Hydra)

	select {
	case m := <-p.ready:
		if m.Err == nil {
			t.Fatal("Ready without an error from a server that never became ready")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no Ready: the member is waiting out the stop grace on its mailbox")
	}
	first := started()
	if len(first) != 1 {
		t.Fatalf("processes started: %v", first)
	}
	if _, err := sys.Root.RequestFuture(hydra, &supervise.Ping{}, 2*time.Second).Result(); err != nil {
		t.Fatalf("ping while the process is being stopped: %v", err)
	}
	if syscall.Kill(first[0], 0) != nil {
		t.Fatal("the process is gone already: nothing was in flight")
	}

	// What the auth actor does with a member that did not come back.
	sys.Root.Send(hydra, &failMember{reason: "test"})
	testkit.WaitFor(t, 10*time.Second, "the member restarted", func() bool {
		n, ok := tree.Snapshot("auth/" + ory.Hydra)
		return ok && n.Restarts == 1
	})
	if _, err := sys.Root.RequestFuture(hydra, &supervise.Ping{}, 2*time.Second).Result(); err != nil {
		t.Fatalf("ping while the restarted member waits for the previous process: %v", err)
	}
	if got := started(); len(got) != 1 || syscall.Kill(first[0], 0) != nil {
		t.Fatalf("processes started %v while the first one still ran", got)
	}
	_ = syscall.Kill(-first[0], syscall.SIGKILL)
	testkit.WaitFor(t, 10*time.Second, "the next process started", func() bool { return len(started()) == 2 })
}

// TestMemberReplacesAHungServer runs the real Hydra, stops it with
// SIGSTOP once ready (it still runs to the kernel and to Docker, and only
// its answers stop) and sees the member take it for hung after three
// failed probes, log ory_unavailable and restart with a new process.
func TestMemberReplacesAHungServer(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(orytest.BinDir(t, ory.Hydra), ory.Hydra)
	env := orytest.NewEnv(t)
	core, logs := observer.New(zap.DebugLevel)
	started := func() []int { return startedPIDs(logs) }
	mc := memberConfig{
		name: ory.Hydra, binary: bin, ory: env.Config,
		readyTimeout: 30 * time.Second, stopGrace: time.Second, output: io.Discard, liveEvery: 200 * time.Millisecond, log: zap.New(core),
	}
	sys, tree, p, top := spawnMember(t, mc)
	t.Cleanup(func() {
		for _, pid := range started() {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
		_ = sys.Root.StopFuture(top).Wait()
	})
	select {
	case m := <-p.ready:
		if m.Err != nil {
			t.Fatalf("hydra did not start: %v", m.Err)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("no Ready from hydra")
	}
	first := started()
	if len(first) != 1 {
		t.Fatalf("processes started: %v", first)
	}
	if err := syscall.Kill(first[0], syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 20*time.Second, "the hung server replaced by a new process", func() bool {
		n, ok := tree.Snapshot("auth/" + ory.Hydra)
		return ok && n.Restarts == 1 && len(started()) == 2
	})
	if n := len(logs.FilterField(zap.String("event", "ory_unavailable")).All()); n != 1 {
		t.Errorf("%d ory_unavailable lines, want 1", n)
	}
	testkit.WaitFor(t, 10*time.Second, "the hung process gone", func() bool { return syscall.Kill(first[0], 0) != nil })
}
