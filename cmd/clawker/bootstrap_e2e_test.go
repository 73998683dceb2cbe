package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/clawkercli"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/testkit"
)

func TestMain(m *testing.M) { cptest.Main(m) }

// drainSteps is the CP's ordered drain (cpapi.DrainSteps), as its drain_step
// lines name the steps.
var drainSteps = cpapi.DrainStepNames()

// Bounds of the CLI runs. A cold up builds a ~40 MB image.
const (
	coldUpTimeout = 4 * time.Minute
	cmdTimeout    = 2 * time.Minute
	// failFast is how quickly a start that cannot succeed must be
	// reported: well under the 60 s health timeout.
	failFast = 20 * time.Second
)

// e2e is one run of the bootstrap tests: the real daemon, a clawker with
// the freshly built control plane embedded, a private XDG home with free
// ports, and a run id on everything created.
type e2e struct {
	d      *client.Client
	run    string
	labels map[string]string
	bin    string // clawker
	hash   string // the embedded binaries' hash
	home   *cptest.Home
}

func (e *e2e) env() []string {
	return append(e.home.Env(), "CLAWKER_DEBUG_LABELS="+cptest.LabelTest+"="+e.run)
}

func (e *e2e) clawker(t *testing.T, timeout time.Duration, args ...string) cptest.Result {
	t.Helper()
	return cptest.RunCmd(t, timeout, e.env(), e.bin, args...)
}

// up runs `controlplane up --format json` and decodes a successful answer.
func (e *e2e) up(t *testing.T, timeout time.Duration) (clawkercli.StatusReport, cptest.Result, time.Duration) {
	t.Helper()
	start := time.Now()
	res := e.clawker(t, timeout, "controlplane", "up", "--format", "json")
	took := time.Since(start)
	var rep clawkercli.StatusReport
	if res.Code == 0 {
		if err := json.Unmarshal([]byte(res.Stdout), &rep); err != nil || rep.Bootstrap == nil {
			t.Fatalf("controlplane up: stdout is not a status report with bootstrap (%v):\n%s", err, res.Stdout)
		}
	}
	return rep, res, took
}

func (e *e2e) mustUp(t *testing.T, timeout time.Duration) (*cpboot.Result, time.Duration) {
	t.Helper()
	rep, res, took := e.up(t, timeout)
	if res.Code != 0 {
		t.Fatalf("controlplane up: exit %d\nstderr:\n%s\n%s", res.Code, res.Stderr, e.cpLogs(t, 20))
	}
	if rep.Container != "running" || rep.Healthz == nil || !rep.Healthz.OK {
		t.Fatalf("controlplane up succeeded but the status is %+v", rep)
	}
	return rep.Bootstrap, took
}

func (e *e2e) inspect(t *testing.T, id string) container.InspectResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := e.d.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatalf("inspecting %s: %v", id, err)
	}
	return res.Container
}

// cpExists reports whether a clawker-controlplane container exists.
func (e *e2e) cpExists(t *testing.T) (container.InspectResponse, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := e.d.ContainerInspect(ctx, cpboot.ContainerName, client.ContainerInspectOptions{})
	if err != nil {
		return container.InspectResponse{}, false
	}
	return res.Container, true
}

// removeCP removes the clawker-controlplane container, which must be this
// run's.
func (e *e2e) removeCP(t *testing.T) {
	t.Helper()
	c, ok := e.cpExists(t)
	if !ok {
		return
	}
	if c.Config.Labels[cptest.LabelTest] != e.run {
		t.Fatalf("%s is not this run's container (labels %v); not removing it", cpboot.ContainerName, c.Config.Labels)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := e.d.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
}

// cpLogs is the tail of `docker logs clawker-controlplane`, for failure
// messages.
func (e *e2e) cpLogs(t *testing.T, n int) string {
	t.Helper()
	out, err := e.logs(cpboot.ContainerName, strconv.Itoa(n))
	if err != nil {
		return "(no docker logs: " + err.Error() + ")"
	}
	return "docker logs " + cpboot.ContainerName + " (tail):\n" + out
}

func (e *e2e) logs(id, tail string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rc, err := e.d.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Tail: tail})
	if err != nil {
		return "", err
	}
	defer rc.Close()
	var out bytes.Buffer
	_, err = stdcopy.StdCopy(&out, &out, rc)
	return out.String(), err
}

