package auth

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// Spec is how the root spawns auth, with the probes of its three servers
// (none without Enable).
func Spec(cfg Config) supervise.Spec {
	return supervise.Spec{
		Name: cpapi.ActorAuth, Producer: New(cfg),
		Probes: func(*actor.ActorSystem) []supervise.Probe { return cfg.Probes() },
	}
}
