package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/agentdb"
	"github.com/clawker/clawker-cp/pkg/agentrun"
	"github.com/clawker/clawker-cp/pkg/clawkercli"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/testkit"
)

// Settings of the agent tests. The CP heartbeat is short so broken
// Sessions show quickly (clawker run hands it to clawkerd). Until the drain
// test, drain-to-zero is kept out of the way; from the restart in case 2
// on, it is short, so that removing the agents ends the CP in seconds.
const (
	agSettingsLongGrace = "control_plane: {sessions: {heartbeat: 500ms}, watcher: {grace: 1h}}"
	agSettingsDrain     = "control_plane: {sessions: {heartbeat: 500ms}, watcher: {poll_interval: 1s, grace: 3s, zero_streak: 2}}"
	// agReconnect bounds an agent's reconnection once the CP is green
	// again: clawkerd's backoff is capped at 10s, with full jitter.
	agReconnect = time.Minute
)

// agent is one agent container of the tests.
type agent struct {
	name   string
	image  string
	cmd    []string // given to clawker run after the image
	argv   []string // what its program must receive
	uid    int      // the image's user
	id     string
	marker cptest.MarkerAgent
}

// agentsE2E is the state the agent cases share.
type agentsE2E struct {
	e       *e2e
	project string
	agents  []*agent
	// ory: the clawker under test embeds the Ory servers, so the control
	// plane runs them and clawker run gives each agent a client assertion
	// for its clawker-agent token.
	ory bool
}

// TestAgents drives `clawker run`, `clawker rm` and the CP's supervision of
// real agent containers on the real daemon. Like TestBootstrap it uses the
// fixed names clawker-net and clawker-controlplane, so it runs after it, never
// beside it (no t.Parallel in this package), and its cases run in sequence,
// each from the state the previous one left.
func TestAgents(t *testing.T) {
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
	e.home.WriteSettingsWithPorts(t, agSettingsLongGrace)

	_, ory := bins["ory/hydra"]
	a := &agentsE2E{e: e, project: "e2e-" + run, ory: ory}
	a.buildImages(t)
	// Runs before the removal above (cleanups run last first).
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(e.cpLogs(t, 60))
			for _, ag := range a.agents {
				if ag.id != "" {
					out, _ := e.logs(ag.id, "40")
					t.Logf("docker logs %s (tail):\n%s", agentrun.ContainerName(a.project, ag.name), out)
				}
			}
		}
	})

	for _, c := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"run_two_agents", a.testRun},
		{"down_drains_up_reconnects", a.testDownUp},
		{"sigkill_restarts", a.testSIGKILL},
		{"rm_drains_to_zero", a.testDrainToZero},
	} {
		if !t.Run(c.name, c.f) {
			t.Fatalf("%s failed; the later cases depend on its state", c.name)
		}
	}
}

// buildImages builds the agent image twice: run as root, and as uid 1000
// (so the injected files' owner is checked both ways). Its program stats
// the injected files and reports what it can see of its privileges.
func (a *agentsE2E) buildImages(t *testing.T) {
	e := a.e
	prog := cptest.BuildStatic(t, "agent", cptest.MarkerAgentSource)
	for _, ag := range []*agent{
		{name: "alpha", image: "clawker-e2e-agent:root-" + e.run, argv: []string{"image-cmd"}, uid: 0},
		{name: "beta", image: "clawker-e2e-agent:uid1000-" + e.run, cmd: []string{"given", "cmd"}, argv: []string{"given", "cmd"}, uid: 1000},
	} {
		user := ""
		if ag.uid != 0 {
			user = strconv.Itoa(ag.uid) + ":" + strconv.Itoa(ag.uid)
		}
		cptest.BuildImage(t, e.d, ag.image, cptest.ScratchImage{
			Files: map[string]string{"agent": prog}, Entrypoint: []string{"/agent"}, Cmd: []string{"image-cmd"},
			User: user, Env: []string{"MARKER_STAT=" + strings.Join(a.markerStat(), ":")}, Labels: e.labels,
		})
		a.agents = append(a.agents, ag)
	}
}

// markerStat is what the agent program stats: the injected files (the
// client assertion too when the control plane runs Ory).
func (a *agentsE2E) markerStat() []string {
	files := []string{agentrun.Dir, agentrun.ClawkerdPath, agentrun.CAPath, agentrun.CertPath, agentrun.KeyPath}
	if a.ory {
		files = append(files, agentrun.AssertionPath)
	}
	return files
}

