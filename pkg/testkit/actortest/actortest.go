// Package actortest builds the actor systems the actors' tests spawn their
// subjects in. It imports protoactor-go and nothing of this module, so it
// stays a leaf beside pkg/testkit (kept apart so tests that never touch an
// actor do not link protoactor).
package actortest

import (
	"log/slog"
	"testing"

	"github.com/asynkron/protoactor-go/actor"
)

// Quiet returns an actor system whose own log goes nowhere. The caller
// shuts it down (or lets the test process end it).
func Quiet() *actor.ActorSystem {
	return actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.DiscardHandler)
	}))
}

// System is Quiet, shut down when the test ends.
func System(t testing.TB) *actor.ActorSystem {
	t.Helper()
	sys := Quiet()
	t.Cleanup(sys.Shutdown)
	return sys
}
