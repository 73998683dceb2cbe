package clawkercli_test

import (
	"net/http"
	"testing"

	"github.com/clawker/clawker-cp/pkg/cpboot"
)

// closingDocker is fakeDocker with a Close that counts.
type closingDocker struct {
	fakeDocker
	closes *int
}

func (c closingDocker) Close() error { *c.closes++; return nil }

// A verb resolves its paths and loads its settings once (bringing the
// control plane up included), opens one Docker client and closes it.
func TestPrologueLoadsOnceAndOpensDockerOnce(t *testing.T) {
	cases := []struct {
		name      string
		args      []string
		bootstrap bool
	}{
		// status and its image part share the client (were two).
		{"status", []string{"controlplane", "status"}, false},
		// ensureCP takes what the prologue loaded (it loaded again).
		{"tree", []string{"controlplane", "tree"}, true},
		{"state", []string{"controlplane", "state"}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			port := serve(t, map[string]func(http.ResponseWriter){
				"/healthz":      jsonAnswer(t, http.StatusOK, map[string]any{"status": "ok"}),
				"/debug/actors": jsonAnswer(t, http.StatusOK, sampleTree()),
				"/debug/state":  jsonAnswer(t, http.StatusOK, map[string]any{}),
			})
			env, _, stderr := cliEnv(t, port)
			var opens, closes, resolves int
			env.Docker = func() (cpboot.Docker, error) {
				opens++
				return closingDocker{fakeDocker: fakeDocker{state: cpRunning}, closes: &closes}, nil
			}
			getenv := env.Getenv
			env.Getenv = func(k string) string {
				if k == "XDG_CONFIG_HOME" { // read once per settings.ResolvePaths
					resolves++
				}
				return getenv(k)
			}
			spy := &bootstrapSpy{}
			if c.bootstrap {
				env.Bootstrap = spy.fn
			}
			if code := run(t, env, c.args...); code != 0 {
				t.Fatalf("exit %d, stderr %q", code, stderr.String())
			}
			if opens != 1 || closes != 1 {
				t.Errorf("Docker opened %d times, closed %d times; want 1 and 1", opens, closes)
			}
			if resolves != 1 {
				t.Errorf("paths resolved %d times, want 1", resolves)
			}
			if c.bootstrap {
				if len(spy.calls) != 1 || spy.calls[0].Settings.ControlPlane.HealthPort != port || spy.calls[0].Docker == nil {
					t.Errorf("bootstrap calls %+v; want one with health port %d and the Docker client", spy.calls, port)
				}
			}
		})
	}
}

// A bad input is refused before Docker is opened.
func TestPrologueRefusesBeforeDocker(t *testing.T) {
	for _, args := range [][]string{
		{"controlplane", "status", "--format", "yaml"},
		{"rm"},                                 // --agent missing
		{"ps", "extra"},                        // no arguments
		{"firewall", "bypass", "--agent", "a"}, // DURATION missing
	} {
		env, _, stderr := cliEnv(t, deadPort(t))
		opened := false
		env.Docker = func() (cpboot.Docker, error) { opened = true; return fakeDocker{}, nil }
		if code := run(t, env, args...); code != 1 || opened {
			t.Errorf("%q: exit %d, Docker opened %v, stderr %q", args, code, opened, stderr.String())
		}
	}
}