func (e *e2e) writeSettings(t *testing.T, extra string) {
	t.Helper()
	// Drain-to-zero would end a CP without agents within a minute or two;
	// these tests keep theirs up longer than that.
	e.home.WriteSettingsWithPorts(t, "control_plane: {watcher: {grace: 1h}}\n"+extra)
}

// bundleHash is the hash clawker computes over the binaries it embeds.
func bundleHash(t *testing.T, bins map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	// Every key but "clawker" is a file of the bundle at that path
	// (clawker-cp, clawkerd, ory/hydra, ...).
	for name, src := range bins {
		if name == "clawker" {
			continue
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := cpboot.BundleFromDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	h, err := b.Hash()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestBootstrap drives `clawker controlplane up/down/status` against the
// real daemon. The cases share the fixed names clawker-net and
// clawker-controlplane, so they run in sequence, each from the state the
// previous one left; a failed case stops the rest.
func TestBootstrap(t *testing.T) {
	d := cptest.RequireDocker(t)
	run := cptest.NewRunID()
	e := &e2e{d: d, run: run, labels: cptest.TestLabels(run)}
	if c, ok := e.cpExists(t); ok {
		reason := fmt.Sprintf("a %s container exists on this host (labels %v); these tests need the name: remove it first", cpboot.ContainerName, c.Config.Labels)
		testkit.SkipOrFail(t, reason)
	}
	t.Cleanup(func() { cptest.RemoveLabelled(t, d, e.labels) })

	bins := cptest.BuildClawkerWithCP(t)
	e.bin, e.hash = bins["clawker"], bundleHash(t, bins)
	e.home = cptest.NewHome(t)
	e.writeSettings(t, "")

	for _, c := range []struct {
		name string
		f    func(*testing.T, *e2e)
	}{
		{"from_nothing", testFromNothing},
		{"ory_unprivileged_in_container", testOryUnprivilegedInContainer},
		{"down_drains", testDown},
		{"start_fails_port_taken", testPortTaken},
		{"start_fails_firewall_enabled", testFirewallEnabled},
		{"firewall_enforces_in_container", testFirewallInContainer},
		{"other_hash_with_agent_running", testOtherHashWithAgent},
		{"measure", testMeasure},
	} {
		if !t.Run(c.name, func(t *testing.T) { c.f(t, e) }) {
			t.Fatalf("%s failed; the later cases depend on its state", c.name)
		}
	}
}

func testFromNothing(t *testing.T, e *e2e) {
	ctx := context.Background()
	image := cpboot.ImageRef(e.hash)
	expectBuild := true
	if img, err := e.d.ImageInspect(ctx, image); err == nil {
		if img.Config != nil && img.Config.Labels[cptest.LabelTest] != "" {
			// A leftover of an interrupted test run: this exact tag only.
			if _, err := e.d.ImageRemove(ctx, image, client.ImageRemoveOptions{PruneChildren: true}); err != nil {
				t.Fatalf("removing leftover test image %s: %v", image, err)
			}
		} else {
			t.Logf("%s exists and is not a test's: the build is not checked", image)
			expectBuild = false
		}
	}

	res, took := e.mustUp(t, coldUpTimeout)
	t.Logf("cold up: %s (%s)", took.Round(time.Millisecond), steps(res))
	if res.Outcome != cpboot.OutcomeCreated || res.Image != image || res.BinHash != e.hash || (expectBuild && !res.ImageBuilt) {
		t.Errorf("bootstrap %+v; want outcome created, image %s built", res, image)
	}

	// The container: ours, on clawker-net at the gateway's .202.
	c := e.inspect(t, cpboot.ContainerName)
	if c.ID != res.ContainerID || !c.State.Running {
		t.Fatalf("container %s running %v, bootstrap said %s", c.ID, c.State.Running, res.ContainerID)
	}
	for k, v := range map[string]string{dockerx.LabelManaged: "true", dockerx.LabelPurpose: "controlplane", dockerx.LabelBinHash: e.hash, cptest.LabelTest: e.run} {
		if c.Config.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, c.Config.Labels[k], v)
		}
	}
	n, err := e.d.NetworkInspect(ctx, cpboot.NetworkName, client.NetworkInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ep := c.NetworkSettings.Networks[cpboot.NetworkName]
	if ep == nil || len(n.Network.IPAM.Config) == 0 {
		t.Fatalf("no endpoint on %s (%+v) or no IPAM config (%+v)", cpboot.NetworkName, c.NetworkSettings.Networks, n.Network.IPAM)
	}
	want, err := cpboot.AddrWithLastOctet(n.Network.IPAM.Config[0].Gateway, 202)
	if err != nil || ep.IPAddress != want || res.IP != want {
		t.Errorf("address on %s: %s, bootstrap says %s; want the gateway's .202: %s (%v)", cpboot.NetworkName, ep.IPAddress, res.IP, want, err)
	}
	if caps := c.HostConfig.CapAdd; !slices.Contains(caps, "CAP_SYS_ADMIN") && !slices.Contains(caps, "SYS_ADMIN") {
		t.Errorf("caps %v", caps)
	}

	// /healthz from the host, on loopback.
	health := "http://127.0.0.1:" + strconv.Itoa(e.home.Ports(t).Health()) + "/healthz"
	if code, err := cptest.TryGetJSON(health, nil); code != http.StatusOK {
		t.Errorf("GET %s: %d %v", health, code, err)
	}
	st := e.clawker(t, cmdTimeout, "controlplane", "status")
	if want := "Container: running\nHealthz: ✓\nFirewall: off (firewall.enable: false)\nCP image: bin-" + e.hash + " (the one this clawker carries)\n"; st.Code != 0 || st.Stdout != want {
		t.Errorf("status: exit %d\n%s%s", st.Code, st.Stdout, st.Stderr)
	}

	// A second up is a no-op.
	again, took := e.mustUp(t, cmdTimeout)
	t.Logf("green up: %s (%s)", took.Round(time.Millisecond), steps(again))
	if again.Outcome != cpboot.OutcomeAlreadyRunning || again.ContainerID != res.ContainerID {
		t.Errorf("second up: %+v; want already-running, container %s", again, res.ContainerID)
	}
	if took > 2*time.Second {
		t.Errorf("a green up took %s", took)
	}

	// Two ups at once create one container.
	e.removeCP(t)
	type outcome struct {
		res  cptest.Result
		took time.Duration
	}
	var wg sync.WaitGroup
	outs := make([]outcome, 2)
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			outs[i].res = runCmd(coldUpTimeout, e.env(), e.bin, "controlplane", "up", "--format", "json")
			outs[i].took = time.Since(start)
		}()
	}
	wg.Wait()
	ids := map[string]bool{}
	var outcomes []string
	for i, o := range outs {
		var rep clawkercli.StatusReport
		if o.res.Code != 0 || json.Unmarshal([]byte(o.res.Stdout), &rep) != nil || rep.Bootstrap == nil {
			t.Fatalf("concurrent up %d: exit %d\n%s\n%s", i, o.res.Code, o.res.Stdout, o.res.Stderr)
		}
		ids[rep.Bootstrap.ContainerID] = true
		outcomes = append(outcomes, rep.Bootstrap.Outcome)
		t.Logf("concurrent up %d: %s in %s", i, rep.Bootstrap.Outcome, o.took.Round(time.Millisecond))
	}
	sort.Strings(outcomes)
	list, err := e.d.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", dockerx.LabelPurpose+"=controlplane", cptest.LabelTest+"="+e.run)})
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 1 || len(list.Items) != 1 || outcomes[0] == outcomes[1] {
		t.Errorf("concurrent ups: container ids %v, outcomes %v, %d control plane containers", ids, outcomes, len(list.Items))
	}
}

