package dockerfeed

import (
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// Spec is how the root spawns the Docker feed. When the overseer comes back
// from a restart with an empty worldview, the feed republishes the
// containers it knows (Resync).
func Spec(cfg Config) supervise.Spec {
	return supervise.Spec{
		Name: cpapi.ActorDockerfeed, Producer: New(cfg),
		AfterRestart: map[string][]any{cpapi.ActorOverseer: {&Resync{}}},
	}
}
