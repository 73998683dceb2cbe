package clawkercli_test

import (
	"context"
	"strconv"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// fakeDocker answers ContainerInspect for clawker-controlplane with a fixed
// state; any other Docker call panics (the nil embedded interface), so a
// status test cannot reach the real daemon by accident.
type fakeDocker struct {
	cpboot.Docker
	state *container.State // nil: no such container
}

func (f fakeDocker) ContainerInspect(_ context.Context, id string, _ client.ContainerInspectOptions) (client.ContainerInspectResult, error) {
	if f.state == nil || id != cpboot.ContainerName {
		return client.ContainerInspectResult{}, cerrdefs.ErrNotFound.WithMessage("No such container: " + id)
	}
	return client.ContainerInspectResult{Container: container.InspectResponse{
		ID:     "0123456789ab0123456789ab0123456789ab0123456789ab0123456789abcdef",
		State:  f.state,
		Config: &container.Config{Labels: map[string]string{dockerx.LabelManaged: "true", dockerx.LabelPurpose: dockerx.PurposeControlPlane}},
	}}, nil
}

// dockerWith makes Env.Docker answer with state.
func dockerWith(state *container.State) func() (cpboot.Docker, error) {
	return func() (cpboot.Docker, error) { return fakeDocker{state: state}, nil }
}

var (
	cpRunning    = &container.State{Status: container.StateRunning, Running: true}
	cpExited     = &container.State{Status: container.StateExited, ExitCode: 1}
	cpRestarting = &container.State{Status: container.StateRestarting, Running: true, Restarting: true, ExitCode: 1}
)

// Docker says whether the container runs; /healthz is only asked when it
// does.
func TestStatusFromDocker(t *testing.T) {
	cases := []struct {
		name  string
		state *container.State
		want  string
	}{
		{"missing", nil, "Container: stopped\n"},
		{"exited", cpExited, "Container: stopped\n"},
		{"restarting", cpRestarting, "Container: stopped\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// A health port that answers: it must not be asked.
			port := serve(t, nil)
			env, stdout, stderr := cliEnv(t, port)
			env.Docker = dockerWith(c.state)
			if code := run(t, env, "controlplane", "status"); code != 0 {
				t.Fatalf("exit %d, stderr %q", code, stderr.String())
			}
			if stdout.String() != c.want {
				t.Errorf("stdout %q, want %q", stdout.String(), c.want)
			}
		})
	}
}

func TestStatusRunningButNoAnswer(t *testing.T) {
	port := deadPort(t)
	env, stdout, _ := cliEnv(t, port)
	env.Docker = dockerWith(cpRunning)
	if code := run(t, env, "controlplane", "status"); code != 0 {
		t.Fatalf("exit %d", code)
	}
	want := "Container: running\nHealthz: ✗ (no answer on 127.0.0.1:" + strconv.Itoa(port) + ")\n"
	if stdout.String() != want {
		t.Errorf("stdout %q, want %q", stdout.String(), want)
	}
}

func TestStatusDockerUnreachable(t *testing.T) {
	env, stdout, stderr := cliEnv(t, deadPort(t))
	env.Docker = func() (cpboot.Docker, error) { return brokenDocker{}, nil }
	if code := run(t, env, "controlplane", "status"); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if stdout.Len() != 0 || !strings.Contains(stderr.String(), "inspecting container clawker-controlplane") {
		t.Errorf("stdout %q, stderr %q", stdout.String(), stderr.String())
	}
}

// brokenDocker fails every inspect as an unreachable daemon does.
type brokenDocker struct{ cpboot.Docker }

func (brokenDocker) ContainerInspect(context.Context, string, client.ContainerInspectOptions) (client.ContainerInspectResult, error) {
	return client.ContainerInspectResult{}, cerrdefs.ErrUnavailable.WithMessage("Cannot connect to the Docker daemon at unix:///var/run/docker.sock")
}

func TestUpDownRejectArguments(t *testing.T) {
	for _, verb := range []string{"up", "down"} {
		env, _, stderr := cliEnv(t, deadPort(t))
		env.Docker = dockerWith(nil)
		if code := run(t, env, "controlplane", verb, "extra"); code != 1 {
			t.Fatalf("%s: exit %d, want 1", verb, code)
		}
		if !strings.Contains(stderr.String(), "takes no arguments") {
			t.Errorf("%s: stderr %q", verb, stderr.String())
		}
	}
}

func TestUpBadLabels(t *testing.T) {
	env, _, stderr := cliEnv(t, deadPort(t))
	env.Docker = dockerWith(nil)
	get := env.Getenv
	env.Getenv = func(k string) string {
		if k == "CLAWKER_DEBUG_LABELS" {
			return "dev.clawker.managed=false"
		}
		return get(k)
	}
	if code := run(t, env, "controlplane", "up"); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.Contains(stderr.String(), "CLAWKER_DEBUG_LABELS") || !strings.Contains(stderr.String(), "clawker's own") {
		t.Errorf("stderr %q", stderr.String())
	}
}
