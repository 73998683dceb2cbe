package clawkercli_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/clawker/clawker-cp/pkg/adminclient/adminclienttest"
	"github.com/clawker/clawker-cp/pkg/clawkercli"
	"github.com/clawker/clawker-cp/pkg/cpboot"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// fwDocker is a daemon with agent containers (inspected by name, listed
// by the agent labels) and a clawker-controlplane container that
// ContainerStop stops with exit 0. Other calls panic (the nil embedded
// interface).
type fwDocker struct {
	cpboot.Docker
	cp      *container.State // nil: no control plane container
	agents  map[string]fwContainer
	listErr error
	stops   int
}

type fwContainer struct {
	id     string
	labels map[string]string
	state  *container.State
}

const cpID = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"

func newFWDocker() *fwDocker {
	return &fwDocker{cp: cpRunning, agents: map[string]fwContainer{}}
}

// addAgent adds clawker.<project>.<agent> with clawker's labels.
func (d *fwDocker) addAgent(project, agent, id string, st *container.State) {
	d.agents["clawker."+project+"."+agent] = fwContainer{id: id, state: st, labels: map[string]string{
		"dev.clawker.managed": "true", "dev.clawker.purpose": "agent", "dev.clawker.project": project, "dev.clawker.agent": agent,
	}}
}

func (d *fwDocker) env() func() (cpboot.Docker, error) {
	return func() (cpboot.Docker, error) { return d, nil }
}

func (d *fwDocker) ContainerInspect(_ context.Context, name string, _ client.ContainerInspectOptions) (client.ContainerInspectResult, error) {
	if (name == cpboot.ContainerName || name == cpID) && d.cp != nil {
		return client.ContainerInspectResult{Container: container.InspectResponse{
			ID: cpID, Name: "/" + cpboot.ContainerName, State: d.cp,
			Config: &container.Config{Labels: map[string]string{cpboot.LabelManaged: "true", cpboot.LabelPurpose: cpboot.PurposeControlPlane}},
		}}, nil
	}
	c, ok := d.agents[name]
	if !ok {
		return client.ContainerInspectResult{}, cerrdefs.ErrNotFound.WithMessage("No such container: " + name)
	}
	return client.ContainerInspectResult{Container: container.InspectResponse{
		ID: c.id, Name: "/" + name, State: c.state, Config: &container.Config{Labels: c.labels},
	}}, nil
}

// ContainerList answers the running agents, and insists on being asked
// for exactly those.
func (d *fwDocker) ContainerList(_ context.Context, o client.ContainerListOptions) (client.ContainerListResult, error) {
	if d.listErr != nil {
		return client.ContainerListResult{}, d.listErr
	}
	f := o.Filters
	if !f["label"]["dev.clawker.managed=true"] || !f["label"]["dev.clawker.purpose=agent"] || !f["status"]["running"] || o.All {
		return client.ContainerListResult{}, errors.New("fwDocker: unexpected list filters")
	}
	var res client.ContainerListResult
	for name, c := range d.agents {
		if c.state.Running {
			res.Items = append(res.Items, container.Summary{ID: c.id, Names: []string{"/" + name}, Labels: c.labels, State: container.StateRunning})
		}
	}
	return res, nil
}

func (d *fwDocker) ContainerStop(_ context.Context, id string, _ client.ContainerStopOptions) (client.ContainerStopResult, error) {
	if id != cpID {
		return client.ContainerStopResult{}, errors.New("fwDocker: stop of " + id)
	}
	d.stops++
	d.cp = &container.State{Status: container.StateExited}
	return client.ContainerStopResult{}, nil
}

// The container ids of seedAgents' dev and review.
const (
	devID    = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2"
	reviewID = "7890abcdef1234567890abcdef1234567890abcdef1234567890abcdef123456"
)

var cpExit0 = &container.State{Status: container.StateExited}

