package clawkercli_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/cpapi"
)

func sampleState() cpapi.WorldState {
	at := time.Date(2026, 11, 27, 9, 30, 0, 0, time.UTC)
	return cpapi.WorldState{
		Containers: []cpapi.ContainerView{
			{ID: strings.Repeat("a1b2c3d4", 8), Name: "clawker.myapp.dev", Purpose: "agent", Project: "myapp", Agent: "dev",
				State: cpapi.ContainerRunning, Since: at, ExitCode: cpapi.ExitCodeUnknown},
			{ID: strings.Repeat("0f", 32), Name: "clawker.myapp.review", Purpose: "agent", Project: "myapp", Agent: "review",
				State: cpapi.ContainerStopped, Since: at.Add(time.Minute), ExitCode: 137},
			{ID: strings.Repeat("9", 64), Name: "clawker-dns", Purpose: "dns",
				State: cpapi.ContainerStopped, Since: at, ExitCode: cpapi.ExitCodeUnknown},
		},
		Sessions: []cpapi.SessionView{
			{Agent: "myapp.dev", ContainerID: strings.Repeat("a1b2c3d4", 8), State: cpapi.SessionConnected, Since: at},
			{Agent: "myapp.review", ContainerID: strings.Repeat("0f", 32), State: cpapi.SessionBroken, Reason: "no heartbeat\nfor 15s", Since: at},
		},
		Bus: cpapi.BusStats{Subscribers: 1, Published: 9},
	}
}

func TestState(t *testing.T) {
	for _, c := range []struct {
		name  string
		state cpapi.WorldState
		args  []string
	}{
		{"state_text", sampleState(), nil},
		{"state_text_empty", cpapi.WorldState{Containers: []cpapi.ContainerView{}, Sessions: []cpapi.SessionView{}}, nil},
		{"state_json", sampleState(), []string{"--format", "json"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			port := serve(t, map[string]func(http.ResponseWriter){"/debug/state": jsonAnswer(t, http.StatusOK, c.state)})
			env, stdout, stderr := cliEnv(t, port)
			if code := run(t, env, append([]string{"controlplane", "state"}, c.args...)...); code != 0 {
				t.Fatalf("exit %d, stderr %q", code, stderr.String())
			}
			golden(t, c.name, stdout.String())
		})
	}
}

// --format json passes the CP's JSON through: a field this CLI does not
// know survives.
func TestStateJSONIsRaw(t *testing.T) {
	port := serve(t, map[string]func(http.ResponseWriter){"/debug/state": func(w http.ResponseWriter) {
		_, _ = w.Write([]byte(`{"containers":[],"sessions":[],"verdicts":[{"agent":"x"}]}`))
	}})
	env, stdout, _ := cliEnv(t, port)
	if code := run(t, env, "controlplane", "state", "--format", "json"); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if got := stdout.String(); got != `{"containers":[],"sessions":[],"verdicts":[{"agent":"x"}]}`+"\n" {
		t.Errorf("stdout %q", got)
	}
}

func TestStateNotRunning(t *testing.T) {
	port := deadPort(t)
	env, stdout, stderr := cliEnv(t, port)
	if code := run(t, env, "controlplane", "state"); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout %q", stdout.String())
	}
	msg := stderr.String()
	if !strings.HasPrefix(msg, "clawker: the control plane is not running") || !strings.Contains(msg, "`clawker controlplane up`") ||
		!strings.Contains(msg, "127.0.0.1:"+strconv.Itoa(port)) || strings.Count(msg, "\n") != 1 {
		t.Errorf("stderr %q", msg)
	}
}

func TestStateErrorAnswer(t *testing.T) {
	port := serve(t, map[string]func(http.ResponseWriter){"/debug/state": jsonAnswer(t, http.StatusServiceUnavailable,
		map[string]string{"error": "the overseer did not answer within 1s: future: timeout"})})
	env, stdout, stderr := cliEnv(t, port)
	if code := run(t, env, "controlplane", "state"); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout %q", stdout.String())
	}
	if msg := stderr.String(); !strings.Contains(msg, "503") || !strings.Contains(msg, "overseer did not answer") {
		t.Errorf("stderr %q", msg)
	}
}

func TestStateUnreadableAnswer(t *testing.T) {
	port := serve(t, map[string]func(http.ResponseWriter){"/debug/state": func(w http.ResponseWriter) {
		_, _ = w.Write([]byte("not json"))
	}})
	env, _, stderr := cliEnv(t, port)
	if code := run(t, env, "controlplane", "state"); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if msg := stderr.String(); !strings.Contains(msg, "/debug/state: unreadable answer") {
		t.Errorf("stderr %q", msg)
	}
	env, _, stderr = cliEnv(t, port)
	if code := run(t, env, "controlplane", "state", "--format", "yaml"); code != 1 || !strings.Contains(stderr.String(), "--format") {
		t.Errorf("bad --format: exit %d, stderr %q", code, stderr.String())
	}
}
