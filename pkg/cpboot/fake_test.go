package cpboot

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// inspectOnly is a Docker that knows one container; any call not
// overridden panics (nil embedded interface), which is how these tests
// prove a path makes no other call.
type inspectOnly struct {
	Docker
	c        *container.InspectResponse
	inspects int
	stops    []client.ContainerStopOptions
}

func (d *inspectOnly) ContainerInspect(_ context.Context, id string, _ client.ContainerInspectOptions) (client.ContainerInspectResult, error) {
	d.inspects++
	if d.c == nil || (id != ContainerName && id != d.c.ID) {
		return client.ContainerInspectResult{}, cerrdefs.ErrNotFound.WithMessage("No such container: " + id)
	}
	return client.ContainerInspectResult{Container: *d.c}, nil
}

func (d *inspectOnly) ContainerStop(_ context.Context, _ string, o client.ContainerStopOptions) (client.ContainerStopResult, error) {
	d.stops = append(d.stops, o)
	d.c.State = &container.State{Status: container.StateExited}
	return client.ContainerStopResult{}, nil
}

// greenPort serves a healthy /healthz and returns its port.
func greenPort(t *testing.T) int {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port
}

func testBundle(t *testing.T) *Bundle {
	t.Helper()
	b, err := BundleFromDir(writeBins(t, map[string]string{CPBinary: "cp", AgentBinary: "agent"}))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Against a green, current control plane EnsureRunning makes one inspect
// and takes no lock.
func TestFastPath(t *testing.T) {
	s, p := testSettingsPaths(t)
	s.ControlPlane.HealthPort = greenPort(t)
	b := testBundle(t)
	hash, _ := b.Hash()
	d := &inspectOnly{c: &container.InspectResponse{
		ID:    "cafe",
		State: &container.State{Status: container.StateRunning, Running: true},
		Config: &container.Config{Labels: map[string]string{
			dockerx.LabelManaged: "true", dockerx.LabelPurpose: dockerx.PurposeControlPlane, dockerx.LabelBinHash: hash,
			dockerx.LabelSpecHash: newSpec(s, p, dockerSocket).hash(),
		}},
	}}
	res, err := EnsureRunning(context.Background(), Options{Settings: s, Paths: p, Docker: d, Binaries: b})
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcome != OutcomeAlreadyRunning || res.ContainerID != "cafe" || d.inspects != 1 {
		t.Errorf("result %+v after %d inspects", res, d.inspects)
	}
	if _, err := os.Stat(filepath.Join(p.StateDir, LockFileName)); err == nil {
		t.Error("the fast path took the lock")
	}
}

// A /healthz that answers while no container exists is a CP run outside
// Docker: say so instead of failing later on a taken port.
func TestFastPathForeignControlPlane(t *testing.T) {
	s, p := testSettingsPaths(t)
	s.ControlPlane.HealthPort = greenPort(t)
	_, err := EnsureRunning(context.Background(), Options{Settings: s, Paths: p, Docker: &inspectOnly{}, Binaries: testBundle(t)})
	if err == nil || !strings.Contains(err.Error(), "outside Docker") {
		t.Errorf("err %v", err)
	}
	// The same with a stopped container of ours: replacing it would only
	// collide with the foreign CP on its ports.
	d := &inspectOnly{c: &container.InspectResponse{
		ID:     "dead",
		State:  &container.State{Status: container.StateExited},
		Config: &container.Config{Labels: map[string]string{dockerx.LabelManaged: "true", dockerx.LabelPurpose: dockerx.PurposeControlPlane}},
	}}
	_, err = EnsureRunning(context.Background(), Options{Settings: s, Paths: p, Docker: d, Binaries: testBundle(t)})
	if err == nil || !strings.Contains(err.Error(), "outside Docker") {
		t.Errorf("with a stopped container: err %v", err)
	}
}

func TestEnsureRunningWithoutEmbeddedCP(t *testing.T) {
	if _, err := Embedded(); err == nil {
		t.Skip("this build embeds clawker-cp")
	}
	s, p := testSettingsPaths(t)
	_, err := EnsureRunning(context.Background(), Options{Settings: s, Paths: p, Docker: &inspectOnly{}})
	if err == nil || err.Error() != "this clawker was built without the control plane; build it with `go tool task build`" {
		t.Errorf("err %v", err)
	}
}

// down gives the drain at least 90 s before Docker kills the CP; a CP that
// is not running is not an error.
func TestStop(t *testing.T) {
	s, p := testSettingsPaths(t)
	d := &inspectOnly{c: &container.InspectResponse{
		ID:     "cafe",
		State:  &container.State{Status: container.StateRunning, Running: true},
		Config: &container.Config{Labels: map[string]string{dockerx.LabelManaged: "true", dockerx.LabelPurpose: dockerx.PurposeControlPlane}},
	}}
	res, err := Stop(context.Background(), StopOptions{Settings: s, Paths: p, Docker: d})
	if err != nil || !res.WasRunning || res.Status != "exited" {
		t.Fatalf("stop: %+v %v", res, err)
	}
	if len(d.stops) != 1 || d.stops[0].Timeout == nil || *d.stops[0].Timeout < 90 {
		t.Errorf("stop options %+v: want a timeout of at least 90 s", d.stops)
	}
	res, err = Stop(context.Background(), StopOptions{Settings: s, Paths: p, Docker: d})
	if err != nil || res.WasRunning || len(d.stops) != 1 {
		t.Errorf("stopping a stopped CP: %+v %v (stops %d)", res, err, len(d.stops))
	}
	res, err = Stop(context.Background(), StopOptions{Settings: s, Paths: p, Docker: &inspectOnly{}})
	if err != nil || res.WasRunning {
		t.Errorf("stopping a missing CP: %+v %v", res, err)
	}
	foreign := &inspectOnly{c: &container.InspectResponse{ID: "f00d", State: &container.State{Running: true}, Config: &container.Config{}}}
	if _, err := Stop(context.Background(), StopOptions{Settings: s, Paths: p, Docker: foreign}); err == nil || len(foreign.stops) != 0 {
		t.Errorf("a container clawker did not create was stopped: %v", err)
	}
}

// restartDocker is inspectOnly with a listing of running agents and a
// recorded remove: what endForRestart may call.
type restartDocker struct {
	inspectOnly
	agents  []string
	removes []client.ContainerRemoveOptions
}

func (d *restartDocker) ContainerList(_ context.Context, o client.ContainerListOptions) (client.ContainerListResult, error) {
	var res client.ContainerListResult
	for _, name := range d.agents {
		res.Items = append(res.Items, container.Summary{ID: name, Names: []string{"/" + name}})
	}
	return res, nil
}

func (d *restartDocker) ContainerRemove(_ context.Context, _ string, o client.ContainerRemoveOptions) (client.ContainerRemoveResult, error) {
	d.removes = append(d.removes, o)
	d.c = nil
	return client.ContainerRemoveResult{}, nil
}

// A control plane found restarting (or not green after a crash) is ended
// for a fresh start without a drain while agents run: a forced remove, the
// SIGKILL that keeps the pins enforcing, never the SIGTERM whose drain
// ends in ebpf_flush. With no agent running it is stopped, as down does.
func TestEndForRestartNeverDrainsUnderAgents(t *testing.T) {
	s, p := testSettingsPaths(t)
	crashed := func() *container.InspectResponse {
		return &container.InspectResponse{
			ID:     "cafe",
			State:  &container.State{Status: container.StateRestarting, Restarting: true},
			Config: &container.Config{Labels: map[string]string{dockerx.LabelManaged: "true", dockerx.LabelPurpose: dockerx.PurposeControlPlane}},
		}
	}
	for _, c := range []struct {
		name    string
		agents  []string
		removes int
		stops   int
	}{
		{"agents running", []string{"clawker.p.a", "clawker.p.b"}, 1, 0},
		{"no agent", nil, 0, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := &restartDocker{inspectOnly: inspectOnly{c: crashed()}, agents: c.agents}
			r := &run{o: &Options{Settings: s, Paths: p, Docker: d, Reporter: nopReporter{}}}
			st, err := inspectContainer(context.Background(), d, ContainerName)
			if err != nil {
				t.Fatal(err)
			}
			after, err := r.endForRestart(context.Background(), st, "it is restarting after a crash")
			if err != nil {
				t.Fatal(err)
			}
			if len(d.removes) != c.removes || len(d.stops) != c.stops {
				t.Fatalf("removes %d, stops %d; want %d and %d", len(d.removes), len(d.stops), c.removes, c.stops)
			}
			if c.removes > 0 && !d.removes[0].Force {
				t.Errorf("remove %+v: want forced (SIGKILL)", d.removes[0])
			}
			if after.Running || after.Restarting {
				t.Errorf("state after: %+v, want ended", after)
			}
		})
	}
}
