package clawkercli_test

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/image"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/adminclient/adminclienttest"
	"github.com/clawker/clawker-cp/pkg/agentrun"
	"github.com/clawker/clawker-cp/pkg/clawkercli"
	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// agentDocker is a daemon for run and rm: one image, the containers
// created from it, and a running clawker-controlplane at cpIP. Calls
// outside what run and rm need panic (the nil embedded interface).
type agentDocker struct {
	cpboot.Docker
	cpIP       netip.Addr
	cpOry      bool                                      // the CP's command has --ory-dir
	containers map[string]*client.ContainerCreateOptions // by name
	ids        map[string]string                         // name -> id
	running    map[string]bool                           // by name
	copied     []string                                  // tar entry names
	removed    []string
}

func newAgentDocker() *agentDocker {
	return &agentDocker{
		cpIP:       netip.MustParseAddr("172.30.0.202"),
		containers: map[string]*client.ContainerCreateOptions{},
		ids:        map[string]string{},
		running:    map[string]bool{},
	}
}

func (d *agentDocker) env() func() (cpboot.Docker, error) {
	return func() (cpboot.Docker, error) { return d, nil }
}

func (d *agentDocker) ImageInspect(_ context.Context, ref string, _ ...client.ImageInspectOption) (client.ImageInspectResult, error) {
	if ref != "agent:1" {
		return client.ImageInspectResult{}, cerrdefs.ErrNotFound.WithMessage("No such image: " + ref)
	}
	var res image.InspectResponse
	_ = json.Unmarshal([]byte(`{"Config":{"Entrypoint":["/agent"],"Cmd":["serve"]}}`), &res)
	return client.ImageInspectResult{InspectResponse: res}, nil
}

func (d *agentDocker) ContainerCreate(_ context.Context, o client.ContainerCreateOptions) (client.ContainerCreateResult, error) {
	if _, ok := d.containers[o.Name]; ok {
		return client.ContainerCreateResult{}, cerrdefs.ErrConflict.WithMessage("name in use")
	}
	d.containers[o.Name] = &o
	d.ids[o.Name] = strings.Repeat("ab", 32)
	return client.ContainerCreateResult{ID: d.ids[o.Name]}, nil
}

func (d *agentDocker) CopyFromContainer(context.Context, string, client.CopyFromContainerOptions) (client.CopyFromContainerResult, error) {
	return client.CopyFromContainerResult{}, cerrdefs.ErrNotFound.WithMessage("no such file")
}

func (d *agentDocker) CopyToContainer(_ context.Context, _ string, o client.CopyToContainerOptions) (client.CopyToContainerResult, error) {
	tr := tar.NewReader(o.Content)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return client.CopyToContainerResult{}, nil
		}
		if err != nil {
			return client.CopyToContainerResult{}, err
		}
		d.copied = append(d.copied, h.Name)
	}
}

func (d *agentDocker) ContainerStart(_ context.Context, id string, _ client.ContainerStartOptions) (client.ContainerStartResult, error) {
	for name, cid := range d.ids {
		if cid == id {
			d.running[name] = true
		}
	}
	return client.ContainerStartResult{}, nil
}

func (d *agentDocker) ContainerInspect(_ context.Context, name string, _ client.ContainerInspectOptions) (client.ContainerInspectResult, error) {
	if name == cpboot.ContainerName {
		var cmd []string
		if d.cpOry {
			cmd = []string{"--ory-dir", "/ory"}
		}
		return client.ContainerInspectResult{Container: container.InspectResponse{
			ID: strings.Repeat("cd", 32), Name: "/" + name, State: cpRunning,
			Config: &container.Config{Cmd: cmd, Labels: map[string]string{dockerx.LabelManaged: "true", dockerx.LabelPurpose: dockerx.PurposeControlPlane}},
			NetworkSettings: &container.NetworkSettings{Networks: map[string]*network.EndpointSettings{
				cpboot.NetworkName: {IPAddress: d.cpIP},
			}},
		}}, nil
	}
	o, ok := d.containers[name]
	if !ok {
		return client.ContainerInspectResult{}, cerrdefs.ErrNotFound.WithMessage("No such container: " + name)
	}
	st := &container.State{Status: container.StateExited}
	if d.running[name] {
		st = cpRunning
	}
	return client.ContainerInspectResult{Container: container.InspectResponse{
		ID: d.ids[name], Name: "/" + name, State: st, Config: &container.Config{Labels: o.Config.Labels},
	}}, nil
}

