package clawkercli_test

import (
	"slices"
	"testing"
)

// CLAWKER_DEBUG_LABELS reaches the control plane container too: a CP in
// its container labels the firewall siblings it creates with them, so a
// test removes them with everything else it made.
func TestRunPassesDebugLabelsToCP(t *testing.T) {
	env, _, spy, _, _ := runEnv(t)
	getenv := env.Getenv
	env.Getenv = func(k string) string {
		if k == clawkerDebugLabels {
			return "dev.clawker.test=r1"
		}
		return getenv(k)
	}
	run(t, env, "run", "--project", "myapp", "--agent", "dev", "agent:1")
	if len(spy.calls) != 1 || !slices.Contains(spy.calls[0].Env, clawkerDebugLabels+"=dev.clawker.test=r1") {
		t.Fatalf("bootstrap calls %+v, want the labels knob in the CP's env", spy.calls)
	}
}
