package main_test

// These tests run the real clawker-cp against the real Docker daemon. They
// build their own image (FROM scratch, a static "sleeper" compiled here),
// label everything they create with dev.clawker.managed=true,
// dev.clawker.purpose=agent and a unique dev.clawker.test=<random>, and
// remove exactly that by label when they end, failed or not.
//
// None of them calls t.Parallel: TestDockerDaemonRestart restarts the daemon
// for the whole machine, and the drain-to-zero test depends on which agent
// containers run. The parallel tests of this package only start after every
// sequential test has finished.
//
// The watcher counts running agent containers host-wide (purpose=agent and
// managed=true), not only this test's: an agent container started by
// anything else on the machine keeps TestDockerDrainToZero's CP up (it then
// fails by timeout) and would keep the others' up in any case. No such
// container runs on the machines these tests are written for.

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/testkit"
)

const (
	dockerSocket  = "/var/run/docker.sock"
	testLabel     = dockerx.LabelTest
	dockerTimeout = 60 * time.Second // one Docker call, on a loaded machine
	// restartEnv opts in to TestDockerDaemonRestart outside CI.
	restartEnv = "CLAWKER_TEST_DOCKER_RESTART"
)

// watcherFast is the settings overlay of these tests: polls every second,
// a two-second grace, two zero polls in a row.
const watcherFast = "control_plane:\n  watcher:\n    poll_interval: 1s\n    grace: 2s\n    zero_streak: 2\n"

// dockerRig is one test's Docker: a client, the test's unique label and the
// image it built.
type dockerRig struct {
	c     *client.Client
	label string // this test's dev.clawker.test value
	image string
}