func (d *agentDocker) ContainerRemove(_ context.Context, id string, o client.ContainerRemoveOptions) (client.ContainerRemoveResult, error) {
	for name, cid := range d.ids {
		if cid == id || name == id {
			if d.running[name] && !o.Force {
				return client.ContainerRemoveResult{}, cerrdefs.ErrConflict.WithMessage("running")
			}
			delete(d.containers, name)
			delete(d.ids, name)
			delete(d.running, name)
			d.removed = append(d.removed, name)
			return client.ContainerRemoveResult{}, nil
		}
	}
	return client.ContainerRemoveResult{}, cerrdefs.ErrNotFound.WithMessage("No such container: " + id)
}

// bootstrapSpy stands in for cpboot.EnsureRunning.
type bootstrapSpy struct {
	calls []cpboot.Options
	res   cpboot.Result
	err   error
}

func (b *bootstrapSpy) fn(_ context.Context, o cpboot.Options) (cpboot.Result, error) {
	b.calls = append(b.calls, o)
	return b.res, b.err
}

// embedsClawkerd reports whether this test binary carries clawkerd (the
// checkout's pkg/cpboot/embedded/ had it when the test was built).
func embedsClawkerd() bool {
	b, err := cpboot.Embedded()
	return err == nil && b.Has(cpboot.AgentBinary)
}

// runEnv is a home with auth material and settings (agent port 7555,
// heartbeat 700ms), the agent daemon and a bootstrap spy.
func runEnv(t *testing.T) (clawkercli.Env, *agentDocker, *bootstrapSpy, *strings.Builder, *strings.Builder) {
	t.Helper()
	h := adminclienttest.NewHome(t)
	h.EnsureAuth(t)
	if err := os.MkdirAll(filepath.Join(h.ConfigHome, "clawker"), 0o700); err != nil {
		t.Fatal(err)
	}
	yaml := "control_plane:\n  agent_port: 7555\n  sessions:\n    heartbeat: 700ms\n"
	if err := os.WriteFile(filepath.Join(h.ConfigHome, "clawker", "settings.yaml"), []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	d := newAgentDocker()
	spy := &bootstrapSpy{res: cpboot.Result{Outcome: cpboot.OutcomeAlreadyRunning, IP: netip.MustParseAddr("172.30.0.202")}}
	vars := map[string]string{clawkerDebugLabels: "dev.clawker.test=run1"}
	var stdout, stderr strings.Builder
	env := clawkercli.Env{
		Stdout: &stdout, Stderr: &stderr, Docker: d.env(), Bootstrap: spy.fn,
		Getenv: func(k string) string {
			if v, ok := vars[k]; ok {
				return v
			}
			return h.Getenv(k)
		},
	}
	return env, d, spy, &stdout, &stderr
}

const clawkerDebugLabels = "CLAWKER_DEBUG_LABELS"

// Every argument mistake is caught before anything is asked, and names
// the flag.
func TestRunArgumentErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--agent", "dev"}, "run: IMAGE is required"},
		{[]string{"run", "agent:1"}, "--agent: required"},
		{[]string{"run", "--agent", "Dev", "agent:1"}, `--agent: invalid agent "Dev"`},
		{[]string{"run", "--agent", "a.b", "agent:1"}, `--agent: invalid agent "a.b"`},
		{[]string{"run", "--project", "-p", "--agent", "dev", "agent:1"}, `--project: invalid project "-p"`},
		{[]string{"run", "--agent", "dev", "--format", "yaml", "agent:1"}, "--format"},
		{[]string{"rm", "--project", "p"}, "--agent: required"},
		{[]string{"rm", "--project", "p", "--agent", "Dev"}, `--agent: invalid agent "Dev"`},
		{[]string{"rm", "--project", "p", "--agent", "dev", "extra"}, "rm takes no arguments"},
	} {
		env, d, spy, stdout, stderr := runEnv(t)
		if code := run(t, env, c.args...); code != 1 {
			t.Errorf("%q: exit %d", c.args, code)
		}
		if !strings.Contains(stderr.String(), c.want) || strings.Count(stderr.String(), "\n") != 1 || stdout.Len() != 0 {
			t.Errorf("%q: stderr %q, want %q", c.args, stderr.String(), c.want)
		}
		if len(spy.calls) != 0 || len(d.containers) != 0 {
			t.Errorf("%q: bootstrapped %d times, %d containers", c.args, len(spy.calls), len(d.containers))
		}
	}
}

