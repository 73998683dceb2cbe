package netlogger

import (
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// Spec is how the root spawns the netlogger; it owns netlogger_stop.
func Spec(cfg Config) supervise.Spec {
	return supervise.Spec{Name: cpapi.ActorNetlogger, Producer: New(cfg), Steps: cpapi.StepsOwnedBy(cpapi.ActorNetlogger)}
}