// requireDocker returns a client for the local daemon, or skips the test
// (fails it under CI=true) when there is none or we are not root. It
// registers the removal of everything the test labels, to run however the
// test ends.
func requireDocker(t *testing.T) *dockerRig {
	t.Helper()
	if _, err := os.Stat(dockerSocket); err != nil {
		testkit.SkipOrFail(t, "no Docker socket at "+dockerSocket)
	}
	if os.Geteuid() != 0 {
		testkit.SkipOrFail(t, "these tests need root for the Docker socket")
	}
	c, err := dockerx.New("unix://" + dockerSocket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if _, err := dockerx.Negotiate(context.Background(), c, 10*time.Second); err != nil {
		testkit.SkipOrFail(t, "the Docker daemon does not answer: "+err.Error())
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	r := &dockerRig{c: c, label: hex.EncodeToString(b)}
	t.Cleanup(func() { r.removeAll(t) })
	return r
}

func (r *dockerRig) labels(agent string) map[string]string {
	return map[string]string{
		dockerx.LabelManaged: "true", dockerx.LabelPurpose: dockerx.PurposeAgent,
		dockerx.LabelProject: "e2e", dockerx.LabelAgent: agent, testLabel: r.label,
	}
}

func (r *dockerRig) filter() client.Filters {
	return dockerx.LabelFilter(dockerx.Label(testLabel, r.label))
}

// removeAll removes this test's containers, then its images, by label. It
// waits for the daemon first (TestDockerDaemonRestart may have left it
// starting).
func (r *dockerRig) removeAll(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	waitDaemon(t, r.c, 2*time.Minute)
	cs, err := dockerx.Call(ctx, dockerTimeout, func(c context.Context) (client.ContainerListResult, error) {
		return r.c.ContainerList(c, client.ContainerListOptions{All: true, Filters: r.filter()})
	})
	if err != nil {
		t.Errorf("cleanup: listing the test's containers: %v", err)
	}
	for _, s := range cs.Items {
		if err := dockerx.Do(ctx, dockerTimeout, func(c context.Context) error {
			_, err := r.c.ContainerRemove(c, s.ID, client.ContainerRemoveOptions{Force: true})
			return err
		}); err != nil {
			t.Errorf("cleanup: removing container %s: %v", s.ID, err)
		}
	}
	is, err := dockerx.Call(ctx, dockerTimeout, func(c context.Context) (client.ImageListResult, error) {
		return r.c.ImageList(c, client.ImageListOptions{All: true, Filters: r.filter()})
	})
	if err != nil {
		t.Errorf("cleanup: listing the test's images: %v", err)
	}
	for _, im := range is.Items {
		if err := dockerx.Do(ctx, dockerTimeout, func(c context.Context) error {
			_, err := r.c.ImageRemove(c, im.ID, client.ImageRemoveOptions{Force: true, PruneChildren: true})
			return err
		}); err != nil {
			t.Errorf("cleanup: removing image %s: %v", im.ID, err)
		}
	}
}

// waitDaemon waits until the daemon answers a ping.
func waitDaemon(t *testing.T, c *client.Client, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		_, err := dockerx.Call(context.Background(), 5*time.Second, func(ctx context.Context) (client.PingResult, error) {
			return c.Ping(ctx, client.PingOptions{})
		})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the Docker daemon did not answer within %s: %v", within, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// sleeperSource waits for SIGTERM or SIGINT (as PID 1 nothing else stops it)
// and exits with $EXIT_CODE.
const sleeperSource = `package main

import (
	"os"
	"os/signal"
	"strconv"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
	code, _ := strconv.Atoi(os.Getenv("EXIT_CODE"))
	os.Exit(code)
}
`

// buildImage compiles the sleeper and builds a FROM-scratch image of it from
// an in-memory build context, labelled like everything else.
func (r *dockerRig) buildImage(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(sleeperSource), 0o644); err != nil {
		t.Fatal(err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", "sleeper", "main.go")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOFLAGS=-buildvcs=false", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the sleeper: %v\n%s", err, out)
	}
	bin, err := os.ReadFile(filepath.Join(dir, "sleeper"))
	if err != nil {
		t.Fatal(err)
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{
		{"Dockerfile", 0o644, []byte("FROM scratch\nCOPY sleeper /sleeper\nENTRYPOINT [\"/sleeper\"]\n")},
		{"sleeper", 0o755, bin},
	} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: time.Now()}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}

	r.image = "clawker-test-sleeper:" + r.label
	bctx, bcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer bcancel()
	res, err := r.c.ImageBuild(bctx, &buf, client.ImageBuildOptions{
		Tags: []string{r.image}, Labels: r.labels("image"), Remove: true, ForceRemove: true,
	})
	if err != nil {
		t.Fatalf("building the test image: %v", err)
	}
	defer res.Body.Close()
	dec := json.NewDecoder(res.Body)
	for {
		var m struct {
			Error  string `json:"error"`
			Stream string `json:"stream"`
		}
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("reading the build output: %v", err)
		}
		if m.Error != "" {
			t.Fatalf("building the test image: %s", m.Error)
		}
	}
}

// create creates (without starting) an agent container named
// clawker-test-<label>-<agent>; it exits with exitCode on SIGTERM.
func (r *dockerRig) create(t *testing.T, agent string, exitCode int) (id, name string) {
	t.Helper()
	name = "clawker-test-" + r.label + "-" + agent
	res, err := dockerx.Call(context.Background(), dockerTimeout, func(c context.Context) (client.ContainerCreateResult, error) {
		return r.c.ContainerCreate(c, client.ContainerCreateOptions{
			Name: name,
			Config: &container.Config{
				Image: r.image, Labels: r.labels(agent), Env: []string{fmt.Sprintf("EXIT_CODE=%d", exitCode)},
			},
			HostConfig: &container.HostConfig{NetworkMode: "none"},
		})
	})
	if err != nil {
		t.Fatalf("creating container %s: %v", name, err)
	}
	return res.ID, name
}

func (r *dockerRig) start(t *testing.T, id string) {
	t.Helper()
	if err := dockerx.Do(context.Background(), dockerTimeout, func(c context.Context) error {
		_, err := r.c.ContainerStart(c, id, client.ContainerStartOptions{})
		return err
	}); err != nil {
		t.Fatalf("starting container %s: %v", id, err)
	}
}

func (r *dockerRig) run(t *testing.T, agent string) (id, name string) {
	t.Helper()
	id, name = r.create(t, agent, 0)
	r.start(t, id)
	return id, name
}

func (r *dockerRig) stop(t *testing.T, id string) {
	t.Helper()
	grace := 10
	if err := dockerx.Do(context.Background(), dockerTimeout, func(c context.Context) error {
		_, err := r.c.ContainerStop(c, id, client.ContainerStopOptions{Timeout: &grace})
		return err
	}); err != nil {
		t.Fatalf("stopping container %s: %v", id, err)
	}
}

func (r *dockerRig) remove(t *testing.T, id string) {
	t.Helper()
	if err := dockerx.Do(context.Background(), dockerTimeout, func(c context.Context) error {
		_, err := r.c.ContainerRemove(c, id, client.ContainerRemoveOptions{Force: true})
		return err
	}); err != nil {
		t.Fatalf("removing container %s: %v", id, err)
	}
}

func (r *dockerRig) rename(t *testing.T, id, name string) {
	t.Helper()
	if err := dockerx.Do(context.Background(), dockerTimeout, func(c context.Context) error {
		_, err := r.c.ContainerRename(c, id, client.ContainerRenameOptions{NewName: name})
		return err
	}); err != nil {
		t.Fatalf("renaming container %s: %v", id, err)
	}
}

// waitState polls /debug/state until cond holds for the container with id
// (found is false when the worldview does not hold it) and returns its view.
func waitState(t *testing.T, p *cptest.Process, what, id string, cond func(v cpapi.ContainerView, found bool) bool) cpapi.ContainerView {
	t.Helper()
	var view cpapi.ContainerView
	p.WaitFor(t, changeTimeout, what, func() (bool, string) {
		var st cpapi.WorldState
		code, err := cptest.TryGetJSON(p.HealthURL()+"/debug/state", &st)
		if err != nil || code != http.StatusOK {
			return false, fmt.Sprintf("GET /debug/state: %d %v", code, err)
		}
		for _, c := range st.Containers {
			if c.ID == id {
				view = c
				return cond(c, true), fmt.Sprintf("%+v", c)
			}
		}
		return cond(cpapi.ContainerView{}, false), fmt.Sprintf("%s not in the worldview (%d containers)", id[:12], len(st.Containers))
	})
	return view
}

// TestDockerWorldview: the CP's worldview follows a labelled container
// through start, rename, stop and removal; a container already running when
// the CP starts is found by the initial listing; `clawker controlplane
// state` prints the worldview.
func TestDockerWorldview(t *testing.T) {
	r := requireDocker(t)
	r.buildImage(t)
	bins := cptest.BuildBinaries(t, cpPkg, cliPkg)

	// The keeper runs throughout: it is there before the CP (the initial
	// listing finds it) and keeps drain-to-zero from ending the CP while the
	// subject container is stopped.
	keeper, keeperName := r.run(t, "keeper")
	home := cptest.NewCPHome(t, watcherFast)
	p := cptest.StartCP(t, home, bins["clawker-cp"])
	p.WaitHealthy(t, healthyTimeout)
	p.WaitForEvent(t, changeTimeout, "dockerfeed_connected")
	k := waitState(t, p, "the keeper running", keeper, func(v cpapi.ContainerView, ok bool) bool {
		return ok && v.State == cpapi.ContainerRunning
	})
	if k.Name != keeperName || k.Purpose != "agent" || k.Project != "e2e" || k.Agent != "keeper" {
		t.Errorf("keeper %+v", k)
	}

	id, name := r.create(t, "subject", 3)
	r.start(t, id)
	v := waitState(t, p, "the subject running", id, func(v cpapi.ContainerView, ok bool) bool {
		return ok && v.State == cpapi.ContainerRunning
	})
	if v.Name != name || v.Purpose != "agent" || v.Project != "e2e" || v.Agent != "subject" || v.Since.IsZero() {
		t.Errorf("subject %+v", v)
	}

	r.rename(t, id, name+"-renamed")
	waitState(t, p, "the subject renamed", id, func(v cpapi.ContainerView, ok bool) bool {
		return ok && v.Name == name+"-renamed"
	})

	r.stop(t, id)
	v = waitState(t, p, "the subject stopped", id, func(v cpapi.ContainerView, ok bool) bool {
		return ok && v.State == cpapi.ContainerStopped
	})
	if v.ExitCode != 3 {
		t.Errorf("subject stopped with exit code %d, want 3 (its $EXIT_CODE)", v.ExitCode)
	}

	// The CLI reads the same worldview.
	env := append(home.Env(), "CLAWKER_NO_BOOTSTRAP=1") // this CP is a host process
	res := cptest.RunCmd(t, cptest.DefaultCmdTimeout, env, bins["clawker"], "controlplane", "state")
	if res.Code != 0 || !strings.HasPrefix(res.Stdout, "CONTAINERS\n") || !strings.Contains(res.Stdout, keeperName) ||
		!strings.Contains(res.Stdout, "\nSESSIONS\n") {
		t.Errorf("controlplane state: %+v", res)
	}
	res = cptest.RunCmd(t, cptest.DefaultCmdTimeout, env, bins["clawker"], "controlplane", "state", "--format", "json")
	var st cpapi.WorldState
	if err := json.Unmarshal([]byte(res.Stdout), &st); err != nil || res.Code != 0 || len(st.Containers) < 2 {
		t.Errorf("controlplane state --format json: %+v (%v)", res, err)
	}

	r.remove(t, id)
	waitState(t, p, "the subject gone", id, func(_ cpapi.ContainerView, ok bool) bool { return !ok })

	if p.Exited() || len(p.Events("drain_to_zero")) != 0 {
		t.Fatalf("the CP drained with the keeper running")
	}
	if n := len(p.Events("dockerfeed_connected")); n != 1 {
		t.Errorf("%d dockerfeed_connected lines, want 1", n)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.MustExit(t, exitTimeout); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
}

// TestDockerDrainToZero: with an agent container running the CP outlives the
// grace; once it is removed the CP runs the ordered drain by itself and
// exits 0.
func TestDockerDrainToZero(t *testing.T) {
	r := requireDocker(t)
	r.buildImage(t)
	id, _ := r.run(t, "last")

	home := cptest.NewCPHome(t, watcherFast)
	p := cptest.StartCP(t, home, cpBinary(t))
	p.WaitHealthy(t, healthyTimeout)
	// Past the 2s grace by several 1s polls, each counting one agent.
	time.Sleep(5 * time.Second)
	if p.Exited() || len(p.Events("drain_to_zero")) != 0 || len(p.Events("drain_begin")) != 0 {
		t.Fatalf("the CP drained with an agent container running\nstderr tail:\n%s", p.Tail(cptest.TailLines))
	}
	if u := p.Events("watcher_unavailable"); len(u) != 0 {
		t.Fatalf("the watcher could not count: %v", u)
	}

	r.remove(t, id)
	removed := time.Now()
	if code := p.MustExit(t, exitTimeout); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	took := time.Since(removed)
	steps := checkDrain(t, p)
	checkDrainSucceeded(t, steps)
	d := p.Events("drain_to_zero")
	if len(d) != 1 {
		t.Fatalf("drain_to_zero lines %v, want one", d)
	}
	if d[0]["agents"] != 0.0 || d[0]["zero_streak"] != 2.0 {
		t.Errorf("drain_to_zero line %v", d[0])
	}
	if b := p.Events("drain_begin"); len(b) != 1 || b[0]["reason"] != "drain_to_zero" || b[0]["exit_code"] != 0.0 {
		t.Errorf("drain_begin lines %v, want one for drain_to_zero with exit code 0", b)
	}
	if e := p.Events("exit"); len(e) != 1 || e[0]["exit_code"] != 0.0 {
		t.Errorf("exit lines %v, want one with exit_code 0", e)
	}
	t.Logf("the CP exited %s after the last agent container was removed", took.Round(time.Millisecond))
}

// TestDockerDaemonRestart restarts the Docker daemon of the whole machine
// (see restartDaemon) while a CP with its firewall on enforces two agent
// containers. This daemon runs without live-restore, so every container
// dies with it: the one without a restart policy stays stopped, and the CP
// must see that (from the dying daemon's stream or from the next listing)
// and stop enforcing it; the one with restart policy "always" comes back
// in a new cgroup, and the CP must enforce that cgroup (its UDP is EPERM,
// its TCP never reaches the outside host). (Docker 20.10 here tells the
// dies before it closes the stream; the feed's handling of a lost one is
// dockerfeed's TestRestartWhileAwayIsPublished.) The feeder says it lost and regained
// the daemon (Since on the reconnect), a container started after the
// restart shows in the worldview, and the CP neither drains nor stops.
// Gated: it runs under CI=true or CLAWKER_TEST_DOCKER_RESTART=1 only, and
// waits for the daemon to answer again before it returns.
func TestDockerDaemonRestart(t *testing.T) {
	if !testkit.InCI() && os.Getenv(restartEnv) != "1" {
		t.Skip("restarts the machine's Docker daemon; set " + restartEnv + "=1 (or CI=true) to run it")
	}
	r := requireDocker(t)
	r.buildImage(t)
	// Whatever happens below, the daemon must be back for what follows.
	t.Cleanup(func() { waitDaemon(t, r.c, 2*time.Minute) })

	// The rig's CP runs without the watcher: Docker back without agents
	// must not end it either.
	fw := newFWRig(t)
	p := fw.cp
	p.WaitForEvent(t, changeTimeout, "dockerfeed_connected")
	admin := fw.admin(t)
	agentNamed := func(name string) map[string]string {
		return map[string]string{
			dockerx.LabelManaged: "true", dockerx.LabelPurpose: dockerx.PurposeAgent,
			dockerx.LabelProject: "fwtest", dockerx.LabelAgent: name,
		}
	}
	back := fw.net.StartProbe(t, cptest.ProbeSpec{Args: []string{"-hold"}, Labels: agentNamed("back"), Restart: container.RestartPolicyAlways})
	gone := fw.hold(t, agentNamed("gone"))
	oldCgroup := fw.enforcedCgroup(t, admin, back.ID, 0)
	fw.enforcedCgroup(t, admin, gone.ID, 0)

	begin := time.Now()
	restartDaemon(t)
	waitDaemon(t, r.c, 2*time.Minute)
	t.Logf("the daemon answered again %s after the restart began", time.Since(begin).Round(time.Millisecond))

	newCgroup := fw.enforcedCgroup(t, admin, back.ID, oldCgroup)
	t.Logf("the restarted agent enforced on cgroup %d (was %d) %s after the restart began", newCgroup, oldCgroup, time.Since(begin).Round(time.Millisecond))
	waitState(t, p, "the agent without a restart policy stopped", gone.ID, func(v cpapi.ContainerView, ok bool) bool {
		return ok && v.State == cpapi.ContainerStopped
	})
	cptest.WaitFor(t, changeTimeout, "the stopped agent no longer enforced", func() (bool, string) {
		enforced, err := enforcedAgents(admin)
		if err != nil {
			return false, err.Error()
		}
		_, still := enforced[gone.ID]
		return !still, fmt.Sprint(enforced)
	})
	res := fw.exec(t, back, fw.outside.tcpTarget(), fw.outside.udpTarget())
	if len(res.Outcomes) != 2 {
		t.Fatalf("probe from the restarted agent: %+v (stderr %s)", res.Outcomes, res.Stderr)
	}
	if o := res.Outcomes[0]; reachedOutside(o) {
		t.Errorf("the restarted agent reached the outside host over TCP: %+v", o)
	}
	if o := res.Outcomes[1]; !denied(o) {
		t.Errorf("the restarted agent's UDP was not EPERM: %+v", o)
	}
	if n := fw.outside.reached(); n != 0 {
		t.Errorf("the outside host was reached %d times", n)
	}

	id, name := r.run(t, "after-restart")
	v := waitState(t, p, "the container started after the restart", id, func(v cpapi.ContainerView, ok bool) bool {
		return ok && v.State == cpapi.ContainerRunning
	})
	if v.Name != name {
		t.Errorf("container %+v, want name %s", v, name)
	}
	rc := p.WaitForEvent(t, changeTimeout, "dockerfeed_reconnected")
	if s, _ := rc["since"].(string); s == "" {
		t.Errorf("dockerfeed_reconnected without a since time: %v", rc)
	}
	if len(p.Events("dockerfeed_disconnected")) == 0 {
		t.Error("no dockerfeed_disconnected line")
	}
	if p.Exited() || len(p.Events("drain_begin")) != 0 {
		t.Fatal("the CP drained across the daemon restart")
	}
	r.remove(t, id)
	waitState(t, p, "the container gone", id, func(_ cpapi.ContainerView, ok bool) bool { return !ok })

	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.MustExit(t, exitTimeout); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
}

const (
	initScript = "/etc/init.d/docker"
	// initPidfile is the pid file of a dockerd the init script started.
	initPidfile = "/var/run/docker-ssd.pid"
	// daemonPidfile is dockerd's own pid file.
	daemonPidfile = "/var/run/docker.pid"
)

// restartDaemon restarts the machine's dockerd. A daemon the init script
// manages is restarted with `/etc/init.d/docker restart`. One it does not
// manage (no init pid file: started by the machine's own init, as on the
// sandboxes these tests were written on, where the script's `start` also
// fails: it raises RLIMIT_NOFILE, which needs CAP_SYS_RESOURCE) is stopped
// with SIGTERM and started again exactly as it ran: same command line,
// environment and cgroups, in a session of its own.
func restartDaemon(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(initPidfile); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, initScript, "restart").CombinedOutput(); err != nil {
			t.Fatalf("%s restart: %v\n%s", initScript, err, out)
		}
		return
	}
	raw, err := os.ReadFile(daemonPidfile)
	if err != nil {
		testkit.SkipOrFail(t, "cannot tell which dockerd runs: "+err.Error())
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatalf("%s: %v", daemonPidfile, err)
	}
	proc := fmt.Sprintf("/proc/%d/", pid)
	cmdline, err1 := os.ReadFile(proc + "cmdline")
	environ, err2 := os.ReadFile(proc + "environ")
	cgroups, err3 := os.ReadFile(proc + "cgroup")
	if err := errors.Join(err1, err2, err3); err != nil {
		t.Fatalf("reading dockerd's process (pid %d): %v", pid, err)
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	env := strings.Split(strings.TrimRight(string(environ), "\x00"), "\x00")
	if len(args) == 0 || filepath.Base(args[0]) != "dockerd" {
		t.Fatalf("pid %d in %s runs %q, not dockerd", pid, daemonPidfile, args)
	}
	if _, err := os.Stat(args[0]); err != nil {
		t.Fatalf("cannot start dockerd again: %v", err)
	}
	// The shell joins the old daemon's cgroups, then becomes dockerd.
	var join []string
	for _, line := range strings.Split(strings.TrimSpace(string(cgroups)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || parts[2] == "/" {
			continue
		}
		dir := "/sys/fs/cgroup/unified"
		if parts[1] != "" {
			dir = "/sys/fs/cgroup/" + strings.TrimPrefix(strings.Split(parts[1], ",")[0], "name=")
		}
		join = append(join, fmt.Sprintf("echo $$ > '%s%s/cgroup.procs' 2>/dev/null;", dir, parts[2]))
	}
	logFile, err := os.OpenFile("/var/log/docker.log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()

	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatalf("stopping dockerd (pid %d): %v", pid, err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		// Gone, or a zombie its parent has not reaped yet.
		st, err := os.ReadFile(proc + "stat")
		if f := strings.Fields(string(st)); err != nil || (len(f) > 2 && f[2] == "Z") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dockerd (pid %d) did not exit within 90s of SIGTERM", pid)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cmd := exec.Command("/bin/sh", append([]string{"-c", strings.Join(join, " ") + ` exec "$@"`, "sh"}, args...)...)
	cmd.Env, cmd.Dir = env, "/"
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting dockerd again: %v", err)
	}
	t.Logf("dockerd (pid %d) stopped; started again as pid %d", pid, cmd.Process.Pid)
	_ = cmd.Process.Release()
}