// Without --project the current directory names the project; one that
// cannot be made a name is an error about --project.
func TestRunProjectFromDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "___")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	env, _, _, _, stderr := runEnv(t)
	if code := run(t, env, "rm", "--agent", "dev"); code != 1 || !strings.Contains(stderr.String(), "--project: not given, and the current directory") {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}

	dir = filepath.Join(t.TempDir(), "My App")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	env, _, _, _, stderr = runEnv(t)
	if code := run(t, env, "rm", "--agent", "dev"); code != 1 || !strings.Contains(stderr.String(), "no such agent container: clawker.my-app.dev (project my-app, agent dev)") {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
}

// run brings the control plane up with the debug labels, then creates the
// agent pointed at the CP's address and agent port, with the CP's
// heartbeat, and prints its id.
func TestRun(t *testing.T) {
	env, d, spy, stdout, stderr := runEnv(t)
	code := run(t, env, "run", "--project", "myapp", "--agent", "dev", "agent:1", "exit", "3")
	if len(spy.calls) != 1 || spy.calls[0].Labels["dev.clawker.test"] != "run1" || spy.calls[0].Reporter == nil {
		t.Fatalf("bootstrap calls %+v", spy.calls)
	}
	if !embedsClawkerd() {
		// A checkout without the embedded binaries: run says so and
		// creates nothing.
		if code != 1 || len(d.containers) != 0 || !strings.Contains(stderr.String(), "clawker") {
			t.Fatalf("exit %d, containers %d, stderr %q", code, len(d.containers), stderr.String())
		}
		t.Skipf("this test binary embeds no clawkerd (%s): the rest needs it", strings.TrimSpace(stderr.String()))
	}
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	o := d.containers["clawker.myapp.dev"]
	if o == nil || stdout.String() != strings.Repeat("ab", 32)+"\n" {
		t.Fatalf("stdout %q, containers %v", stdout.String(), d.containers)
	}
	for _, want := range []string{"CLAWKERD_CP_ADDR=172.30.0.202:7555", "CLAWKERD_HEARTBEAT=700ms", "CLAWKERD_PROJECT=myapp", "CLAWKERD_AGENT=dev"} {
		if !slices.Contains(o.Config.Env, want) {
			t.Errorf("env %q lacks %q", o.Config.Env, want)
		}
	}
	if !slices.Equal(o.Config.Cmd, []string{"--", "/agent", "exit", "3"}) || o.Config.Labels["dev.clawker.test"] != "run1" {
		t.Errorf("cmd %q labels %v", o.Config.Cmd, o.Config.Labels)
	}
	// With the firewall on (the default), the firewall CA first.
	if !slices.Equal(d.copied, []string{"etc/clawker/", "etc/clawker/ca-bundle.crt", "etc/clawker/firewall-ca.crt",
		"clawker/", "clawker/clawkerd", "clawker/ca.crt", "clawker/agent.crt", "clawker/agent.key"}) {
		t.Errorf("copied %q", d.copied)
	}
	if fp := o.Config.Labels["dev.clawker.firewall-ca"]; len(fp) != 64 || !slices.Contains(o.Config.Env, "SSL_CERT_FILE=/etc/clawker/ca-bundle.crt") {
		t.Errorf("firewall CA label %q, env %q", fp, o.Config.Env)
	}

	// The same agent again: refused with the way out.
	stdout.Reset()
	stderr.Reset()
	if code := run(t, env, "run", "--project", "myapp", "--agent", "dev", "agent:1"); code != 1 ||
		!strings.Contains(stderr.String(), "clawker rm -f --project myapp --agent dev") {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}

	// --format json carries the agent and the bootstrap.
	stdout.Reset()
	if code := run(t, env, "run", "--project", "myapp", "--agent", "review", "--format", "json", "agent:1"); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	var rep clawkercli.RunReport
	if err := json.Unmarshal([]byte(stdout.String()), &rep); err != nil || rep.Agent.Name != "clawker.myapp.review" ||
		!slices.Equal(rep.Agent.Argv, []string{"/agent", "serve"}) || rep.Agent.Owner != "0:0" || rep.Bootstrap == nil || rep.Agent.CertNotAfter.IsZero() {
		t.Errorf("%v: %s", err, stdout.String())
	}
}

