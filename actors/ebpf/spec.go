package ebpf

import (
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// Spec is how the root spawns the eBPF owner; it owns ebpf_flush. A
// restarted owner has an empty container-to-cgroup table: the firewall's
// spec enforces the running agents again.
func Spec(cfg Config) supervise.Spec {
	return supervise.Spec{Name: cpapi.ActorEBPF, Producer: New(cfg), Steps: cpapi.StepsOwnedBy(cpapi.ActorEBPF)}
}
