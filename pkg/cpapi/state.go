package cpapi

import "time"

// WorldState is the body of GET /debug/state: the overseer's worldview of
// clawker's containers and agent Sessions. It holds only values, so a copy
// shares nothing with the original.
type WorldState struct {
	Containers []ContainerView `json:"containers"`
	Sessions   []SessionView   `json:"sessions"`
	Bus        BusStats        `json:"bus"`
}

// ContainerState is a managed container's state in the worldview. A
// destroyed container leaves the worldview.
type ContainerState string

// Container states.
const (
	ContainerRunning ContainerState = "running"
	ContainerStopped ContainerState = "stopped"
)

// ExitCodeUnknown is ContainerView.ExitCode when there is none (the
// container runs) or Docker did not say.
const ExitCodeUnknown = -1

// ContainerView is the worldview's record of one managed container.
type ContainerView struct {
	ID      string         `json:"id"`
	Name    string         `json:"name"`
	Purpose string         `json:"purpose,omitempty"`
	Project string         `json:"project,omitempty"`
	Agent   string         `json:"agent,omitempty"`
	State   ContainerState `json:"state"`
	// Since is when the container entered State.
	Since    time.Time `json:"since"`
	ExitCode int       `json:"exit_code"`
}

// SessionState is the lifecycle of one agent's Session.
type SessionState string

// Session states.
const (
	SessionConnecting SessionState = "connecting"
	SessionConnected  SessionState = "connected"
	SessionFailed     SessionState = "failed"
	SessionBroken     SessionState = "broken"
	SessionClosed     SessionState = "closed"
)

// SessionView is the worldview's record of one agent's Session.
type SessionView struct {
	Agent       string       `json:"agent"`
	ContainerID string       `json:"container_id"`
	State       SessionState `json:"state"`
	Reason      string       `json:"reason,omitempty"`
	Since       time.Time    `json:"since"`
}

// BusStats counts the overseer's event bus traffic since it (re)started.
type BusStats struct {
	Subscribers int    `json:"subscribers"`
	Published   uint64 `json:"published"`
	// Dropped counts events sent to a subscriber that was gone by then (a
	// dead letter); such a subscriber is removed.
	Dropped uint64 `json:"dropped"`
}