// Case 1: two agents run; both register, hold Sessions, and their programs
// start only after their Sessions are established.
func (a *agentsE2E) testRun(t *testing.T) {
	e := a.e
	for i, ag := range a.agents {
		args := []string{"run", "--no-firewall", "--project", a.project, "--agent", ag.name, "--format", "json", ag.image}
		args = append(args, ag.cmd...)
		start := time.Now()
		res := e.clawker(t, coldUpTimeout, args...)
		took := time.Since(start)
		if res.Code != 0 {
			t.Fatalf("clawker %s: exit %d\n%s\n%s", strings.Join(args, " "), res.Code, res.Stderr, e.cpLogs(t, 20))
		}
		var rep clawkercli.RunReport
		if err := json.Unmarshal([]byte(res.Stdout), &rep); err != nil || rep.Bootstrap == nil {
			t.Fatalf("run --format json: %v\n%s", err, res.Stdout)
		}
		ag.id = rep.Agent.ID
		wantOutcome := cpboot.OutcomeAlreadyRunning
		if i == 0 {
			wantOutcome = cpboot.OutcomeCreated // TestAgents checked no CP exists
		}
		if len(ag.id) != 64 || rep.Agent.Name != agentrun.ContainerName(a.project, ag.name) || rep.Bootstrap.Outcome != wantOutcome ||
			!slices.Equal(rep.Agent.Argv, append([]string{"/agent"}, ag.argv...)) {
			t.Errorf("run %s: %+v (bootstrap %s, want %s)", ag.name, rep.Agent, rep.Bootstrap.Outcome, wantOutcome)
		}
		t.Logf("clawker run %s: %s wall (bootstrap %s in %.0fms; create %.0fms, inject %.0fms, start %.0fms); cert valid until %s",
			ag.name, took.Round(time.Millisecond), rep.Bootstrap.Outcome, rep.Bootstrap.TotalMS,
			rep.Agent.CreateMS, rep.Agent.InjectMS, rep.Agent.StartMS, rep.Agent.CertNotAfter.Format(time.RFC3339))
		if left := time.Until(rep.Agent.CertNotAfter); left < agentrun.CertValidity-5*time.Minute || left > agentrun.CertValidity {
			t.Errorf("certificate valid for %s more", left)
		}
		a.checkContainer(t, ag)
	}

	// Registered and connected, with the right container ids.
	start := time.Now()
	a.waitConnected(t, "both agents registered and connected", nil)
	t.Logf("both agents listed as connected %s after the second run returned", time.Since(start).Round(time.Millisecond))
	// With Ory, each clawkerd got its clawker-agent token from Hydra on
	// clawker-net and made its binding with it.
	for _, ag := range a.agents {
		if !a.ory {
			break
		}
		out, err := e.logs(ag.id, "200")
		if err != nil || !strings.Contains(out, `"event":"agent_token_obtained"`) || !strings.Contains(out, `"with_token":true`) {
			t.Errorf("%s: no agent_token_obtained / registered with_token in its log (%v):\n%s", ag.name, err, out)
		}
	}
	table := e.clawker(t, cmdTimeout, "controlplane", "agents")
	for _, ag := range a.agents {
		if table.Code != 0 || !strings.Contains(table.Stdout, ag.id[:12]) || !strings.Contains(table.Stdout, ag.name) {
			t.Errorf("agents table lacks %s (%s):\n%s%s", ag.name, ag.id[:12], table.Stdout, table.Stderr)
		}
	}

	// Sessions under grpc/sessions in the live tree.
	res := e.clawker(t, cmdTimeout, "controlplane", "tree", "--format", "json")
	var root cpapi.ActorNode
	if res.Code != 0 || json.Unmarshal([]byte(res.Stdout), &root) != nil {
		t.Fatalf("tree --format json: exit %d\n%s%s", res.Code, res.Stdout, res.Stderr)
	}
	sessions, ok := cptest.FindActor(root, "clawker-cp/grpc/sessions")
	if !ok {
		t.Fatalf("no clawker-cp/grpc/sessions in the tree:\n%s", res.Stdout)
	}
	var names []string
	for _, c := range sessions.Children {
		names = append(names, c.Name)
	}
	for _, ag := range a.agents {
		if !slices.Contains(names, a.project+"."+ag.name) {
			t.Errorf("grpc/sessions children %q lack %s.%s", names, a.project, ag.name)
		}
	}

	// The programs: started once, after their Sessions (see
	// checkStartedAfterSession for the method), as the image's user, with
	// no privileges.
	for _, ag := range a.agents {
		ag.marker = a.waitMarker(t, ag)
		a.checkMarker(t, ag)
		a.checkStartedAfterSession(t, ag)
	}

	a.testShortLived(t)
}

