// Package cpapi holds the JSON shapes the control plane serves over HTTP:
// /healthz on its health port, /debug/actors and /debug/state through
// Oathkeeper. The CP encodes them and the CLI decodes them, so both sides
// share one definition.
package cpapi

import "time"

// Health is the body of GET /healthz.
type Health struct {
	// Status is "ok", "not_ready", "unhealthy" or "draining".
	Status string        `json:"status"`
	Probes []ProbeResult `json:"probes,omitempty"`
	// Failing names every probe that did not pass, for a one-line summary.
	Failing []string `json:"failing,omitempty"`
}

// Health statuses.
const (
	StatusOK        = "ok"
	StatusNotReady  = "not_ready"
	StatusUnhealthy = "unhealthy"
	StatusDraining  = "draining"
)

// ProbeResult is one probe's verdict inside a Health body.
type ProbeResult struct {
	Name      string  `json:"name"`
	OK        bool    `json:"ok"`
	Error     string  `json:"error,omitempty"`
	LatencyMS float64 `json:"latency_ms"`
}

// ActorState is the lifecycle state of one actor as /debug/actors reports it.
type ActorState string

// Actor states.
const (
	ActorStarting   ActorState = "starting"
	ActorRunning    ActorState = "running"
	ActorDraining   ActorState = "draining"
	ActorStopped    ActorState = "stopped"
	ActorRestarting ActorState = "restarting"
)

// ActorNode is one actor of the live tree served by GET /debug/actors.
type ActorNode struct {
	Name         string      `json:"name"`
	Path         string      `json:"path"`
	PID          string      `json:"pid"`
	State        ActorState  `json:"state"`
	Restarts     int         `json:"restarts"`
	LastError    string      `json:"last_error,omitempty"`
	MailboxDepth int64       `json:"mailbox_depth"`
	StartedAt    time.Time   `json:"started_at"`
	UptimeSec    float64     `json:"uptime_seconds"`
	Children     []ActorNode `json:"children,omitempty"`
}

// Millis is d in milliseconds with microsecond precision: the unit of every
// *_ms field, in these shapes, in the bootstrap's and agentrun's results and
// in the log lines.
func Millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
