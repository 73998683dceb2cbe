package registry_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/registry"
	"github.com/clawker/clawker-cp/pkg/agentdb"
	"github.com/clawker/clawker-cp/pkg/testkit/actortest"
)

// The client's calls reach a real registry on a real sqlite file: an
// ExistingOnly Register refuses a new binding without writing it, a plain
// one creates it, and then ExistingOnly answers it.
func TestClientRegisterExistingOnly(t *testing.T) {
	sys := actortest.System(t)
	pid := sys.Root.Spawn(actor.PropsFromProducer(registry.New(registry.Config{
		Path: filepath.Join(t.TempDir(), "controlplane.db"), FlushInterval: time.Hour, OpTimeout: 5 * time.Second, Log: zap.NewNop(),
	})))
	t.Cleanup(func() { _ = sys.Root.StopFuture(pid).Wait() })
	c := registry.NewClient(sys, pid, 10*time.Second)
	ctx := context.Background()
	ag := agentdb.Agent{Project: "p", AgentName: "a", ContainerID: strings.Repeat("c", 64), Thumbprint: strings.Repeat("d", 64)}

	r, err := c.Register(ctx, registry.Register{Agent: ag, ExistingOnly: true})
	if err != nil || !errors.Is(r.Err, agentdb.ErrNotFound) {
		t.Fatalf("ExistingOnly on a new binding: %+v, %v; want ErrNotFound", r, err)
	}
	if l, err := c.List(ctx); err != nil || l.Err != nil || len(l.Agents) != 0 {
		t.Fatalf("after a refused binding: %+v, %v", l, err)
	}
	r, err = c.Register(ctx, registry.Register{Agent: ag})
	if err != nil || r.Err != nil || !r.Created {
		t.Fatalf("Register: %+v, %v", r, err)
	}
	again, err := c.Register(ctx, registry.Register{Agent: ag, ExistingOnly: true})
	if err != nil || again.Err != nil || again.Created || again.Agent.Key != r.Agent.Key {
		t.Fatalf("ExistingOnly on the binding: %+v, %v", again, err)
	}
	if h, err := c.CheckHealth(ctx); err != nil || h.Err != nil {
		t.Errorf("CheckHealth: %+v, %v", h, err)
	}
}

// BenchmarkRegisterExisting is the Register RPC of an agent that is bound
// already (a reconnect) as the registry sees it: before, a Get then a
// Register (two requests, two sqlite steps); now one ExistingOnly Register.
func BenchmarkRegisterExisting(b *testing.B) {
	sys := actortest.System(b)
	pid := sys.Root.Spawn(actor.PropsFromProducer(registry.New(registry.Config{
		Path: filepath.Join(b.TempDir(), "controlplane.db"), FlushInterval: time.Hour, OpTimeout: 5 * time.Second, Log: zap.NewNop(),
	})))
	b.Cleanup(func() { _ = sys.Root.StopFuture(pid).Wait() })
	c := registry.NewClient(sys, pid, 10*time.Second)
	ctx := context.Background()
	ag := agentdb.Agent{Project: "p", AgentName: "a", ContainerID: strings.Repeat("c", 64), Thumbprint: strings.Repeat("d", 64)}
	r, err := c.Register(ctx, registry.Register{Agent: ag})
	if err != nil || r.Err != nil {
		b.Fatal(r, err)
	}
	b.Run("Get then Register", func(b *testing.B) {
		for b.Loop() {
			g, err := c.Get(ctx, r.Agent.Key)
			if err != nil || g.Err != nil {
				b.Fatal(g, err)
			}
			if x, err := c.Register(ctx, registry.Register{Agent: ag}); err != nil || x.Err != nil {
				b.Fatal(x, err)
			}
		}
	})
	b.Run("ExistingOnly Register", func(b *testing.B) {
		for b.Loop() {
			if x, err := c.Register(ctx, registry.Register{Agent: ag, ExistingOnly: true}); err != nil || x.Err != nil {
				b.Fatal(x, err)
			}
		}
	})
}
