package firewall

import (
	"errors"
	"time"

	"github.com/clawker/clawker-cp/pkg/egress"
)

// The firewall's mutations. Each is asked with RequestFuture and answered
// with the Result named beside it; the mailbox runs them one at a time, so
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
}

// AgentEnforcement is one container's entry.
type AgentEnforcement struct {
	ContainerID string
	CgroupID    uint64
	Disabled    bool
	BypassUntil time.Time // zero when not bypassed
}

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
)

// StatusError answers GetStatus when the eBPF owner could not say.
type StatusError struct{ Err error }