// fwEnv is a home with auth material and a fake CP (serving seedAgents),
// a daemon running agent myapp/dev, and a bootstrap spy.
func fwEnv(t *testing.T) (clawkercli.Env, *fwDocker, *adminclienttest.Server, *bootstrapSpy, *strings.Builder, *strings.Builder) {
	t.Helper()
	h, srv := runningCP(t, seedAgents()...)
	srv.SetClock(time.Date(2026, 5, 12, 9, 42, 18, 0, time.UTC))
	d := newFWDocker()
	d.addAgent("myapp", "dev", devID, cpRunning)
	spy := &bootstrapSpy{}
	var stdout, stderr strings.Builder
	env := clawkercli.Env{Stdout: &stdout, Stderr: &stderr, Getenv: h.Getenv, Docker: d.env(), Bootstrap: spy.fn}
	return env, d, srv, spy, &stdout, &stderr
}

func wantRequests(t *testing.T, srv *adminclienttest.Server, want ...proto.Message) {
	t.Helper()
	got := srv.FirewallRequests()
	if len(got) != len(want) {
		t.Fatalf("requests %v, want %v", got, want)
	}
	for i := range got {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("request %d: %v, want %v", i, got[i], want[i])
		}
	}
}

func TestFirewallEnableDisable(t *testing.T) {
	for _, c := range []struct {
		verb, out string
		req       proto.Message
	}{
		{"enable", "firewall enabled for clawker.myapp.dev\n", &adminv1.FirewallEnableRequest{ContainerId: devID}},
		{"disable", "firewall disabled for clawker.myapp.dev (until `clawker firewall enable`)\n", &adminv1.FirewallDisableRequest{ContainerId: devID}},
	} {
		env, _, srv, spy, stdout, stderr := fwEnv(t)
		if code := run(t, env, "firewall", c.verb, "--project", "myapp", "--agent", "dev"); code != 0 {
			t.Fatalf("%s: exit %d, stderr %q", c.verb, code, stderr.String())
		}
		if stdout.String() != c.out || stderr.String() != "" {
			t.Errorf("%s: stdout %q, stderr %q", c.verb, stdout.String(), stderr.String())
		}
		wantRequests(t, srv, c.req)
		if len(spy.calls) != 1 {
			t.Errorf("%s: bootstrapped %d times, want 1", c.verb, len(spy.calls))
		}
	}
}

// Flags may come before or after DURATION.
func TestFirewallBypass(t *testing.T) {
	for _, args := range [][]string{
		{"firewall", "bypass", "5m", "--project", "myapp", "--agent", "dev"},
		{"firewall", "bypass", "--project", "myapp", "--agent=dev", "5m"},
		{"firewall", "bypass", "--project=myapp", "5m", "--agent", "dev"},
	} {
		env, _, srv, _, stdout, stderr := fwEnv(t)
		if code := run(t, env, args...); code != 0 {
			t.Fatalf("%q: exit %d, stderr %q", args, code, stderr.String())
		}
		if want := "bypass for clawker.myapp.dev until 2026-05-12T09:47:18Z (5m)\n"; stdout.String() != want {
			t.Errorf("%q: stdout %q, want %q", args, stdout.String(), want)
		}
		wantRequests(t, srv, &adminv1.FirewallBypassRequest{ContainerId: devID, Timeout: durationpb.New(5 * time.Minute)})
	}

	env, _, _, _, stdout, stderr := fwEnv(t)
	if code := run(t, env, "firewall", "bypass", "1h", "--project", "myapp", "--agent", "dev", "--format", "json"); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	checkGoldenFile(t, "firewall_bypass_json.golden", stdout.String())

	env, _, _, _, stdout, _ = fwEnv(t)
	if code := run(t, env, "firewall", "bypass", "30s", "--project", "myapp", "--agent", "dev"); code != 0 ||
		stdout.String() != "bypass for clawker.myapp.dev until 2026-05-12T09:42:48Z (30s)\n" {
		t.Errorf("exit %d, stdout %q", code, stdout.String())
	}
}

// Without --project the current directory names the project, as for rm.
func TestFirewallProjectFromDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "MyApp")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	env, _, srv, _, stdout, stderr := fwEnv(t)
	if code := run(t, env, "firewall", "enable", "--agent", "dev"); code != 0 || stdout.String() != "firewall enabled for clawker.myapp.dev\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	wantRequests(t, srv, &adminv1.FirewallEnableRequest{ContainerId: devID})
}