// testShortLived runs a third agent whose program exits 7 at once: clawkerd
// exits with the program's code after the Session was established, a
// stopped agent is removed without -f, and its registry row goes. A missing
// image is refused before anything is created.
func (a *agentsE2E) testShortLived(t *testing.T) {
	e := a.e
	ag := &agent{name: "gamma", image: a.agents[0].image, cmd: []string{"exit", "7"}, argv: []string{"exit", "7"}}
	res := e.clawker(t, cmdTimeout, "run", "--no-firewall", "--project", a.project, "--agent", ag.name, ag.image, "exit", "7")
	if res.Code != 0 || len(strings.TrimSpace(res.Stdout)) != 64 {
		t.Fatalf("run %s: exit %d %q %q", ag.name, res.Code, res.Stdout, res.Stderr)
	}
	ag.id = strings.TrimSpace(res.Stdout)
	var c container.InspectResponse
	cptest.WaitFor(t, agReconnect, ag.name+" to exit", func() (bool, string) {
		c = e.inspect(t, ag.id)
		return c.State.Status == "exited", fmt.Sprintf("%+v", c.State)
	})
	if c.State.ExitCode != 7 {
		t.Errorf("%s exited with %d, want its program's 7", ag.name, c.State.ExitCode)
	}
	ag.marker = a.waitMarker(t, ag)
	a.checkMarker(t, ag)
	a.checkStartedAfterSession(t, ag)

	rm := e.clawker(t, cmdTimeout, "rm", "--project", a.project, "--agent", ag.name)
	if rm.Code != 0 || rm.Stdout != agentrun.ContainerName(a.project, ag.name)+"\n" {
		t.Fatalf("rm of the exited %s: exit %d %q %q", ag.name, rm.Code, rm.Stdout, rm.Stderr)
	}
	cptest.WaitFor(t, 30*time.Second, ag.name+"'s registry row to go", func() (bool, string) {
		list, raw := a.agentsJSON(t)
		return list != nil && !slices.ContainsFunc(list, func(r clawkercli.AgentReport) bool { return r.Agent == ag.name }), raw
	})

	missing := e.clawker(t, cmdTimeout, "run", "--no-firewall", "--project", a.project, "--agent", "delta", "clawker-e2e-missing:"+e.run)
	if missing.Code != 1 || !strings.Contains(missing.Stderr, "does not pull") {
		t.Errorf("run of a missing image: exit %d %q", missing.Code, missing.Stderr)
	}
	if _, ok := a.containerExists(t, agentrun.ContainerName(a.project, "delta")); ok {
		t.Errorf("a container was left for the missing image")
	}
}

// checkContainer inspects an agent container: named, labelled, on
// clawker-net, clawkerd as PID 1 with its environment, and unprivileged.
func (a *agentsE2E) checkContainer(t *testing.T, ag *agent) {
	t.Helper()
	e := a.e
	c := e.inspect(t, ag.id)
	name := agentrun.ContainerName(a.project, ag.name)
	if c.Name != "/"+name || !c.State.Running {
		t.Errorf("container %s: name %s, state %+v", ag.id[:12], c.Name, c.State)
	}
	for k, v := range map[string]string{
		"dev.clawker.managed": "true", "dev.clawker.purpose": "agent", "dev.clawker.project": a.project,
		"dev.clawker.agent": ag.name, cptest.LabelTest: e.run,
	} {
		if c.Config.Labels[k] != v {
			t.Errorf("%s: label %s = %q, want %q", name, k, c.Config.Labels[k], v)
		}
	}
	cp := e.inspect(t, cpboot.ContainerName)
	cpIP := cp.NetworkSettings.Networks[cpboot.NetworkName].IPAddress
	for _, want := range []string{
		"CLAWKERD_CP_ADDR=" + cpIP.String() + ":" + strconv.Itoa(e.home.Ports(t).Agent()),
		"CLAWKERD_CA=/clawker/ca.crt", "CLAWKERD_CERT=/clawker/agent.crt", "CLAWKERD_KEY=/clawker/agent.key",
		"CLAWKERD_PROJECT=" + a.project, "CLAWKERD_AGENT=" + ag.name, "CLAWKERD_HEARTBEAT=500ms",
	} {
		if !slices.Contains(c.Config.Env, want) {
			t.Errorf("%s: env %q lacks %q", name, c.Config.Env, want)
		}
	}
	// With Ory: where clawkerd exchanges its client assertion (Hydra's
	// public port at the CP's clawker-net address) and the audience it
	// names (Hydra's own token URL); without, none of it.
	hydra := strconv.Itoa(e.home.Ports(t).HydraPublic())
	token := []string{
		"CLAWKERD_TOKEN_URL=https://" + cpIP.String() + ":" + hydra + "/oauth2/token",
		"CLAWKERD_TOKEN_AUDIENCE=https://127.0.0.1:" + hydra + "/oauth2/token",
		"CLAWKERD_ASSERTION=" + agentrun.AssertionPath,
	}
	for _, want := range token {
		if got := slices.Contains(c.Config.Env, want); got != a.ory {
			t.Errorf("%s: env %q has %q: %v, want %v (Ory embedded: %v)", name, c.Config.Env, want, got, a.ory, a.ory)
		}
	}
	if !slices.Equal(c.Config.Entrypoint, []string{agentrun.ClawkerdPath}) || !slices.Equal(c.Config.Cmd, append([]string{"--", "/agent"}, ag.argv...)) {
		t.Errorf("%s: entrypoint %q cmd %q", name, c.Config.Entrypoint, c.Config.Cmd)
	}
	hc := c.HostConfig
	if ep := c.NetworkSettings.Networks[cpboot.NetworkName]; ep == nil || string(hc.NetworkMode) != cpboot.NetworkName {
		t.Errorf("%s: network mode %s, networks %v", name, hc.NetworkMode, c.NetworkSettings.Networks)
	}
	// The only security options: no-new-privileges and clawker's own
	// seccomp profile (pkg/agentrun), nothing that loosens Docker's.
	wantSecOpt := []string{"no-new-privileges:true", "seccomp=" + agentrun.SeccompProfile()}
	if hc.Privileged || !slices.Equal(hc.CapDrop, []string{"ALL"}) || len(hc.CapAdd) != 0 || !slices.Equal(hc.SecurityOpt, wantSecOpt) ||
		len(hc.Mounts) != 0 || len(hc.Binds) != 0 || len(c.Mounts) != 0 || len(hc.PortBindings) != 0 || hc.RestartPolicy.Name != container.RestartPolicyDisabled {
		t.Errorf("%s: not unprivileged: privileged %v capdrop %v capadd %v secopt %v mounts %v binds %v (%v) ports %v restart %v",
			name, hc.Privileged, hc.CapDrop, hc.CapAdd, hc.SecurityOpt, hc.Mounts, hc.Binds, c.Mounts, hc.PortBindings, hc.RestartPolicy)
	}
	t.Logf("%s: AppArmor profile %q (empty: the host has no AppArmor)", name, c.AppArmorProfile)
}