func testDown(t *testing.T, e *e2e) {
	before := e.inspect(t, cpboot.ContainerName)
	start := time.Now()
	res := e.clawker(t, 3*time.Minute, "controlplane", "down")
	took := time.Since(start)
	if res.Code != 0 || !strings.HasPrefix(res.Stdout, "control plane stopped (") || !strings.HasSuffix(res.Stdout, "exit 0)\n") {
		t.Fatalf("down: exit %d\n%s%s\n%s", res.Code, res.Stdout, res.Stderr, e.cpLogs(t, 20))
	}
	t.Logf("down: %s", took.Round(time.Millisecond))

	// The drain ran, in order, in the host's log file and in docker logs.
	fileLines, _ := cptest.ReadJSONLines(t, e.home.LogFile(t))
	if got := stepNames(cptest.FilterEvent(fileLines, "drain_step")); !slices.Equal(got, drainSteps) {
		t.Errorf("drain_step lines in %s: %q, want %q", e.home.LogFile(t), got, drainSteps)
	}
	logs, err := e.logs(before.ID, "all")
	if err != nil {
		t.Fatal(err)
	}
	dockerLines, _ := cptest.ParseJSONLines(logs)
	if got := stepNames(cptest.FilterEvent(dockerLines, "drain_step")); !slices.Equal(got, drainSteps) {
		t.Errorf("drain_step lines in docker logs: %q, want %q", got, drainSteps)
	}

	// Exited 0, and the on-failure policy leaves it so.
	after := e.inspect(t, before.ID)
	if after.State.Running || after.State.ExitCode != 0 || after.RestartCount != 0 {
		t.Fatalf("after down: %+v, restarts %d", after.State, after.RestartCount)
	}
	time.Sleep(3 * time.Second)
	later := e.inspect(t, before.ID)
	if later.State.Status != "exited" || later.State.ExitCode != 0 || later.RestartCount != 0 || later.State.StartedAt != after.State.StartedAt {
		t.Errorf("3s after down: %+v, restarts %d", later.State, later.RestartCount)
	}

	st := e.clawker(t, cmdTimeout, "controlplane", "status")
	if st.Code != 0 || st.Stdout != "Container: stopped\n" {
		t.Errorf("status after down: exit %d %q %q", st.Code, st.Stdout, st.Stderr)
	}
	again := e.clawker(t, cmdTimeout, "controlplane", "down")
	if again.Code != 0 || again.Stdout != "control plane not running\n" {
		t.Errorf("second down: exit %d %q %q", again.Code, again.Stdout, again.Stderr)
	}
}

