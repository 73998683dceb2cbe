package health

import (
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// Spec is how the root spawns the health actor. Its probes are handed to
// it once the tree is ready (RegisterProbes, SetReady), and again by
// whoever builds the tree when it restarts (Spec.AfterRestart).
func Spec(cfg Config) supervise.Spec {
	return supervise.Spec{Name: cpapi.ActorHealth, Producer: New(cfg)}
}