// waitMarker waits for the program's "started" line in the container's
// stdout.
func (a *agentsE2E) waitMarker(t *testing.T, ag *agent) cptest.MarkerAgent {
	t.Helper()
	var m cptest.MarkerAgent
	cptest.WaitFor(t, agReconnect, ag.name+"'s program to write its marker", func() (bool, string) {
		ms, out := a.markers(t, ag)
		if len(ms) == 0 {
			return false, out
		}
		m = ms[0]
		return true, ""
	})
	return m
}

// markers are the program's "started" lines so far, with the raw stdout.
func (a *agentsE2E) markers(t *testing.T, ag *agent) ([]cptest.MarkerAgent, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rc, err := a.e.d.ContainerLogs(ctx, ag.id, client.ContainerLogsOptions{ShowStdout: true})
	if err != nil {
		return nil, err.Error()
	}
	defer rc.Close()
	var out bytes.Buffer
	_, _ = stdcopy.StdCopy(&out, &bytes.Buffer{}, rc)
	var ms []cptest.MarkerAgent
	for _, l := range strings.Split(out.String(), "\n") {
		var m cptest.MarkerAgent
		if json.Unmarshal([]byte(l), &m) == nil && m.Marker == cptest.MarkerAgentMarker && m.Event == "started" {
			ms = append(ms, m)
		}
	}
	return ms, out.String()
}

// checkMarker checks what the program saw from the inside: its argv and
// user, the injected files' modes and owner, no capabilities, seccomp on,
// no bpffs, no Docker socket.
func (a *agentsE2E) checkMarker(t *testing.T, ag *agent) {
	t.Helper()
	m := ag.marker
	if !slices.Equal(m.Args, ag.argv) || m.UID != ag.uid || m.GID != ag.uid {
		t.Errorf("%s: args %q uid %d gid %d; want %q, %d", ag.name, m.Args, m.UID, m.GID, ag.argv, ag.uid)
	}
	// The injected files, seen from inside: owned by the image's user,
	// 0500 for the directory and clawkerd, 0400 for the rest.
	own := fmt.Sprintf("%d:%d", ag.uid, ag.uid)
	for _, f := range a.markerStat() {
		mode := "0400"
		if f == agentrun.Dir || f == agentrun.ClawkerdPath {
			mode = "0500"
		}
		if want := mode + " " + own; m.Files[f] != want {
			t.Errorf("%s: %s is %q, want %q", ag.name, f, m.Files[f], want)
		}
	}
	if m.Status["CapEff"] != "0000000000000000" || m.Status["CapPrm"] != "0000000000000000" || m.Status["CapBnd"] != "0000000000000000" {
		t.Errorf("%s: capabilities %v; want none", ag.name, m.Status)
	}
	if m.Status["Seccomp"] != "2" {
		t.Errorf("%s: Seccomp %q; want 2 (filter: Docker's default profile)", ag.name, m.Status["Seccomp"])
	}
	if len(m.Mounts["bpf"]) != 0 || m.DockerSock {
		t.Errorf("%s: bpffs mounts %v, docker socket %v", ag.name, m.Mounts["bpf"], m.DockerSock)
	}
}