func stepNames(lines []map[string]any) []string {
	var out []string
	for _, l := range lines {
		s, _ := l["step"].(string)
		out = append(out, s)
	}
	return out
}

// The health port is taken on the host's loopback: Docker cannot publish
// it, the start fails, and up says so at once.
func testPortTaken(t *testing.T, e *e2e) {
	port := e.home.Ports(t).Health()
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatalf("taking the health port %d: %v", port, err)
	}
	start := time.Now()
	_, res, took := e.up(t, cmdTimeout)
	ln.Close()
	if res.Code == 0 {
		t.Fatalf("up succeeded with the health port taken:\n%s", res.Stdout)
	}
	if took > failFast {
		t.Errorf("up took %s to fail", took)
	}
	for _, want := range []string{"starting container clawker-controlplane", "`docker logs clawker-controlplane`", strconv.Itoa(port)} {
		if !strings.Contains(res.Stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, res.Stderr)
		}
	}
	t.Logf("failed after %s:\n%s", time.Since(start).Round(time.Millisecond), res.Stderr)
}

// firewall.enable: true (the default) and nothing answering at the stack's
// addresses: the CP refuses to start and exits 1; up reports the exit and
// the CP's own words.
func testFirewallEnabled(t *testing.T, e *e2e) {
	// The failing CP loads its programs before it finds no stack: nothing
	// drains them, as designed, so the test removes them.
	flushProductionPinsAfter(t)
	e.writeSettings(t, "firewall: {enable: true}")
	defer e.writeSettings(t, "")
	_, res, took := e.up(t, cmdTimeout)
	if res.Code == 0 {
		t.Fatalf("up succeeded with the firewall enabled:\n%s", res.Stdout)
	}
	if took > failFast {
		t.Errorf("up took %s to fail", took)
	}
	for _, want := range []string{"exited with code 1", "firewall.enable: false", "`docker logs clawker-controlplane`"} {
		if !strings.Contains(res.Stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, res.Stderr)
		}
	}
	t.Logf("failed after %s:\n%s", took.Round(time.Millisecond), res.Stderr)

	// Fixed settings: the next up starts it, even while Docker's restart
	// policy is still retrying the failed one (a retry that is not green is
	// stopped and started afresh, since it may have read the old settings),
	// or finds it already green when a retry picked up the fixed settings.
	e.writeSettings(t, "")
	res2, _ := e.mustUp(t, cmdTimeout)
	if res2.Outcome != cpboot.OutcomeStarted && res2.Outcome != cpboot.OutcomeAdopted && res2.Outcome != cpboot.OutcomeAlreadyRunning {
		t.Errorf("up after the fix: %+v", res2)
	}
}

