package grpc_test

import (
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	cpgrpc "github.com/clawker/clawker-cp/actors/grpc"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/testkit/actortest"
)

// newTestSystem is an actor system that logs nowhere, shut down when the
// test ends (actortest.System, under the name this package's tests use).
func newTestSystem(t testing.TB) *actor.ActorSystem { return actortest.System(t) }

// parent stands in for the root: it spawns the grpc actor and passes its
// Ready on.
type parent struct {
	props *actor.Props
	ready chan error
}

func (p *parent) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if _, err := ctx.SpawnNamed(p.props, "grpc"); err != nil {
			p.ready <- err
		}
	case *supervise.Ready:
		p.ready <- m.Err
	}
}

// spawnGRPC runs the real grpc actor with cfg (its Tree and Intensity
// filled in here) under a stand-in root, and waits for its Ready.
func spawnGRPC(t testing.TB, sys *actor.ActorSystem, cfg cpgrpc.Config) {
	t.Helper()
	cfg.Tree = supervise.NewTree()
	cfg.Intensity = supervise.Intensity{Max: 3, Window: time.Minute}
	p := &parent{ready: make(chan error, 1), props: cfg.Tree.Props(cpgrpc.New(cfg), cfg.Intensity)}
	pid := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return p }))
	t.Cleanup(func() { _ = sys.Root.StopFuture(pid).Wait() })
	select {
	case err := <-p.ready:
		if err != nil {
			t.Fatalf("grpc actor did not start: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("grpc actor did not report Ready")
	}
}