// A failed bootstrap fails run before anything is created.
func TestRunBootstrapFails(t *testing.T) {
	env, d, spy, stdout, stderr := runEnv(t)
	spy.err = errors.New("the control plane exited with code 1 during start-up")
	if code := run(t, env, "run", "--project", "myapp", "--agent", "dev", "agent:1"); code != 1 ||
		!strings.HasSuffix(stderr.String(), "\nclawker: starting container: bootstrapping services: ensuring control plane is running: the control plane exited with code 1 during start-up\n") || stdout.Len() != 0 || len(d.containers) != 0 {
		t.Errorf("exit %d, stderr %q, containers %d", code, stderr.String(), len(d.containers))
	}
}

// Without a bootstrap (Env.Bootstrap nil) run needs a running control
// plane and takes its address from Docker.
func TestRunWithoutBootstrap(t *testing.T) {
	env, d, _, _, stderr := runEnv(t)
	env.Bootstrap = nil
	code := run(t, env, "run", "--project", "myapp", "--agent", "dev", "agent:1")
	if !embedsClawkerd() {
		t.Skip("this test binary embeds no clawkerd")
	}
	if code != 0 || !slices.Contains(d.containers["clawker.myapp.dev"].Config.Env, "CLAWKERD_CP_ADDR=172.30.0.202:7555") {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
}

// When the control plane runs Ory (the bootstrap says so, or, without a
// bootstrap, its container's command), run copies a clawker-agent client
// assertion in and tells clawkerd to exchange it at Hydra's public port on
// the CP's clawker-net address; the audience is Hydra's own token URL.
func TestRunWithOry(t *testing.T) {
	for _, bootstrap := range []bool{true, false} {
		env, d, spy, _, stderr := runEnv(t)
		spy.res.Ory = true
		d.cpOry = true
		if !bootstrap {
			env.Bootstrap = nil
		}
		code := run(t, env, "run", "--project", "myapp", "--agent", "dev", "--format", "json", "agent:1")
		if !embedsClawkerd() {
			t.Skip("this test binary embeds no clawkerd")
		}
		if code != 0 {
			t.Fatalf("bootstrap %v: exit %d, stderr %q", bootstrap, code, stderr.String())
		}
		o := d.containers["clawker.myapp.dev"]
		for _, want := range []string{
			"CLAWKERD_TOKEN_URL=https://172.30.0.202:4444/oauth2/token",
			"CLAWKERD_TOKEN_AUDIENCE=https://127.0.0.1:4444/oauth2/token",
			"CLAWKERD_ASSERTION=/clawker/agent.assertion",
		} {
			if !slices.Contains(o.Config.Env, want) {
				t.Errorf("bootstrap %v: env %q lacks %q", bootstrap, o.Config.Env, want)
			}
		}
		if !slices.Contains(d.copied, "clawker/agent.assertion") {
			t.Errorf("bootstrap %v: copied %q", bootstrap, d.copied)
		}
	}
	// Without Ory: no token (TestRun checks the exact files copied).
	env, d, _, _, _ := runEnv(t)
	if code := run(t, env, "run", "--project", "myapp", "--agent", "dev", "agent:1"); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if slices.ContainsFunc(d.containers["clawker.myapp.dev"].Config.Env, func(e string) bool { return strings.HasPrefix(e, "CLAWKERD_TOKEN") }) {
		t.Errorf("env without Ory %q", d.containers["clawker.myapp.dev"].Config.Env)
	}
}

// agents, tree and state go through the bootstrap first; a failed one is
// the verb's error and nothing else is asked.
func TestVerbsBootstrapFirst(t *testing.T) {
	for _, verb := range []string{"tree", "state"} {
		asked := 0
		port := serve(t, map[string]func(http.ResponseWriter){
			"/debug/actors": func(w http.ResponseWriter) { asked++; _, _ = w.Write([]byte(`{"name":"clawker-cp"}`)) },
			"/debug/state":  func(w http.ResponseWriter) { asked++; _, _ = w.Write([]byte(`{"containers":[],"sessions":[]}`)) },
		})
		env, _, stderr := cliEnv(t, port)
		spy := &bootstrapSpy{}
		env.Bootstrap = spy.fn
		if code := run(t, env, "controlplane", verb); code != 0 || len(spy.calls) != 1 || asked != 1 {
			t.Errorf("%s: exit %d, bootstraps %d, asked %d, stderr %q", verb, code, len(spy.calls), asked, stderr.String())
		}
		spy.err = errors.New("bootstrap failed")
		stderr.Reset()
		if code := run(t, env, "controlplane", verb); code != 1 || asked != 1 || stderr.String() != "clawker: bootstrap failed\n" {
			t.Errorf("%s: exit %d, asked %d, stderr %q", verb, code, asked, stderr.String())
		}
	}

	h, srv := runningCP(t, seedAgents()...)
	spy := &bootstrapSpy{}
	var stdout, stderr strings.Builder
	env := clawkercli.Env{Stdout: &stdout, Stderr: &stderr, Getenv: h.Getenv, Bootstrap: spy.fn, Docker: dockerWith(cpRunning)}
	if code := run(t, env, "controlplane", "agents"); code != 0 || len(spy.calls) != 1 || srv.Calls("ListAgents") != 1 {
		t.Errorf("agents: exit %d, bootstraps %d, stderr %q", code, len(spy.calls), stderr.String())
	}
	spy.err = errors.New("bootstrap failed")
	if code := run(t, env, "controlplane", "agents"); code != 1 || srv.Calls("ListAgents") != 1 {
		t.Errorf("agents: exit %d after a failed bootstrap", code)
	}
}

func TestRm(t *testing.T) {
	env, d, spy, stdout, stderr := runEnv(t)
	labels := map[string]string{"dev.clawker.managed": "true", "dev.clawker.purpose": "agent", "dev.clawker.project": "myapp", "dev.clawker.agent": "dev"}
	d.containers["clawker.myapp.dev"] = &client.ContainerCreateOptions{Name: "clawker.myapp.dev", Config: &container.Config{Labels: labels}}
	d.ids["clawker.myapp.dev"] = strings.Repeat("ef", 32)
	d.running["clawker.myapp.dev"] = true

	if code := run(t, env, "rm", "--project", "myapp", "--agent", "dev"); code != 1 ||
		!strings.Contains(stderr.String(), "agent container is running: clawker.myapp.dev (running); `clawker rm -f --project myapp --agent dev` kills and removes it") ||
		!strings.Contains(stderr.String(), "docker stop clawker.myapp.dev") || len(d.removed) != 0 {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
	stderr.Reset()
	if code := run(t, env, "rm", "-f", "--project", "myapp", "--agent", "dev"); code != 0 || stdout.String() != "clawker.myapp.dev\n" ||
		!slices.Equal(d.removed, []string{"clawker.myapp.dev"}) {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	stderr.Reset()
	if code := run(t, env, "rm", "-f", "--project", "myapp", "--agent", "dev"); code != 1 ||
		stderr.String() != "clawker: no such agent container: clawker.myapp.dev (project myapp, agent dev)\n" {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
	if len(spy.calls) != 0 {
		t.Errorf("rm bootstrapped the control plane %d times", len(spy.calls))
	}

	// A container of that name that is not clawker's agent is left alone.
	d.containers["clawker.myapp.dev"] = &client.ContainerCreateOptions{Name: "clawker.myapp.dev", Config: &container.Config{}}
	d.ids["clawker.myapp.dev"] = strings.Repeat("ef", 32)
	stderr.Reset()
	if code := run(t, env, "rm", "-f", "--project", "myapp", "--agent", "dev"); code != 1 || !strings.Contains(stderr.String(), agentrun.ErrNotAgent.Error()) {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
}