// checkStartedAfterSession shows that the program started only after the
// agent's Session was established.
//
// Method: every clock involved is the host's CLOCK_REALTIME (containers
// share the kernel; Docker has no time namespace), so times taken in the
// CP, in the agent program and by the daemon compare directly. The CP
// writes its session_connected line (for this container id) before it
// sends the first message of the Session, and clawkerd starts the command
// only on receiving that message; the program reads its clock as the first
// thing in main. So in a correct run
//
//	CP session_connected ts <= program's own start time <= docker's timestamp of the marker line
//
// The CP's ts has millisecond precision and is truncated, so it can only
// err early: no tolerance is needed. A clawkerd that started the command
// at once would break the first inequality by the whole registration (TLS
// handshake, Register, Session open: milliseconds to tens of them). The
// daemon's timestamp is an independent upper bound on the program's clock.
func (a *agentsE2E) checkStartedAfterSession(t *testing.T, ag *agent) {
	t.Helper()
	e := a.e
	var connected time.Time
	cptest.WaitFor(t, 30*time.Second, "the CP log's session_connected for "+ag.name, func() (bool, string) {
		lines, _ := cptest.ReadJSONLines(t, e.home.LogFile(t))
		for _, l := range cptest.FilterEvent(lines, "session_connected") {
			if l["container_id"] != ag.id {
				continue
			}
			ts, err := logTime(l)
			if err != nil {
				return false, err.Error()
			}
			connected = ts
			return true, ""
		}
		return false, "none yet"
	})
	dockerTS := a.markerDockerTime(t, ag)
	if connected.After(ag.marker.Time) {
		t.Errorf("%s: the program started at %s, before the CP logged session_connected at %s",
			ag.name, ag.marker.Time.Format(time.RFC3339Nano), connected.Format(time.RFC3339Nano))
	}
	if !dockerTS.IsZero() && dockerTS.Before(ag.marker.Time) {
		t.Errorf("%s: docker stamped the marker at %s, before the program's own clock said %s", ag.name, dockerTS, ag.marker.Time)
	}
	t.Logf("%s: session_connected %s -> program start +%s -> docker's stamp of the marker +%s",
		ag.name, connected.Format("15:04:05.000"), ag.marker.Time.Sub(connected).Round(10*time.Microsecond),
		dockerTS.Sub(ag.marker.Time).Round(10*time.Microsecond))
}

// logTime reads a CP log line's ts (zap's ISO 8601, milliseconds).
func logTime(l map[string]any) (time.Time, error) {
	s, _ := l["ts"].(string)
	ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", s)
	if err != nil {
		return time.Time{}, fmt.Errorf("log line ts %q: %w", s, err)
	}
	return ts, nil
}