// A control plane of other binaries runs and so does an agent: up refuses
// to replace it; once no agent runs, it replaces it.
func testOtherHashWithAgent(t *testing.T, e *e2e) {
	ctx := context.Background()
	e.removeCP(t)
	sleeper := cptest.BuildStatic(t, "sleeper", cptest.SleeperSource)
	image := "clawker-e2e-sleeper:" + e.run
	cptest.BuildScratchImage(t, e.d, image, map[string]string{"sleeper": sleeper}, []string{"/sleeper"}, e.labels)

	startContainer := func(name string, labels map[string]string) string {
		t.Helper()
		all := map[string]string{}
		for k, v := range e.labels {
			all[k] = v
		}
		for k, v := range labels {
			all[k] = v
		}
		c, err := e.d.ContainerCreate(ctx, client.ContainerCreateOptions{Name: name, Config: &container.Config{Image: image, Labels: all}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.d.ContainerStart(ctx, c.ID, client.ContainerStartOptions{}); err != nil {
			t.Fatal(err)
		}
		return c.ID
	}
	oldCP := startContainer(cpboot.ContainerName, map[string]string{
		dockerx.LabelPurpose: dockerx.PurposeControlPlane, dockerx.LabelBinHash: "0000000000000000",
	})
	agentName := "clawker-e2e-agent-" + e.run
	agent := startContainer(agentName, map[string]string{dockerx.LabelPurpose: dockerx.PurposeAgent})

	_, res, took := e.up(t, cmdTimeout)
	if res.Code == 0 {
		t.Fatalf("up replaced a control plane while an agent runs:\n%s", res.Stdout)
	}
	for _, want := range []string{"0000000000000000", e.hash, agentName, "Stop the agents first", "keep using the clawker that started this control plane"} {
		if !strings.Contains(res.Stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, res.Stderr)
		}
	}
	t.Logf("refused after %s:\n%s", took.Round(time.Millisecond), res.Stderr)
	if c := e.inspect(t, cpboot.ContainerName); c.ID != oldCP || !c.State.Running {
		t.Fatalf("the old control plane was touched: %s running %v", c.ID, c.State.Running)
	}

	timeout := 10
	if _, err := e.d.ContainerStop(ctx, agent, client.ContainerStopOptions{Timeout: &timeout}); err != nil {
		t.Fatal(err)
	}
	// Agents of other tests running at the same time (go test runs
	// packages in parallel) would rightly block the replacement too.
	agents := make(client.Filters).Add("label", dockerx.LabelManaged+"=true", dockerx.LabelPurpose+"="+dockerx.PurposeAgent).Add("status", "running")
	cptest.WaitFor(t, 2*time.Minute, "no agent container running on the host", func() (bool, string) {
		list, err := e.d.ContainerList(ctx, client.ContainerListOptions{Filters: agents})
		if err != nil {
			return false, err.Error()
		}
		var names []string
		for _, c := range list.Items {
			names = append(names, strings.Join(c.Names, ","))
		}
		return len(names) == 0, strings.Join(names, " ")
	})
	res2, _ := e.mustUp(t, coldUpTimeout)
	if res2.Outcome != cpboot.OutcomeReplaced || res2.ContainerID == oldCP || res2.BinHash != e.hash {
		t.Errorf("up without agents: %+v; want replaced", res2)
	}
	c := e.inspect(t, cpboot.ContainerName)
	if c.ID != res2.ContainerID || c.Config.Labels[dockerx.LabelBinHash] != e.hash {
		t.Errorf("container %s labels %v", c.ID, c.Config.Labels)
	}
}

// The figures of the report: a green up against docker inspect, and cold
// ups with the image present and missing, split into their steps.
func testMeasure(t *testing.T, e *e2e) {
	if testing.Short() {
		t.Skip("measurements are skipped with -short")
	}
	ctx := context.Background()
	e.mustUp(t, cmdTimeout)
	const n = 20
	var upTimes, inspectTimes []time.Duration
	for range n {
		start := time.Now()
		res := runCmd(cmdTimeout, e.env(), e.bin, "controlplane", "up")
		upTimes = append(upTimes, time.Since(start))
		if res.Code != 0 {
			t.Fatalf("green up: %+v", res)
		}
	}
	dockerCLI, err := exec.LookPath("docker")
	if err == nil {
		for range n {
			start := time.Now()
			res := runCmd(cmdTimeout, e.env(), dockerCLI, "inspect", cpboot.ContainerName)
			inspectTimes = append(inspectTimes, time.Since(start))
			if res.Code != 0 {
				t.Fatalf("docker inspect: %+v", res)
			}
		}
	}
	t.Logf("green `clawker controlplane up`: median %s over %d (min %s, max %s)", median(upTimes), n, slices.Min(upTimes), slices.Max(upTimes))
	if len(inspectTimes) > 0 {
		t.Logf("`docker inspect %s`: median %s over %d (min %s, max %s)", cpboot.ContainerName, median(inspectTimes), n, slices.Min(inspectTimes), slices.Max(inspectTimes))
	}

	cold := func(what string) {
		t.Helper()
		res, took := e.mustUp(t, coldUpTimeout)
		t.Logf("cold up, %s: %s wall; %s; build %s, create+start %s, time to green %s",
			what, took.Round(time.Millisecond), steps(res),
			res.Step(cpboot.StepImage).Round(time.Millisecond),
			(res.Step(cpboot.StepCreate) + res.Step(cpboot.StepStart)).Round(time.Millisecond),
			res.Step(cpboot.StepHealthz).Round(time.Millisecond))
	}
	e.removeCP(t)
	cold("image present")

	e.removeCP(t)
	image := cpboot.ImageRef(e.hash)
	img, err := e.d.ImageInspect(ctx, image)
	if err != nil || img.Config == nil || img.Config.Labels[cptest.LabelTest] != e.run {
		t.Logf("%s is not this run's image: the cold up with the image missing is not measured", image)
		return
	}
	if _, err := e.d.ImageRemove(ctx, image, client.ImageRemoveOptions{PruneChildren: true}); err != nil {
		t.Fatal(err)
	}
	cold("image missing")
}

func steps(r *cpboot.Result) string {
	var parts []string
	for _, s := range r.Steps {
		parts = append(parts, fmt.Sprintf("%s %.1fms", s.Name, s.DurationMS))
	}
	return r.Outcome + ": " + strings.Join(parts, ", ")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// runCmd is cptest.RunCmd for goroutines: it never fails the test itself.
func runCmd(timeout time.Duration, env []string, bin string, args ...string) cptest.Result {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	res := cptest.Result{Stdout: stdout.String(), Stderr: stderr.String(), Code: -1}
	if err == nil {
		res.Code = 0
	} else if ee, ok := err.(*exec.ExitError); ok {
		res.Code = ee.ExitCode()
	} else {
		res.Stderr += "\n(run error: " + err.Error() + ")"
	}
	return res
}
