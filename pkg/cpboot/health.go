package cpboot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// LogTailLines is how many lines of the container's log an exit report
// shows.
const LogTailLines = 5

// ExitError is a control plane container that exited (or was being
// restarted by Docker's on-failure policy) before /healthz turned green.
type ExitError struct {
	ExitCode     int
	RestartCount int    // restarts by the on-failure policy so far
	LogTail      string // its last error lines and last LogTailLines lines, shortened
}

func (e *ExitError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "the control plane exited with code %d during start-up", e.ExitCode)
	if e.RestartCount > 0 {
		fmt.Fprintf(&b, " (Docker's on-failure policy has restarted it %d time(s))", e.RestartCount)
	}
	if e.LogTail != "" {
		b.WriteString("; from its log:\n")
		for _, l := range strings.Split(e.LogTail, "\n") {
			b.WriteString("  " + l + "\n")
		}
	} else {
		b.WriteString("; it wrote nothing to its log\n")
	}
	fmt.Fprintf(&b, "see `docker logs %s` for the whole log", ContainerName)
	return b.String()
}

// TimeoutError is a control plane that neither turned green nor exited in
// time.
type TimeoutError struct {
	Timeout  time.Duration
	LastSeen string // the last /healthz answer, or why there was none
	LogTail  string
}

func (e *TimeoutError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "the control plane did not turn healthy within %s (last /healthz: %s)", e.Timeout, e.LastSeen)
	if e.LogTail != "" {
		b.WriteString("; from its log:\n")
		for _, l := range strings.Split(e.LogTail, "\n") {
			b.WriteString("  " + l + "\n")
		}
	} else {
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "see `docker logs %s` for the whole log", ContainerName)
	return b.String()
}

var healthClient = &http.Client{}

// getHealthz GETs url once within timeout. It returns the status code (0
// when nothing answered) and a short description of the answer.
func getHealthz(ctx context.Context, url string, timeout time.Duration) (int, string) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err.Error()
	}
	resp, err := healthClient.Do(req)
	if err != nil {
		return 0, "no answer: " + err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var h cpapi.Health
	if json.Unmarshal(body, &h) == nil && h.Status != "" {
		desc := fmt.Sprintf("%d %s", resp.StatusCode, h.Status)
		if len(h.Failing) > 0 {
			desc += " (failing: " + strings.Join(h.Failing, ", ") + ")"
		}
		return resp.StatusCode, desc
	}
	return resp.StatusCode, fmt.Sprintf("%d %q", resp.StatusCode, strings.TrimSpace(string(body)))
}

// waitHealthy polls /healthz until 200, failing at once when the container
// exits or is being restarted by Docker, and after the timeout otherwise.
// st is the container as last inspected.
func (r *run) waitHealthy(ctx context.Context, st State, adopted bool) error {
	o, rep := r.o, r.o.Reporter
	t := time.Now()
	defer r.record(StepHealthz, t)
	timeout := o.timeout()
	deadline := t.Add(timeout)
	rep.Begin(fmt.Sprintf("waiting for the control plane's /healthz on 127.0.0.1:%d", o.Settings.ControlPlane.HealthPort))
	restarts := st.RestartCount
	restartedClean := false
	interval := 25 * time.Millisecond
	for {
		code, seen := getHealthz(ctx, r.healthURL(), 2*time.Second)
		if code == http.StatusOK {
			rep.End("control plane healthy", nil)
			return nil
		}
		cur, err := Inspect(ctx, o.Docker)
		if err != nil {
			rep.End("", err)
			return err
		}
		if !cur.Exists {
			err := fmt.Errorf("the %s container disappeared while starting (removed by someone else?)", ContainerName)
			rep.End("", err)
			return err
		}
		exited := cur.Status == "exited" || cur.Status == "dead"
		if exited && cur.ExitCode == 0 && adopted && !restartedClean && cur.RestartCount == restarts {
			// The CP we found running ended its own drain (drain-to-zero)
			// while we waited: it is current, so start it again.
			restartedClean = true
			if err := r.startContainer(ctx, cur.ID); err != nil {
				return err
			}
			rep.Begin("waiting for the control plane's /healthz")
			continue
		}
		if exited || cur.Restarting || cur.RestartCount > restarts {
			err := &ExitError{ExitCode: cur.ExitCode, RestartCount: cur.RestartCount, LogTail: exitSummary(ctx, o.Docker, cur.ID)}
			rep.End("", errors.New("exited"))
			return err
		}
		if time.Now().After(deadline) {
			err := &TimeoutError{Timeout: timeout, LastSeen: seen, LogTail: exitSummary(ctx, o.Docker, cur.ID)}
			rep.End("", err)
			return err
		}
		select {
		case <-ctx.Done():
			rep.End("", ctx.Err())
			return fmt.Errorf("waiting for the control plane's /healthz: %w", ctx.Err())
		case <-time.After(interval):
		}
		if interval < 200*time.Millisecond {
			interval *= 2
		}
	}
}