// markerDockerTime is the daemon's timestamp of the program's first
// "started" line (docker logs --timestamps).
func (a *agentsE2E) markerDockerTime(t *testing.T, ag *agent) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rc, err := a.e.d.ContainerLogs(ctx, ag.id, client.ContainerLogsOptions{ShowStdout: true, Timestamps: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var out bytes.Buffer
	_, _ = stdcopy.StdCopy(&out, &bytes.Buffer{}, rc)
	for _, l := range strings.Split(out.String(), "\n") {
		stamp, rest, ok := strings.Cut(l, " ")
		if !ok || !strings.Contains(rest, `"`+cptest.MarkerAgentMarker+`"`) {
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, stamp)
		if err != nil {
			t.Fatalf("docker logs timestamp %q: %v", stamp, err)
		}
		return ts
	}
	t.Fatalf("no marker in docker logs --timestamps:\n%s", out.String())
	return time.Time{}
}

// agentsJSON runs `clawker controlplane agents --format json`.
func (a *agentsE2E) agentsJSON(t *testing.T) ([]clawkercli.AgentReport, string) {
	t.Helper()
	res := a.e.clawker(t, cmdTimeout, "controlplane", "agents", "--format", "json")
	if res.Code != 0 {
		return nil, fmt.Sprintf("exit %d: %s", res.Code, res.Stderr)
	}
	var list []clawkercli.AgentReport
	if err := json.Unmarshal([]byte(res.Stdout), &list); err != nil {
		return nil, err.Error() + ": " + res.Stdout
	}
	return list, res.Stdout
}

// waitConnected waits until `controlplane agents --format json` lists
// exactly the agents, each with its container id, connected=true and, when
// seenAfter is not nil, a last_seen after it (heard from since then).
func (a *agentsE2E) waitConnected(t *testing.T, what string, seenAfter *time.Time) []clawkercli.AgentReport {
	t.Helper()
	var list []clawkercli.AgentReport
	cptest.WaitFor(t, agReconnect, what, func() (bool, string) {
		var raw string
		list, raw = a.agentsJSON(t)
		for _, ag := range a.agents {
			i := slices.IndexFunc(list, func(r clawkercli.AgentReport) bool { return r.Agent == ag.name && r.Project == a.project })
			if i < 0 || list[i].ContainerID != ag.id || !list[i].Connected {
				return false, raw
			}
			if seenAfter != nil && (list[i].LastSeen == nil || list[i].LastSeen.Before(*seenAfter)) {
				return false, raw
			}
		}
		return len(list) == len(a.agents), raw
	})
	return list
}

// logMark is how many lines the CP's log file has: later checks look only
// past it.
func (a *agentsE2E) logMark(t *testing.T) int {
	t.Helper()
	lines, _ := cptest.ReadJSONLines(t, a.e.home.LogFile(t))
	return len(lines)
}

func (a *agentsE2E) linesSince(t *testing.T, mark int, event string) []map[string]any {
	t.Helper()
	lines, _ := cptest.ReadJSONLines(t, a.e.home.LogFile(t))
	if mark > len(lines) {
		mark = len(lines) // rotated: look at everything
	}
	return cptest.FilterEvent(lines[mark:], event)
}

// waitSessionsSince waits for a session_connected line per agent past
// mark.
func (a *agentsE2E) waitSessionsSince(t *testing.T, mark int) {
	t.Helper()
	cptest.WaitFor(t, agReconnect, "session_connected for both agents in the CP log", func() (bool, string) {
		got := map[string]bool{}
		for _, l := range a.linesSince(t, mark, "session_connected") {
			if id, _ := l["container_id"].(string); id != "" {
				got[id] = true
			}
		}
		for _, ag := range a.agents {
			if !got[ag.id] {
				return false, fmt.Sprintf("%v", got)
			}
		}
		return true, ""
	})
}

// checkProgramsUntouched: a CP outage does not restart the agents or their
// programs (one marker each, containers running since the same start).
func (a *agentsE2E) checkProgramsUntouched(t *testing.T) {
	t.Helper()
	for _, ag := range a.agents {
		c := a.e.inspect(t, ag.id)
		ms, out := a.markers(t, ag)
		if !c.State.Running || c.RestartCount != 0 || len(ms) != 1 || ms[0].PID != ag.marker.PID {
			t.Errorf("%s: running %v restarts %d, markers %d:\n%s", ag.name, c.State.Running, c.RestartCount, len(ms), out)
		}
	}
}

// Case 2: down with agents running drains the CP in order to exit 0, and
// it stays down; up again and the agents' clawkerd reconnect by
// themselves.
func (a *agentsE2E) testDownUp(t *testing.T) {
	e := a.e
	before := e.inspect(t, cpboot.ContainerName)
	// Without --force, down refuses: its drain would lift the agents'
	// egress enforcement.
	if res := e.clawker(t, time.Minute, "controlplane", "down"); res.Code == 0 || !strings.Contains(res.Stderr, "--force") {
		t.Fatalf("down with agents running: exit %d, stderr:\n%s", res.Code, res.Stderr)
	}
	if after := e.inspect(t, cpboot.ContainerName); after.ID != before.ID || after.State == nil || !after.State.Running {
		t.Fatal("a refused down stopped the control plane")
	}
	mark := a.logMark(t)
	start := time.Now()
	res := e.clawker(t, 3*time.Minute, "controlplane", "down", "--force")
	took := time.Since(start)
	if res.Code != 0 || !strings.HasPrefix(res.Stdout, "control plane stopped (") || !strings.HasSuffix(res.Stdout, "exit 0)\n") {
		t.Fatalf("down: exit %d\n%s%s\n%s", res.Code, res.Stdout, res.Stderr, e.cpLogs(t, 30))
	}
	t.Logf("down with 2 agents connected: %s (%s)", took.Round(time.Millisecond), strings.TrimSpace(res.Stdout))
	if got := stepNames(a.linesSince(t, mark, "drain_step")); !slices.Equal(got, drainSteps) {
		t.Errorf("drain_step lines: %q, want %q", got, drainSteps)
	}
	after := e.inspect(t, before.ID)
	if after.State.Running || after.State.ExitCode != 0 || after.RestartCount != before.RestartCount {
		t.Fatalf("after down: %+v, restarts %d (before %d)", after.State, after.RestartCount, before.RestartCount)
	}
	time.Sleep(3 * time.Second)
	later := e.inspect(t, before.ID)
	if later.State.Status != "exited" || later.State.ExitCode != 0 || later.RestartCount != before.RestartCount || later.State.StartedAt != after.State.StartedAt {
		t.Errorf("3s after down: %+v, restarts %d", later.State, later.RestartCount)
	}
	a.checkProgramsUntouched(t)

	// From here on drain-to-zero is quick; agents run, so it waits.
	e.home.WriteSettingsWithPorts(t, agSettingsDrain)
	mark = a.logMark(t)
	upAt := time.Now()
	res2, took := e.mustUp(t, cmdTimeout)
	if res2.Outcome != cpboot.OutcomeStarted || res2.ContainerID != before.ID {
		t.Errorf("up after down: %+v; want the same container started", res2)
	}
	t.Logf("up after down: %s (%s)", took.Round(time.Millisecond), steps(res2))
	green := time.Now()
	a.waitSessionsSince(t, mark)
	t.Logf("both agents' Sessions connected again %s after up returned (the CP was down %s)",
		time.Since(green).Round(time.Millisecond), upAt.Sub(start).Round(time.Millisecond))
	a.waitConnected(t, "both agents still listed and connected after up", &upAt)
	a.checkProgramsUntouched(t)
}

// Case 3: the CP's PID 1 dies of SIGKILL (a crash, an OOM kill); Docker's
// on-failure policy restarts it, the registry is intact and the agents
// reconnect.
//
// The process is killed from the host, by its pid. `docker kill --signal
// KILL` would not do: Docker counts a docker kill as a manual stop and
// suspends the restart policy until the next start (checked on Docker
// 20.10: exited 137, RestartCount 0, not restarted).
func (a *agentsE2E) testSIGKILL(t *testing.T) {
	e := a.e
	before := e.inspect(t, cpboot.ContainerName)
	if !before.State.Running || before.State.Pid <= 0 {
		t.Fatalf("CP not running: %+v", before.State)
	}
	mark := a.logMark(t)
	killedAt := time.Now()
	if err := syscall.Kill(before.State.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -KILL %d (the CP's pid on the host): %v", before.State.Pid, err)
	}
	health := "http://127.0.0.1:" + strconv.Itoa(e.home.Ports(t).Health()) + "/healthz"
	var restarted container.InspectResponse
	cptest.WaitFor(t, 2*time.Minute, "the CP restarted by Docker and green", func() (bool, string) {
		restarted = e.inspect(t, before.ID)
		if restarted.RestartCount != before.RestartCount+1 || !restarted.State.Running {
			return false, fmt.Sprintf("%+v restarts %d", restarted.State, restarted.RestartCount)
		}
		code, err := cptest.TryGetJSON(health, nil)
		return code == http.StatusOK, fmt.Sprintf("healthz %d %v", code, err)
	})
	green := time.Since(killedAt)
	t.Logf("SIGKILL -> restarted by Docker and /healthz green: %s (restart count %d -> %d)",
		green.Round(time.Millisecond), before.RestartCount, restarted.RestartCount)
	if restarted.State.StartedAt == before.State.StartedAt || restarted.State.Pid == before.State.Pid {
		t.Errorf("not a new process: %+v", restarted.State)
	}
	// The registry survived (the rows are listed at once, before any
	// reconnect), and the Sessions come back.
	list, raw := a.agentsJSON(t)
	for _, ag := range a.agents {
		if !slices.ContainsFunc(list, func(r clawkercli.AgentReport) bool { return r.Agent == ag.name && r.ContainerID == ag.id }) {
			t.Errorf("right after the restart the registry lacks %s:\n%s", ag.name, raw)
		}
	}
	a.waitSessionsSince(t, mark)
	t.Logf("SIGKILL -> both agents' Sessions connected again (CP log): %s", time.Since(killedAt).Round(time.Millisecond))
	// last_seen moves at the registry's flush (control_plane.sessions.last_seen_flush, 5s).
	a.waitConnected(t, "both agents connected after the SIGKILL restart", &killedAt)
	t.Logf("SIGKILL -> both agents listed connected with a fresh last_seen: %s", time.Since(killedAt).Round(time.Millisecond))
	a.checkProgramsUntouched(t)
}

// Case 4: remove both agents; the registry rows go with the containers, and
// the CP drains to zero and exits 0 by itself, not restarted.
func (a *agentsE2E) testDrainToZero(t *testing.T) {
	e := a.e
	before := e.inspect(t, cpboot.ContainerName)
	mark := a.logMark(t)
	var lastRm time.Time
	for _, ag := range a.agents {
		res := e.clawker(t, cmdTimeout, "rm", "--project", a.project, "--agent", ag.name)
		if res.Code != 1 || !strings.Contains(res.Stderr, "`clawker rm -f --project "+a.project+" --agent "+ag.name+"`") {
			t.Errorf("rm without -f of a running agent: exit %d %q", res.Code, res.Stderr)
		}
		start := time.Now()
		res = e.clawker(t, cmdTimeout, "rm", "-f", "--project", a.project, "--agent", ag.name)
		lastRm = time.Now()
		if res.Code != 0 || res.Stdout != agentrun.ContainerName(a.project, ag.name)+"\n" {
			t.Fatalf("rm -f %s: exit %d %q %q", ag.name, res.Code, res.Stdout, res.Stderr)
		}
		t.Logf("clawker rm -f %s: %s", ag.name, lastRm.Sub(start).Round(time.Millisecond))
		if _, ok := a.containerExists(t, ag.id); ok {
			t.Errorf("%s still exists after rm -f", ag.name)
		}
	}
	// The registry empties. Asked without the bootstrap (in-process, with
	// no Env.Bootstrap), so that the question cannot bring back a CP that
	// is draining; once it is gone, the registry file answers instead.
	emptied := false
	for time.Since(lastRm) < 30*time.Second {
		list, err := a.agentsNoBootstrap()
		if err != nil {
			break // the CP is draining or gone
		}
		if len(list) == 0 {
			emptied = true
			t.Logf("agents list empty %s after the last rm", time.Since(lastRm).Round(time.Millisecond))
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	var exited container.InspectResponse
	cptest.WaitFor(t, time.Minute, "the CP to drain to zero and exit", func() (bool, string) {
		exited = e.inspect(t, before.ID)
		return !exited.State.Running && !exited.State.Restarting, fmt.Sprintf("%+v", exited.State)
	})
	t.Logf("last rm -> CP exited: %s (exit %d)", time.Since(lastRm).Round(time.Millisecond), exited.State.ExitCode)
	if exited.State.ExitCode != 0 || exited.RestartCount != before.RestartCount {
		t.Fatalf("drained CP: exit %d, restarts %d (before %d)", exited.State.ExitCode, exited.RestartCount, before.RestartCount)
	}
	time.Sleep(3 * time.Second)
	later := e.inspect(t, before.ID)
	if later.State.Status != "exited" || later.RestartCount != before.RestartCount || later.State.StartedAt != exited.State.StartedAt {
		t.Errorf("3s later: %+v, restarts %d", later.State, later.RestartCount)
	}

	// The log says why and how: the registry deletes, drain_to_zero, the
	// ordered drain.
	deleted := map[string]bool{}
	for _, l := range a.linesSince(t, mark, "dockerfeed_registry_delete") {
		if id, _ := l["container_id"].(string); id != "" {
			deleted[id] = true
		}
	}
	for _, ag := range a.agents {
		if !deleted[ag.id] {
			t.Errorf("no dockerfeed_registry_delete for %s (%s)", ag.name, ag.id[:12])
		}
	}
	if n := len(a.linesSince(t, mark, "drain_to_zero")); n != 1 {
		t.Errorf("%d drain_to_zero lines", n)
	}
	if got := stepNames(a.linesSince(t, mark, "drain_step")); !slices.Equal(got, drainSteps) {
		t.Errorf("drain_step lines: %q, want %q", got, drainSteps)
	}

	// The registry file on the host, the CP gone: no rows left.
	db, err := agentdb.Open(context.Background(), e.home.Paths(t).RegistryDB)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 0 {
		t.Errorf("registry rows left after drain-to-zero: %+v", rows)
	}
	if !emptied {
		t.Logf("the CP was draining before the agents list could be read empty; the registry file says it is")
	}
}

func (a *agentsE2E) containerExists(t *testing.T, id string) (container.InspectResponse, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := a.e.d.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	return res.Container, err == nil
}

// agentsNoBootstrap lists the agents in-process with no bootstrap.
func (a *agentsE2E) agentsNoBootstrap() ([]clawkercli.AgentReport, error) {
	h := a.e.home
	getenv := func(k string) string {
		switch k {
		case "XDG_CONFIG_HOME":
			return h.ConfigHome
		case "XDG_DATA_HOME":
			return h.DataHome
		case "XDG_STATE_HOME":
			return h.StateHome
		}
		return ""
	}
	var stdout, stderr bytes.Buffer
	env := clawkercli.Env{Stdout: &stdout, Stderr: &stderr, Getenv: getenv}
	if code := clawkercli.Run(env, []string{"clawker", "controlplane", "agents", "--format", "json"}); code != 0 {
		return nil, fmt.Errorf("agents: %s", strings.TrimSpace(stderr.String()))
	}
	var list []clawkercli.AgentReport
	err := json.Unmarshal(stdout.Bytes(), &list)
	return list, err
}
