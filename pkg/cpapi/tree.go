package cpapi

// RootName is the root supervisor's PID id; every other actor's path
// starts with it.
const RootName = "clawker-cp"

// The root's children, by name. A name is also the child's PID path below
// the root (e.g. "clawker-cp/registry"), fixed for the life of the CP, so
// peers address each other by it and it survives restarts.
const (
	ActorHealth     = "health"
	ActorOverseer   = "overseer"
	ActorRegistry   = "registry"
	ActorEBPF       = "ebpf"
	ActorFirewall   = "firewall"
	ActorNetlogger  = "netlogger"
	ActorDockerfeed = "dockerfeed"
	ActorWatcher    = "watcher"
	ActorAuth       = "auth"
	ActorGRPC       = "grpc"
)

// The firewall's two children, the members of the stack: their names
// below the firewall, and their paths below the root.
const (
	MemberDNS   = "dns"
	MemberProxy = "proxy"
	ActorDNS    = ActorFirewall + "/" + MemberDNS
	ActorProxy  = ActorFirewall + "/" + MemberProxy
)

// The steps of the ordered drain.
const (
	StepFirewallQueueClose = "firewall_queue_close"
	StepGRPCStop           = "grpc_stop"
	StepBypassTimersCancel = "bypass_timers_cancel"
	StepStackStop          = "stack_stop"
	StepNetloggerStop      = "netlogger_stop"
	StepDNSGCStop          = "dns_gc_stop"
	StepEBPFFlush          = "ebpf_flush"
)

// DrainStep is one step of the ordered drain and the root's child that
// owns it. Each step is bounded by control_plane.supervisor.drain_step_timeout;
// the request the owner gets carries the deadline.
type DrainStep struct {
	Name  string
	Owner string
}

// DrainSteps is the ordered drain, the one list the root runs, the CLI
// sizes `controlplane down` by and the end-to-end tests expect in the log.
// docs/ARCHITECTURE.md says why each step is where it is.
var DrainSteps = []DrainStep{
	{Name: StepFirewallQueueClose, Owner: ActorFirewall},
	{Name: StepGRPCStop, Owner: ActorGRPC},
	{Name: StepBypassTimersCancel, Owner: ActorFirewall},
	{Name: StepStackStop, Owner: ActorFirewall},
	{Name: StepNetloggerStop, Owner: ActorNetlogger},
	{Name: StepDNSGCStop, Owner: ActorFirewall},
	{Name: StepEBPFFlush, Owner: ActorEBPF},
}

// DrainStepNames lists the names of DrainSteps in order.
func DrainStepNames() []string {
	out := make([]string, len(DrainSteps))
	for i, s := range DrainSteps {
		out[i] = s.Name
	}
	return out
}

// StepsOwnedBy lists, in drain order, the steps of DrainSteps that owner
// (a root child's name) carries out.
func StepsOwnedBy(owner string) []string {
	var out []string
	for _, s := range DrainSteps {
		if s.Owner == owner {
			out = append(out, s.Name)
		}
	}
	return out
}
