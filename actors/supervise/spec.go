package supervise

import (
	"context"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// Spec is how one actor is spawned and looked after. Each actor package
// exports one for its Config; actors/cp lists the root's children's specs
// in start order and the root spawns them (Tree.SpecProps).
type Spec struct {
	// Name is the actor's name below its parent: for a child of the root
	// one of the cpapi.Actor* constants.
	Name     string
	Producer actor.Producer
	// Steps are the drain steps the actor owns (cpapi.DrainSteps); it
	// never sees another, the middleware answers those.
	Steps []string
	// Probes, when set, gives the /healthz probes of the actor's resource
	// (a port, a file), built once the actor system runs. Every child of
	// the root but health also gets a liveness probe (Ping) without asking.
	Probes func(sys *actor.ActorSystem) []Probe
	// AfterRestart maps the name of a sibling (or the actor's own) to the
	// messages the actor is sent when that one is back after a restart
	// past ready: what the restarted one lost and this one can give back.
	AfterRestart map[string][]any
}

// Probe checks one port or resource a subsystem depends on. Check must
// honour ctx: it is bounded by the probe timeout.
type Probe struct {
	Name  string
	Check func(ctx context.Context) error
}

// PIDOf is the PID of the actor at path below the root of the CP's tree
// (a cpapi.Actor* constant). A PID's id is the actor's path, fixed by the
// names, so it holds across restarts.
func PIDOf(sys *actor.ActorSystem, path string) *actor.PID {
	return actor.NewPID(sys.Address(), cpapi.RootName+"/"+path)
}
