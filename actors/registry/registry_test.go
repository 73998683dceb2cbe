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

// The client's calls reach a real registry on a real sqlite file: a
// Register whose MayCreate refuses writes nothing and answers the refusal,
// one whose MayCreate allows it creates the binding, and then the binding
// is answered without asking MayCreate; a container bound to another key
// is refused without asking it either.
func TestClientRegisterMayCreate(t *testing.T) {
	sys := actortest.System(t)
	pid := sys.Root.Spawn(actor.PropsFromProducer(registry.New(registry.Config{
		Path: filepath.Join(t.TempDir(), "controlplane.db"), FlushInterval: time.Hour, OpTimeout: 5 * time.Second, Log: zap.NewNop(),
	})))
	t.Cleanup(func() { _ = sys.Root.StopFuture(pid).Wait() })
	c := registry.NewClient(sys, pid, 10*time.Second)
	ctx := context.Background()
	ag := agentdb.Agent{Project: "p", AgentName: "a", ContainerID: strings.Repeat("c", 64), Thumbprint: strings.Repeat("d", 64)}
	errNoToken := errors.New("no token")
	asked := 0
	refuse := func(context.Context) error { asked++; return errNoToken }
	allow := func(context.Context) error { asked++; return nil }

	r, err := c.Register(ctx, registry.Register{Agent: ag, MayCreate: refuse})
	if err != nil || !errors.Is(r.Err, errNoToken) || asked != 1 {
		t.Fatalf("a refused new binding: %+v, %v, asked %d; want the refusal, asked once", r, err, asked)
	}
	if l, err := c.List(ctx); err != nil || l.Err != nil || len(l.Agents) != 0 {
		t.Fatalf("after a refused binding: %+v, %v", l, err)
	}
	r, err = c.Register(ctx, registry.Register{Agent: ag, MayCreate: allow})
	if err != nil || r.Err != nil || !r.Created || asked != 2 {
		t.Fatalf("an allowed new binding: %+v, %v, asked %d", r, err, asked)
	}
	again, err := c.Register(ctx, registry.Register{Agent: ag, MayCreate: refuse})
	if err != nil || again.Err != nil || again.Created || again.Agent.Key != r.Agent.Key || asked != 2 {
		t.Fatalf("the existing binding: %+v, %v, asked %d; want it, MayCreate not asked", again, err, asked-2)
	}
	other := ag
	other.Thumbprint = strings.Repeat("e", 64)
	if x, err := c.Register(ctx, registry.Register{Agent: other, MayCreate: allow}); err != nil || !errors.Is(x.Err, agentdb.ErrContainerBound) || asked != 2 {
		t.Fatalf("another key for the bound container: %+v, %v, asked %d; want ErrContainerBound, MayCreate not asked", x, err, asked-2)
	}
	if h, err := c.CheckHealth(ctx); err != nil || h.Err != nil {
		t.Errorf("CheckHealth: %+v, %v", h, err)
	}
}

// BenchmarkRegisterExisting is the Register RPC of an agent that is bound
// already (a reconnect) as the registry sees it: before, a Get then a
// Register (two requests, two sqlite steps); now one Register whose
// MayCreate is never asked.
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
	never := func(context.Context) error { b.Fatal("MayCreate asked for an existing binding"); return nil }
	b.Run("MayCreate Register", func(b *testing.B) {
		for b.Loop() {
			if x, err := c.Register(ctx, registry.Register{Agent: ag, MayCreate: never}); err != nil || x.Err != nil {
				b.Fatal(x, err)
			}
		}
	})
}
