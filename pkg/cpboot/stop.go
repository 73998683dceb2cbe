package cpboot

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/settings"
)

// drainSteps is the number of steps of the CP's ordered drain
// (cpapi.DrainSteps), each bounded by control_plane.supervisor.drain_step_timeout.
var drainSteps = time.Duration(len(cpapi.DrainSteps))

// MinStopTimeout is the least time `controlplane down` gives the CP between
// SIGTERM and SIGKILL. Docker's default of 10 s would kill it mid-drain.
const MinStopTimeout = 90 * time.Second

// StopTimeout is the grace period for a CP with settings s: every drain step
// at its bound plus a margin, and never less than MinStopTimeout.
func StopTimeout(s settings.Settings) time.Duration {
	return max(MinStopTimeout, drainSteps*s.ControlPlane.Supervisor.DrainStepTimeout+15*time.Second)
}

// StopOptions are Stop's inputs.
type StopOptions struct {
	Settings settings.Settings
	Paths    settings.Paths
	Docker   Docker
	// Timeout is the grace period before SIGKILL; 0 means
	// StopTimeout(Settings).
	Timeout time.Duration
}

// StopResult says what Stop found and did.
type StopResult struct {
	// WasRunning: the container ran and was stopped by this call.
	WasRunning bool `json:"was_running"`
	// Status is the container's state when found not running ("" when
	// there is no container).
	Status   string        `json:"status,omitempty"`
	ExitCode int           `json:"exit_code"`
	Duration time.Duration `json:"duration_ns"`
}

// Stop stops the clawker-controlplane container: SIGTERM runs the CP's
// ordered drain, and Docker waits the grace period before killing it. A
// container that does not exist or does not run is not an error.
func Stop(ctx context.Context, o StopOptions) (StopResult, error) {
	if o.Docker == nil {
		return StopResult{}, fmt.Errorf("cpboot: no Docker client")
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = StopTimeout(o.Settings)
	}
	lctx, cancel := context.WithTimeout(ctx, lockWait)
	unlock, err := lockFile(lctx, filepath.Join(o.Paths.StateDir, LockFileName), nil)
	cancel()
	if err != nil {
		return StopResult{}, err
	}
	defer unlock()

	st, err := Inspect(ctx, o.Docker)
	if err != nil {
		return StopResult{}, err
	}
	if !st.Exists {
		return StopResult{}, nil
	}
	if !st.Ours {
		return StopResult{}, fmt.Errorf("the %s container was not created by clawker (no %s=true, %s=%s labels); leaving it alone",
			ContainerName, dockerx.LabelManaged, dockerx.LabelPurpose, dockerx.PurposeControlPlane)
	}
	if !st.Running && !st.Restarting {
		return StopResult{Status: st.Status, ExitCode: st.ExitCode}, nil
	}
	return stop(ctx, o.Docker, st.ID, timeout)
}

// stop stops container id with grace period timeout and reports its exit.
func stop(ctx context.Context, d Docker, id string, timeout time.Duration) (StopResult, error) {
	t := time.Now()
	secs := int((timeout + time.Second - 1) / time.Second)
	// The call returns once the container stopped: it may take the whole
	// grace period, and then the kill.
	_, err := bounded(ctx, timeout+callTimeout, func(ctx context.Context) (client.ContainerStopResult, error) {
		return d.ContainerStop(ctx, id, client.ContainerStopOptions{Timeout: &secs})
	})
	if err != nil && !isNotFound(err) {
		return StopResult{}, fmt.Errorf("stopping container %s: %w", ContainerName, err)
	}
	res := StopResult{WasRunning: true, Duration: time.Since(t)}
	st, err := inspectContainer(ctx, d, id)
	if err != nil {
		return res, err
	}
	res.Status, res.ExitCode = st.Status, st.ExitCode
	return res, nil
}
