package firewall

import (
	"errors"
	"time"

	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// The firewall's mutations. Each is asked through Client (client.go) and
// answered with the Result named beside it; the mailbox runs them one at a time, so
// two RPCs never interleave their map updates.

// Enforce makes sure an agent container is enforced: its cgroup (re-derived
// every time, a restarted container has a new one) carries the programs
// and an enrollment. Idempotent. Answered with *EnforceResult.
type Enforce struct{ ContainerID string }

// EnforceResult answers Enforce.
type EnforceResult struct {
	CgroupID uint64
	Err      error
}

// Enable clears a container's bypass and disable. Answered with *Result.
type Enable struct{ ContainerID string }

// Disable lets a container's traffic through until Enable (a bypass without
// expiry). Answered with *Result.
type Disable struct{ ContainerID string }

// Bypass lets a container's traffic through for Duration (0 means
// DefaultBypass, more than egress.MaxBypass is refused). The expiry lives in
// the BPF map, so it ends on time even without a control plane. Answered
// with *Result.
type Bypass struct {
	ContainerID string
	Duration    time.Duration
}

// SyncRoutes replaces the whole route set at once. Answered with *Result.
type SyncRoutes struct{ Routes []egress.Route }

// Result answers Enable, Disable, Bypass and SyncRoutes.
type Result struct {
	// Until is when a Bypass ends (zero otherwise).
	Until time.Time
	Err   error
}

// GetStatus asks for the enforcement state; answered with *Status.
type GetStatus struct{}

// Status is the firewall's view of what the programs enforce.
type Status struct {
	Enabled bool // settings' firewall.enable
	// Agents lists every enforced container, by container id.
	Agents []AgentEnforcement
	Routes int
	// Stack lists the stack's members in start order (empty with the
	// firewall disabled).
	Stack []StackMember
	// Network and Subnet are the agent network's name and subnet (empty
	// with the firewall disabled).
	Network, Subnet string
	// Rules is the number of stored egress rules.
	Rules int
	// AgentToAgent is settings' firewall.agent_to_agent (empty with the
	// firewall disabled).
	AgentToAgent string
}

// StackMember is one member of the firewall stack as Status reports it.
type StackMember struct {
	Name        string // what it is, e.g. "DNS"
	Address     string // host:port where agents reach it
	ContainerID string // empty when the CP did not start it
	Healthy     bool
	Error       string // why it is not healthy
}

// AgentEnforcement is one container's entry.
type AgentEnforcement struct {
	ContainerID string
	CgroupID    uint64
	Disabled    bool
	BypassUntil time.Time // zero when not bypassed
}

// The egress rules. Each is answered with *RulesResult; the mutations run
// on the mailbox, so two of them never interleave their store updates.

// AddRules adds or updates rules as one batch: all are stored or none.
type AddRules struct{ Rules []egressrules.Rule }

// RemoveRule removes Rule (known by its Key), or every rule with All; with
// Path, only that path rule of Rule (PATH_REMOVED).
type RemoveRule struct {
	Rule egressrules.Rule
	All  bool
	Path string
}

// ListRules asks for the stored rules.
type ListRules struct{}

// ReloadRules reads the store again and publishes it, changed or not: it
// is how a hand-edited store reaches the stack.
type ReloadRules struct{}

// RulesResult answers AddRules, RemoveRule, ListRules and ReloadRules.
type RulesResult struct {
	// Statuses is index-aligned with AddRules.Rules; one status for a
	// RemoveRule (REMOVED with All); empty for ListRules and ReloadRules.
	Statuses []egressrules.Status
	// Removed counts the rules a RemoveRule removed.
	Removed int
	// Rules is the whole store after the request, in canonical order.
	Rules []egressrules.Entry
	Err   error
}

// StackUp brings the stack up; answered with *Result.
type StackUp struct{}

// StackDown stops the stack (with Force even while agents are enforced);
// answered with *Result.
type StackDown struct{ Force bool }

// Reenforce asks the firewall to enforce again every running agent
// container of the worldview; sent when the eBPF owner restarted.
type Reenforce struct{}

// DefaultBypass is the length of a bypass asked for without one.
const DefaultBypass = 30 * time.Second

// Errors the mutations answer with; the AdminService maps them to codes.
var (
	// ErrFirewallDisabled: settings' firewall.enable is false, there is
	// nothing to mutate (FailedPrecondition).
	ErrFirewallDisabled = errors.New("the firewall is disabled (firewall.enable: false in settings.yaml); enable it and restart the control plane")
	// ErrQueueClosed: the CP is draining (Unavailable).
	ErrQueueClosed = errors.New("the firewall's action queue is closed: the control plane is shutting down")
	// ErrUnknownContainer: no running agent container has this id
	// (NotFound).
	ErrUnknownContainer = errors.New("no running agent container with this id")
	// ErrBadDuration: a bypass duration out of range (InvalidArgument).
	ErrBadDuration = errors.New("bypass duration must be between 1s and 1h")
	// ErrRuleStore wraps a failure to read or write the rule store
	// (Internal, reason RULE_STORE). A malformed rule is not one: it
	// answers the egressrules.FieldErrors (InvalidArgument, RULE_INVALID).
	ErrRuleStore = errors.New("egress rule store")
	// ErrStackUnhealthy wraps a stack member that is not healthy
	// (Unavailable, reason STACK_UNHEALTHY).
	ErrStackUnhealthy = errors.New("the firewall stack is not healthy")
)

// StatusError answers GetStatus when the eBPF owner could not say.
type StatusError struct{ Err error }
