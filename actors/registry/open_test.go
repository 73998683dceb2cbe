package registry_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/registry"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/agentdb"
	"github.com/clawker/clawker-cp/pkg/testkit"
	"github.com/clawker/clawker-cp/pkg/testkit/actortest"
)

// parent spawns the registry and hands its Ready over.
type parent struct {
	props *actor.Props
	ready chan *supervise.Ready
}

func (p *parent) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if _, err := ctx.SpawnNamed(p.props, "registry"); err != nil {
			p.ready <- &supervise.Ready{Err: err}
		}
	case *supervise.Ready:
		p.ready <- m
	}
}

// TestAnswersWhileTheFileOpens holds the database file's exclusive lock
// from another connection, so the registry's open waits on it (sqlite's
// busy timeout) as it would on a slow disk or a long migration. Meanwhile
// the registry answers a ping and a health check, and holds a Register
// until the file is open, then answers it.
func TestAnswersWhileTheFileOpens(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "controlplane.db")
	locker, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close()
	conn, err := locker.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, q := range []string{"CREATE TABLE held (x INTEGER)", "BEGIN EXCLUSIVE"} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}

	sys := actortest.System(t)
	tree := supervise.NewTree()
	in := supervise.Intensity{Max: 1, Window: time.Minute}
	cfg := registry.Config{Path: path, FlushInterval: time.Hour, OpTimeout: 5 * time.Second, Log: zap.NewNop()}
	p := &parent{props: tree.SpecProps(registry.Spec(cfg), in), ready: make(chan *supervise.Ready, 2)}
	top, err := sys.Root.SpawnNamed(tree.Props(func() actor.Actor { return p }, in), "cp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.Root.StopFuture(top).Wait() })
	testkit.WaitFor(t, 5*time.Second, "the registry spawned", func() bool { _, ok := tree.Lookup("cp/registry"); return ok })
	reg := actor.NewPID(sys.Address(), "cp/registry")

	if _, err := sys.Root.RequestFuture(reg, &supervise.Ping{}, 2*time.Second).Result(); err != nil {
		t.Fatalf("ping while the file opens: %v", err)
	}
	res, err := sys.Root.RequestFuture(reg, &registry.CheckHealth{}, 2*time.Second).Result()
	if err != nil {
		t.Fatalf("health check while the file opens: %v", err)
	}
	if h, ok := res.(*registry.HealthResult); !ok || !errors.Is(h.Err, registry.ErrOpening) {
		t.Fatalf("health check while the file opens = %#v, want ErrOpening", res)
	}
	select {
	case m := <-p.ready:
		t.Fatalf("Ready %+v while the lock is held", m)
	default:
	}
	agent := agentdb.Agent{Project: "p", AgentName: "a", ContainerID: strings.Repeat("c", 64), Thumbprint: strings.Repeat("d", 64)}
	register := sys.Root.RequestFuture(reg, &registry.Register{Agent: agent}, 20*time.Second)

	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-p.ready:
		if m.Err != nil {
			t.Fatalf("Ready after the lock was released: %v", m.Err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no Ready after the lock was released")
	}
	res, err = register.Result()
	if err != nil {
		t.Fatalf("the Register held during the open: %v", err)
	}
	if r, ok := res.(*registry.RegisterResult); !ok || r.Err != nil || !r.Created {
		t.Fatalf("the Register held during the open = %#v", res)
	}
	res, err = sys.Root.RequestFuture(reg, &registry.CheckHealth{}, 2*time.Second).Result()
	if h, ok := res.(*registry.HealthResult); err != nil || !ok || h.Err != nil {
		t.Fatalf("health check once open = %#v, %v", res, err)
	}
}