// Argument mistakes are caught before Docker or the control plane is
// asked, and name what is wrong.
func TestFirewallArgumentErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"bypass", "--project", "myapp", "--agent", "dev"}, "DURATION: required: how long the bypass lasts, e.g. 30s or 5m"},
		{[]string{"bypass", "soon", "--project", "myapp", "--agent", "dev"}, `DURATION: "soon" is not a duration; write e.g. 30s, 5m or 1h`},
		{[]string{"bypass", "30", "--project", "myapp", "--agent", "dev"}, `DURATION: "30" is not a duration`},
		{[]string{"bypass", "2h", "--project", "myapp", "--agent", "dev"}, "DURATION: 2h is out of range: a bypass lasts 1s to 1h, e.g. 30s or 5m"},
		{[]string{"bypass", "0s", "--project", "myapp", "--agent", "dev"}, "DURATION: 0s is out of range"},
		{[]string{"bypass", "500ms", "--project", "myapp", "--agent", "dev"}, "DURATION: 500ms is out of range"},
		{[]string{"bypass", "5m", "10m", "--project", "myapp", "--agent", "dev"}, `firewall bypass takes one argument, DURATION, got ["5m" "10m"]`},
		{[]string{"bypass", "5m", "--project", "myapp"}, "--agent: required"},
		{[]string{"bypass", "5m", "--project", "myapp", "--bogus", "x"}, "flag provided but not defined: --bogus"},
		{[]string{"bypass", "5m", "--project", "myapp", "--agent"}, "flag needs an argument: --agent"},
		{[]string{"enable", "--project", "myapp"}, "--agent: required"},
		{[]string{"enable", "--project", "myapp", "--agent", "Dev"}, `--agent: invalid agent "Dev"`},
		{[]string{"disable", "--project", "myapp", "--agent", "dev", "now"}, `firewall disable takes no arguments, got ["now"]`},
		{[]string{"enable", "--project", "myapp", "--agent", "dev", "--format", "yaml"}, "--format"},
		{[]string{"status", "extra"}, "firewall status takes no arguments"},
		{[]string{"status", "--format", "yaml"}, "--format"},
	} {
		env, _, srv, spy, stdout, stderr := fwEnv(t)
		if code := run(t, env, append([]string{"firewall"}, c.args...)...); code != 1 {
			t.Errorf("%q: exit %d", c.args, code)
		}
		if !strings.Contains(stderr.String(), c.want) || strings.Count(stderr.String(), "\n") != 1 || stdout.Len() != 0 {
			t.Errorf("%q: stderr %q, want %q", c.args, stderr.String(), c.want)
		}
		if len(spy.calls) != 0 || len(srv.FirewallRequests()) != 0 {
			t.Errorf("%q: bootstrapped %d times, %d firewall requests", c.args, len(spy.calls), len(srv.FirewallRequests()))
		}
	}
}

// The agent is found through Docker first: a missing, foreign or stopped
// container is reported without bringing the control plane up.
func TestFirewallAgentLookup(t *testing.T) {
	for _, c := range []struct {
		name  string
		setup func(d *fwDocker)
		want  string
	}{
		{"missing", func(*fwDocker) {}, "clawker: no such agent container: clawker.myapp.ghost (project myapp, agent ghost)\n"},
		{"not an agent", func(d *fwDocker) {
			d.agents["clawker.myapp.ghost"] = fwContainer{id: reviewID, state: cpRunning, labels: map[string]string{}}
		}, "clawker: not a clawker agent container: clawker.myapp.ghost lacks the labels dev.clawker.managed=true, " +
			"dev.clawker.purpose=agent, dev.clawker.project=myapp, dev.clawker.agent=ghost\n"},
		{"stopped", func(d *fwDocker) {
			d.addAgent("myapp", "ghost", reviewID, &container.State{Status: container.StateExited, ExitCode: 137})
		}, "clawker: agent container clawker.myapp.ghost is not running (exited): the firewall acts on running agents only\n"},
	} {
		env, d, srv, spy, stdout, stderr := fwEnv(t)
		c.setup(d)
		if code := run(t, env, "firewall", "bypass", "1m", "--project", "myapp", "--agent", "ghost"); code != 1 ||
			stderr.String() != c.want || stdout.Len() != 0 {
			t.Errorf("%s: exit %d, stderr %q\nwant %q", c.name, code, stderr.String(), c.want)
		}
		if len(spy.calls) != 0 || len(srv.FirewallRequests()) != 0 {
			t.Errorf("%s: bootstrapped %d times, %d firewall requests", c.name, len(spy.calls), len(srv.FirewallRequests()))
		}
	}
}

