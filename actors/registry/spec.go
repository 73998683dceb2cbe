package registry

import (
	"context"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// probeTimeout bounds the registry_db probe's request.
const probeTimeout = time.Second

// Spec is how the root spawns the registry, with its probe registry_db: the
// database answers a ping.
func Spec(cfg Config) supervise.Spec {
	return supervise.Spec{
		Name: cpapi.ActorRegistry, Producer: New(cfg),
		Probes: func(sys *actor.ActorSystem) []supervise.Probe {
			pid := supervise.PIDOf(sys, cpapi.ActorRegistry)
			return []supervise.Probe{{Name: "registry_db", Check: func(ctx context.Context) error {
				h, err := NewClient(sys, pid, probeTimeout).CheckHealth(ctx)
				if err != nil {
					return fmt.Errorf("registry did not answer: %w", err)
				}
				return h.Err
			}}}
		},
	}
}
