package watcher

import (
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// Spec is how the root spawns the watcher.
func Spec(cfg Config) supervise.Spec {
	return supervise.Spec{Name: cpapi.ActorWatcher, Producer: New(cfg)}
}