// The control plane's refusals are printed with its own message, which
// says what to do; a failed bootstrap stops the verb before any call.
func TestFirewallRefused(t *testing.T) {
	for _, c := range []struct {
		method, verb string
		err          error
		want         string
	}{
		{"FirewallEnable", "enable", status.Error(codes.FailedPrecondition,
			"the firewall is disabled (firewall.enable: false in settings.yaml); enable it and restart the control plane"),
			"clawker: firewall enable clawker.myapp.dev: the firewall is disabled (firewall.enable: false in settings.yaml); enable it and restart the control plane\n"},
		{"FirewallDisable", "disable", status.Error(codes.NotFound, "no running agent container with this id: "+devID),
			"clawker: firewall disable clawker.myapp.dev: no running agent container with this id: " + devID + "\n"},
		{"FirewallBypass", "bypass", status.Error(codes.Unimplemented, "unknown method FirewallBypass"),
			"does not know this call: it runs an older clawker-cp; restart it"},
	} {
		env, _, srv, _, stdout, stderr := fwEnv(t)
		srv.SetFirewallError(c.method, c.err)
		args := []string{"firewall", c.verb, "--project", "myapp", "--agent", "dev"}
		if c.verb == "bypass" {
			args = append(args, "10s")
		}
		if code := run(t, env, args...); code != 1 || !strings.Contains(stderr.String(), c.want) || stdout.Len() != 0 {
			t.Errorf("%s: exit %d, stderr %q\nwant %q", c.verb, code, stderr.String(), c.want)
		}
	}

	env, _, srv, spy, _, stderr := fwEnv(t)
	spy.err = errors.New("bootstrap failed")
	if code := run(t, env, "firewall", "enable", "--project", "myapp", "--agent", "dev"); code != 1 ||
		stderr.String() != "clawker: bootstrap failed\n" || len(srv.FirewallRequests()) != 0 {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
	env, _, srv, spy, _, stderr = fwEnv(t)
	spy.err = errors.New("bootstrap failed")
	if code := run(t, env, "firewall", "status"); code != 1 || stderr.String() != "clawker: bootstrap failed\n" || len(srv.FirewallRequests()) != 0 {
		t.Errorf("status: exit %d, stderr %q", code, stderr.String())
	}
}

func sampleFirewallStatus() *adminv1.FirewallStatusResponse {
	return &adminv1.FirewallStatusResponse{Enabled: true, RouteCount: 12, Network: "clawker-net", Subnet: "172.18.0.0/24", Rules: 3, Stack: []*adminv1.StackMember{
		{Name: "DNS", Address: "172.18.0.201:53", ContainerId: devID, Healthy: true},
		{Name: "proxy", Address: "172.18.0.200:15001", Error: "dial tcp 172.18.0.200:15001: connection refused"},
	}, Agents: []*adminv1.FirewallAgent{
		{ContainerId: reviewID, CgroupId: 4243, BypassUntil: ts("2026-05-12T09:47:18.5Z")},
		{ContainerId: strings.Repeat("9", 64), CgroupId: 4250, Disabled: true},
		{ContainerId: devID, CgroupId: 4242},
	}}
}

func TestFirewallStatus(t *testing.T) {
	for _, c := range []struct {
		name string
		st   *adminv1.FirewallStatusResponse
		args []string
	}{
		{"firewall_status_text", sampleFirewallStatus(), nil},
		{"firewall_status_json", sampleFirewallStatus(), []string{"--format", "json"}},
		{"firewall_status_no_agents", &adminv1.FirewallStatusResponse{Enabled: true, RouteCount: 3}, nil},
		{"firewall_status_healthy", &adminv1.FirewallStatusResponse{Enabled: true, Network: "clawker-net", Subnet: "172.18.0.0/24", Stack: []*adminv1.StackMember{
			{Name: "DNS", Address: "172.18.0.201:53", Healthy: true}, {Name: "proxy", Address: "172.18.0.200:15001", Healthy: true},
		}}, nil},
		{"firewall_status_disabled", &adminv1.FirewallStatusResponse{}, nil},
		{"firewall_status_disabled_json", &adminv1.FirewallStatusResponse{}, []string{"--format", "json"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			env, _, srv, spy, stdout, stderr := fwEnv(t)
			srv.SetFirewallStatus(c.st)
			if code := run(t, env, append([]string{"firewall", "status"}, c.args...)...); code != 0 {
				t.Fatalf("exit %d, stderr %q", code, stderr.String())
			}
			if stderr.Len() != 0 || len(spy.calls) != 1 {
				t.Errorf("stderr %q, %d bootstraps", stderr.String(), len(spy.calls))
			}
			checkGoldenFile(t, c.name+".golden", stdout.String())
		})
	}
}

// controlplane down refuses while agents run, saying why, unless --force.
func TestDownRefusesWhileAgentsRun(t *testing.T) {
	env, d, _, _, stdout, stderr := fwEnv(t)
	d.addAgent("myapp", "review", reviewID, cpRunning)
	d.addAgent("other", "idle", strings.Repeat("1", 64), cpExit0) // not running: not counted
	if code := run(t, env, "controlplane", "down"); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	want := "clawker: refusing to stop the control plane: stopping the control plane runs its drain, whose last step flushes " +
		"the eBPF programs, which lifts egress enforcement from the 2 running agent container(s): clawker.myapp.dev, clawker.myapp.review; " +
		"remove them first (e.g. `clawker rm -f --project myapp --agent dev`), or pass --force to stop it anyway\n"
	if stderr.String() != want || stdout.Len() != 0 || d.stops != 0 {
		t.Errorf("stderr %q\nwant   %q\nstops %d", stderr.String(), want, d.stops)
	}

	stderr.Reset()
	if code := run(t, env, "controlplane", "down", "--force"); code != 0 {
		t.Fatalf("--force: exit %d, stderr %q", code, stderr.String())
	}
	if d.stops != 1 || !strings.HasPrefix(stdout.String(), "control plane stopped (drained in ") ||
		!strings.HasPrefix(stderr.String(), "warning: stopping the control plane runs its drain") ||
		!strings.HasSuffix(stderr.String(), "clawker.myapp.dev, clawker.myapp.review (--force)\n") {
		t.Errorf("stops %d, stdout %q, stderr %q", d.stops, stdout.String(), stderr.String())
	}
}

func TestDownWithoutAgents(t *testing.T) {
	env, d, _, _, stdout, stderr := fwEnv(t)
	d.agents = map[string]fwContainer{}
	d.addAgent("myapp", "dev", devID, cpExit0)
	if code := run(t, env, "controlplane", "down"); code != 0 || d.stops != 1 || stderr.Len() != 0 ||
		!strings.HasPrefix(stdout.String(), "control plane stopped") {
		t.Errorf("exit %d, stops %d, stdout %q, stderr %q", code, d.stops, stdout.String(), stderr.String())
	}

	// A control plane that does not run is not stopped, agents or not.
	env, d, _, _, stdout, stderr = fwEnv(t)
	d.cp = cpExited
	if code := run(t, env, "controlplane", "down"); code != 0 || d.stops != 0 || stdout.String() != "control plane not running\n" {
		t.Errorf("exit %d, stops %d, stdout %q, stderr %q", code, d.stops, stdout.String(), stderr.String())
	}
}

// When Docker cannot list the agents, down does not guess.
func TestDownAgentListFails(t *testing.T) {
	env, d, _, _, _, stderr := fwEnv(t)
	d.listErr = cerrdefs.ErrUnavailable.WithMessage("daemon busy")
	if code := run(t, env, "controlplane", "down"); code != 1 || d.stops != 0 ||
		!strings.Contains(stderr.String(), "cannot tell whether agent containers run, so the control plane was not stopped") ||
		!strings.Contains(stderr.String(), "daemon busy") {
		t.Errorf("exit %d, stops %d, stderr %q", code, d.stops, stderr.String())
	}
	stderr.Reset()
	if code := run(t, env, "controlplane", "down", "-f"); code != 0 || d.stops != 1 || !strings.Contains(stderr.String(), "stopping anyway (--force)") {
		t.Errorf("-f: exit %d, stops %d, stderr %q", code, d.stops, stderr.String())
	}
}
