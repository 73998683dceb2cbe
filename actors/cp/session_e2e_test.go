package cp_test

// In-process end-to-end tests of agent Sessions: the control plane runs in
// the test process (cp.Start, real settings, auth material and sqlite
// registry in a temporary home), and real clawkerd processes, each with a
// certificate minted for its own random container id, connect to it over
// mTLS.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/clawker/clawker-cp/actors/cp"
	"github.com/clawker/clawker-cp/actors/grpc/sessions"
	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/clawkercli"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/settings"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

// TestMain removes the binaries BuildBinaries built once the tests ran.
func TestMain(m *testing.M) { cptest.Main(m) }

const (
	// heartbeat is both sides' heartbeat interval: three silent intervals
	// break a Session.
	heartbeat = 200 * time.Millisecond
	// maxBackoff caps clawkerd's reconnect delay.
	maxBackoff = 500 * time.Millisecond

	// waitLong bounds what involves starting or stopping a control plane
	// or a process; waitShort bounds a transition of a running system.
	// Both are far above the expected time: they only stop a hung test.
	waitLong  = time.Minute
	waitShort = 30 * time.Second

	// sessionsID is the PID id of the parent of every Session actor.
	sessionsID = "clawker-cp/grpc/sessions"
)

// fastSessions are the settings every test here runs with: fast heartbeats
// and last_seen flushes, and no drain-to-zero (no agent container exists,
// so the watcher would otherwise drain the CP after its grace).
func fastSessions(lastSeenFlush time.Duration) string {
	return fmt.Sprintf("control_plane:\n  sessions:\n    heartbeat: %s\n    last_seen_flush: %s\n  watcher:\n    enable: false\n",
		heartbeat, lastSeenFlush)
}

// lockedBuffer collects the control plane's JSON log lines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Sync() error { return nil }

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// world is one test's home: settings, paths and auth material, shared by
// every control plane the test starts on it.
type world struct {
	home  *cptest.Home
	m     *certs.Material
	s     settings.Settings
	paths settings.Paths
	bin   string // clawkerd
}

func newWorld(t *testing.T, extraSettings string) *world {
	t.Helper()
	home := cptest.NewCPHome(t, extraSettings)
	w := &world{home: home, m: home.EnsureAuth(t), paths: home.Paths(t)}
	var err error
	if w.s, err = settings.Load(w.paths.SettingsFile); err != nil {
		t.Fatal(err)
	}
	if w.s.ControlPlane.Sessions.Heartbeat != heartbeat {
		t.Fatalf("settings heartbeat %s, want %s", w.s.ControlPlane.Sessions.Heartbeat, heartbeat)
	}
	w.bin = cptest.BuildBinaries(t, cptest.ClawkerdPkg)["clawkerd"]
	return w
}

func (w *world) agentAddr() string { return cptest.Loopback(w.s.ControlPlane.AgentPort) }

// agent mints a certificate for project.name in a new container.
func (w *world) agent(t *testing.T, project, name string) cptest.AgentFiles {
	t.Helper()
	return cptest.WriteAgentFiles(t, w.m, certs.AgentIdentity{Project: project, Agent: name, ContainerID: cptest.RandomContainerID(t)})
}

// clawkerd starts clawkerd for files against this world's agent port,
// with the client assertion `clawker run` would copy in beside them: the
// control plane runs Ory, so a new binding needs a clawker-agent token.
func (w *world) clawkerd(t *testing.T, files cptest.AgentFiles, command ...string) *cptest.Clawkerd {
	t.Helper()
	tok := cptest.WriteAgentToken(t, w.home, w.m, files.Dir)
	return cptest.StartClawkerd(t, w.home, w.bin, cptest.ClawkerdConfig{
		CPAddr: w.agentAddr(), Files: files, Heartbeat: heartbeat, MaxBackoff: maxBackoff, Command: command, Token: &tok,
	})
}

// running is one in-process control plane.
type running struct {
	inst      *cp.Instance
	logs      *lockedBuffer
	healthURL string
	admin     *adminclient.Client

	done     chan struct{} // closed once inst.Exit delivered
	code     int           // valid after done
	shutdown sync.Once
}

// start runs a control plane on w's home and waits until it is healthy.
// The test's end drains it if it still runs.
func (w *world) start(t *testing.T) *running {
	t.Helper()
	logs := &lockedBuffer{}
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	log := zap.New(zapcore.NewCore(enc, logs, zapcore.DebugLevel))
	inst, err := cp.Start(cp.Options{Settings: w.s, Paths: w.paths, Log: log, BindHost: "127.0.0.1", OryDir: cptest.OryDir(t)})
	if err != nil {
		t.Fatalf("cp.Start: %v", err)
	}
	r := &running{inst: inst, logs: logs, done: make(chan struct{}),
		healthURL: "http://" + cptest.Loopback(w.s.ControlPlane.HealthPort)}
	go func() {
		r.code = <-inst.Exit
		close(r.done)
	}()
	t.Cleanup(func() {
		if r.admin != nil {
			r.admin.Close()
		}
		if !r.exited() {
			inst.Drain("test cleanup")
			select {
			case <-r.done:
			case <-time.After(waitLong):
				t.Errorf("the control plane did not exit within %s of the cleanup's drain", waitLong)
			}
		}
		r.shutdown.Do(inst.System.Shutdown)
		if t.Failed() {
			t.Logf("control plane log:\n%s", tailText(logs.String(), 80))
		}
	})
	cptest.WaitFor(t, waitLong, "GET /healthz to answer 200", func() (bool, string) {
		if r.exited() {
			t.Fatalf("the control plane exited with %d before it was healthy\nlog:\n%s", r.code, tailText(logs.String(), 80))
		}
		var h cpapi.Health
		code, err := cptest.TryGetJSON(r.healthURL+"/healthz", &h)
		if err != nil {
			return false, err.Error()
		}
		return code == http.StatusOK, fmt.Sprintf("%d %+v", code, h)
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitShort)
	defer cancel()
	if r.admin, err = adminclient.Dial(ctx, w.paths, w.s, adminclient.WithOAuth()); err != nil {
		t.Fatalf("adminclient.Dial: %v", err)
	}
	return r
}

func (r *running) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// drain runs the ordered drain, waits for the exit (code 0) and shuts the
// actor system down.
func (r *running) drain(t *testing.T) {
	t.Helper()
	r.admin.Close()
	r.admin = nil
	r.inst.Drain("test")
	select {
	case <-r.done:
	case <-time.After(waitLong):
		t.Fatalf("the control plane did not exit within %s of Drain", waitLong)
	}
	r.shutdown.Do(r.inst.System.Shutdown)
	if r.code != 0 {
		t.Fatalf("the control plane exited with %d after Drain, want 0", r.code)
	}
}

// events are the control plane's log lines with "event": event.
func (r *running) events(event string) []map[string]any {
	objs, _ := cptest.ParseJSONLines(r.logs.String())
	return cptest.FilterEvent(objs, event)
}

// session is the overseer's view of agent's Session.
func (r *running) session(t *testing.T, agent string) (overseer.SessionView, bool) {
	t.Helper()
	res, err := r.inst.System.Root.RequestFuture(r.inst.PID("overseer"), &overseer.GetState{}, 5*time.Second).Result()
	if err != nil {
		t.Fatalf("overseer GetState: %v", err)
	}
	for _, s := range res.(*overseer.State).Sessions {
		if s.Agent == agent {
			return s, true
		}
	}
	return overseer.SessionView{}, false
}

// sessionActor reports whether /debug/actors lists agent's Session actor
// under grpc/sessions; err is set when the tree could not be read.
func (r *running) sessionActor(agent string) (present bool, children []string, err error) {
	var root cpapi.ActorNode
	code, err := cptest.TryGetJSON(r.healthURL+"/debug/actors", &root)
	if err != nil || code != http.StatusOK {
		return false, nil, fmt.Errorf("GET /debug/actors: %d %v", code, err)
	}
	parent, ok := cptest.FindActor(root, sessionsID)
	if !ok {
		return false, nil, fmt.Errorf("no %s in /debug/actors", sessionsID)
	}
	for _, c := range parent.Children {
		if c.Path == sessionsID+"/"+agent {
			present = true
		}
		children = append(children, c.Name)
	}
	return present, children, nil
}

// waitState waits until the overseer shows agent's Session in state.
func (r *running) waitState(t *testing.T, agent string, state cpapi.SessionState) overseer.SessionView {
	t.Helper()
	var v overseer.SessionView
	cptest.WaitFor(t, waitShort, fmt.Sprintf("the overseer to show %s %s", agent, state), func() (bool, string) {
		var ok bool
		v, ok = r.session(t, agent)
		return ok && v.State == state, fmt.Sprintf("%+v (known %v)", v, ok)
	})
	return v
}

// waitConnected waits until the overseer shows agent connected and its
// Session actor is in /debug/actors.
func (r *running) waitConnected(t *testing.T, agent string) {
	t.Helper()
	cptest.WaitFor(t, waitLong, agent+" connected, with its actor under "+sessionsID, func() (bool, string) {
		v, ok := r.session(t, agent)
		if !ok || v.State != cpapi.SessionConnected {
			return false, fmt.Sprintf("overseer: %+v (known %v)", v, ok)
		}
		present, children, err := r.sessionActor(agent)
		return present, fmt.Sprintf("children of %s: %v (%v)", sessionsID, children, err)
	})
}

// listAgents calls ListAgents through the AdminService with the CLI cert.
func (r *running) listAgents(t *testing.T) []*adminv1.Agent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), adminclient.CallTimeout)
	defer cancel()
	resp, err := r.admin.ListAgents(ctx, &adminv1.ListAgentsRequest{})
	if err != nil {
		t.Fatalf("ListAgents: %v", err)
	}
	return resp.GetAgents()
}

// listed is the one ListAgents row of files' binding; it fails the test
// unless the registry holds exactly that row.
func (r *running) listed(t *testing.T, files cptest.AgentFiles) *adminv1.Agent {
	t.Helper()
	agents := r.listAgents(t)
	if len(agents) != 1 {
		t.Fatalf("ListAgents returned %d agents, want 1: %v", len(agents), agents)
	}
	a := agents[0]
	if a.GetKey() != files.AgentKey() || a.GetProject() != files.ID.Project || a.GetAgentName() != files.ID.Agent ||
		a.GetContainerId() != files.ID.ContainerID || a.GetThumbprint() != files.Thumbprint() {
		t.Fatalf("ListAgents row %v, want key %s project %s agent %s container %s thumbprint %s",
			a, files.AgentKey(), files.ID.Project, files.ID.Agent, files.ID.ContainerID, files.Thumbprint())
	}
	return a
}

// waitListedConnected waits until ListAgents reports the binding's
// connected flag as want.
func (r *running) waitListedConnected(t *testing.T, files cptest.AgentFiles, want bool) *adminv1.Agent {
	t.Helper()
	var a *adminv1.Agent
	cptest.WaitFor(t, waitShort, fmt.Sprintf("ListAgents to show %s connected=%v", files.Name(), want), func() (bool, string) {
		a = r.listed(t, files)
		return a.GetConnected() == want, fmt.Sprintf("%v", a)
	})
	return a
}

// dispatch sends cmd to agent's clawkerd through grpc/sessions and returns
// the result.
func (r *running) dispatch(t *testing.T, agent string, cmd *agentv1.Command) *sessions.DispatchResult {
	t.Helper()
	res, err := r.inst.System.Root.RequestFuture(r.inst.PID("grpc/sessions"),
		&sessions.Dispatch{Agent: agent, Command: cmd, Timeout: waitShort}, waitShort+10*time.Second).Result()
	if err != nil {
		t.Fatalf("dispatching %v to %s: %v", cmd, agent, err)
	}
	dr, ok := res.(*sessions.DispatchResult)
	if !ok {
		t.Fatalf("Dispatch answered %T, want *sessions.DispatchResult", res)
	}
	if dr.Err != nil {
		t.Fatalf("dispatching %v to %s: %v (stdout %q, stderr %q)", cmd, agent, dr.Err, dr.Stdout, dr.Stderr)
	}
	if dr.Result == nil {
		t.Fatalf("dispatching %v to %s: no result", cmd, agent)
	}
	return dr
}

// eventIndex is the position of the first line with "event": event in
// lines, or -1.
func eventIndex(lines []map[string]any, event string) int {
	for i, l := range lines {
		if l["event"] == event {
			return i
		}
	}
	return -1
}

func tailText(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// TestSessionDispatch: clawkerd started before the control plane keeps
// retrying, and its user command does not start; once the CP is up the
// Session is established (overseer connected, actor under grpc/sessions)
// and only then the command starts. RunInitStep, SetupMCP and Shutdown
// dispatched through grpc/sessions do what they say; Shutdown makes
// clawkerd exit 0 and the Session end closed, not broken.
func TestSessionDispatch(t *testing.T) {
	t.Parallel()
	w := newWorld(t, fastSessions(heartbeat))
	files := w.agent(t, "proj", "dev")
	name := files.Name()
	marker := filepath.Join(t.TempDir(), "marker")
	d := w.clawkerd(t, files, "sh", "-c", `touch "$1"; sleep 600`, "sh", marker)

	// No CP yet: clawkerd retries (connection refused: its token exchange
	// first, as no Hydra answers either) and holds the command back.
	d.WaitFor(t, waitShort, "clawkerd to retry twice against the stopped CP", func() (bool, string) {
		n := d.EventCount("reconnecting")
		return n >= 2 && d.EventCount("agent_token_failed") >= 2, fmt.Sprintf("%d reconnects", n)
	})
	if fileExists(marker) {
		t.Fatal("the user command ran before any Session was established")
	}
	for _, ev := range []string{"session_established", "agent_command_started", "registered"} {
		if n := d.EventCount(ev); n != 0 {
			t.Fatalf("clawkerd logged %s %d times with no control plane running", ev, n)
		}
	}

	r := w.start(t)
	r.waitConnected(t, name)
	d.WaitFor(t, waitShort, "the user command to create the marker", func() (bool, string) {
		return fileExists(marker), ""
	})
	// clawkerd's log reaches us through a pipe, and it logs the start after
	// the exec: the marker can be there before the line is.
	d.WaitFor(t, waitShort, "clawkerd to log agent_command_started", func() (bool, string) {
		return eventIndex(d.Lines(), "agent_command_started") >= 0, ""
	})
	lines := d.Lines()
	est, started := eventIndex(lines, "session_established"), eventIndex(lines, "agent_command_started")
	if est < 0 || started < 0 || started < est {
		t.Fatalf("clawkerd logged session_established at line %d and agent_command_started at %d; the command must start after the Session", est, started)
	}
	if reg := r.events("agent_registered"); len(reg) == 0 || reg[0]["agent"] != name || reg[0]["created"] != true {
		t.Errorf("agent_registered events %v, want the first to create the binding", reg)
	}
	// The binding was made with the token clawkerd got once Hydra was up.
	if n := d.EventCount("agent_token_obtained"); n != 1 {
		t.Errorf("clawkerd logged agent_token_obtained %d times, want once", n)
	}
	if a := r.waitListedConnected(t, files, true); !a.GetLastSeen().AsTime().Before(time.Now().Add(time.Second)) {
		t.Errorf("last_seen %v is in the future", a.GetLastSeen().AsTime())
	}

	// RunInitStep: exit code and both streams come back.
	res := r.dispatch(t, name, &agentv1.Command{Kind: &agentv1.Command_RunInitStep{RunInitStep: &agentv1.RunInitStep{
		Argv: []string{"sh", "-c", "echo hello; echo oops >&2; exit 3"}}}})
	if res.Result.GetExitCode() != 3 || res.Result.GetOk() || res.Result.GetId() == "" {
		t.Errorf("RunInitStep result %v, want exit_code 3, not ok, an id", res.Result)
	}
	if string(res.Stdout) != "hello\n" || string(res.Stderr) != "oops\n" {
		t.Errorf("RunInitStep stdout %q stderr %q, want \"hello\\n\" and \"oops\\n\"", res.Stdout, res.Stderr)
	}

	// SetupMCP writes <home>/.clawker/mcp/files.json, 0600.
	config := []byte(`{"command":"x"}`)
	res = r.dispatch(t, name, &agentv1.Command{Kind: &agentv1.Command_SetupMcp{SetupMcp: &agentv1.SetupMCP{Name: "files", ConfigJson: config}}})
	if !res.Result.GetOk() || res.Result.GetError() != "" {
		t.Errorf("SetupMCP result %v, want ok", res.Result)
	}
	mcp := filepath.Join(d.Config.Home, ".clawker", "mcp", "files.json")
	got, err := os.ReadFile(mcp)
	if err != nil {
		t.Fatalf("SetupMCP: %v", err)
	}
	if !bytes.Equal(got, config) {
		t.Errorf("%s holds %q, want %q", mcp, got, config)
	}
	if fi, err := os.Stat(mcp); err != nil {
		t.Error(err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v, want 0600", mcp, fi.Mode().Perm())
	}

	// Shutdown: the command is stopped, clawkerd answers, closes its side
	// of the stream and exits 0; the Session ends closed.
	cmdPIDs := d.CommandPIDs()
	if len(cmdPIDs) != 1 {
		t.Fatalf("clawkerd started the user command %d times, want once", len(cmdPIDs))
	}
	res = r.dispatch(t, name, &agentv1.Command{Kind: &agentv1.Command_Shutdown{Shutdown: &agentv1.Shutdown{Grace: durationpb.New(2 * time.Second)}}})
	if !res.Result.GetOk() {
		t.Errorf("Shutdown result %v, want ok", res.Result)
	}
	if code := d.MustExit(t, waitShort); code != 0 {
		t.Fatalf("clawkerd exited %d after Shutdown, want 0", code)
	}
	// Its processes get SIGTERM; the orphaned sleep is reaped by whoever
	// adopts it, so wait for the group to be empty of living processes.
	cptest.WaitFor(t, waitShort, "the user command's process group to be gone", func() (bool, string) {
		left := cptest.GroupMembers(cmdPIDs[0])
		return len(left) == 0, fmt.Sprintf("group %d: %v", cmdPIDs[0], left)
	})
	var v overseer.SessionView
	cptest.WaitFor(t, waitShort, name+"'s Session to end", func() (bool, string) {
		var ok bool
		v, ok = r.session(t, name)
		return ok && (v.State == cpapi.SessionClosed || v.State == cpapi.SessionBroken), fmt.Sprintf("%+v", v)
	})
	if v.State != cpapi.SessionClosed {
		t.Errorf("after a clean Shutdown the overseer shows %+v, want closed", v)
	}
	cptest.WaitFor(t, waitShort, name+"'s Session actor to go", func() (bool, string) {
		present, children, err := r.sessionActor(name)
		return err == nil && !present, fmt.Sprintf("children of %s: %v (%v)", sessionsID, children, err)
	})
	if ended := r.events("session_ended"); len(ended) == 0 || ended[len(ended)-1]["broken"] != false {
		t.Errorf("session_ended events %v, want the last with broken=false", ended)
	}
	if n := d.EventCount("session_closed"); n != 1 {
		t.Errorf("clawkerd logged session_closed %d times, want once", n)
	}
	r.waitListedConnected(t, files, false)
}

// TestSessionSurvivesCPRestart: a drained control plane ends the Session;
// clawkerd keeps running and retrying, the registry file stays, and a new
// control plane on the same home gets the agent back: connected in the
// overseer and in ListAgents, with the same key and registration.
func TestSessionSurvivesCPRestart(t *testing.T) {
	t.Parallel()
	w := newWorld(t, fastSessions(heartbeat))
	files := w.agent(t, "proj", "dev")
	name := files.Name()
	r1 := w.start(t)
	d := w.clawkerd(t, files)
	r1.waitConnected(t, name)
	before := r1.waitListedConnected(t, files, true)

	reconnects := d.EventCount("reconnecting")
	r1.drain(t)
	d.WaitFor(t, waitShort, "clawkerd to retry against the drained CP", func() (bool, string) {
		return d.EventCount("reconnecting") >= reconnects+2 && d.EventCount("register_retry") >= 1,
			fmt.Sprintf("%d reconnects, %d register retries", d.EventCount("reconnecting")-reconnects, d.EventCount("register_retry"))
	})
	if d.Exited() {
		code, err := d.Wait(0)
		t.Fatalf("clawkerd exited (%d, %v) when the control plane drained", code, err)
	}
	if broken := d.EventCount("session_broken"); broken < 1 {
		t.Errorf("clawkerd did not log the Session's end (session_broken)")
	}
	if ended := r1.events("session_ended"); len(ended) == 0 || ended[len(ended)-1]["broken"] != false {
		t.Errorf("first CP: session_ended events %v, want the last (the drain's) not broken", ended)
	}
	if fi, err := os.Stat(w.paths.RegistryDB); err != nil {
		t.Fatalf("the registry file after the drain: %v", err)
	} else if fi.Size() == 0 {
		t.Fatalf("the registry file %s is empty after the drain", w.paths.RegistryDB)
	}

	r2 := w.start(t)
	r2.waitConnected(t, name)
	after := r2.waitListedConnected(t, files, true)
	if after.GetKey() != before.GetKey() || !after.GetRegisteredAt().AsTime().Equal(before.GetRegisteredAt().AsTime()) {
		t.Errorf("after the restart ListAgents shows key %s registered %v; before: key %s registered %v",
			after.GetKey(), after.GetRegisteredAt().AsTime(), before.GetKey(), before.GetRegisteredAt().AsTime())
	}
	if reg := r2.events("agent_registered"); len(reg) == 0 || reg[0]["created"] != false {
		t.Errorf("second CP: agent_registered events %v, want created=false (the binding persisted)", reg)
	}
	if d.Exited() {
		t.Fatal("clawkerd exited")
	}
}

// TestSilentAgentBreaksAndReconnects: a stopped clawkerd (SIGSTOP) is silent
// for more than three heartbeats: the overseer shows its Session broken and
// ListAgents disconnected. Resumed (SIGCONT), it reconnects and is
// connected again.
func TestSilentAgentBreaksAndReconnects(t *testing.T) {
	t.Parallel()
	w := newWorld(t, fastSessions(heartbeat))
	files := w.agent(t, "proj", "quiet")
	name := files.Name()
	r := w.start(t)
	d := w.clawkerd(t, files)
	r.waitConnected(t, name)
	r.waitListedConnected(t, files, true)
	established := d.EventCount("session_established")

	if err := d.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = d.Signal(syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	cptest.WaitFor(t, waitShort, "clawkerd to be stopped", func() (bool, string) {
		st := cptest.ProcState(d.Pid())
		return st == "T", "state " + st
	})
	v := r.waitState(t, name, cpapi.SessionBroken)
	// "no message from the agent for 612ms": more than three heartbeats
	// (the CP rounds to the millisecond, so 600ms may show).
	const silence = "no message from the agent for "
	if !strings.HasPrefix(v.Reason, silence) {
		t.Errorf("broken Session's reason %q, want %q...", v.Reason, silence)
	} else if silent, err := time.ParseDuration(strings.TrimPrefix(v.Reason, silence)); err != nil || silent < 3*heartbeat {
		t.Errorf("broken after %v of silence (%v), want at least three heartbeats (%s)", silent, err, 3*heartbeat)
	}
	r.waitListedConnected(t, files, false)
	cptest.WaitFor(t, waitShort, "the broken Session's actor to go", func() (bool, string) {
		present, children, err := r.sessionActor(name)
		return err == nil && !present, fmt.Sprintf("children of %s: %v (%v)", sessionsID, children, err)
	})
	if st := cptest.ProcState(d.Pid()); st != "T" {
		t.Fatalf("clawkerd resumed on its own (state %q) before the test sent SIGCONT", st)
	}

	resume()
	r.waitConnected(t, name)
	r.waitListedConnected(t, files, true)
	if n := d.EventCount("session_established"); n <= established {
		t.Errorf("clawkerd logged no new session_established after SIGCONT")
	}
	if d.Exited() {
		t.Fatal("clawkerd exited")
	}
}

// runCLI runs the clawker CLI with args and the home's environment, in
// this process, through clawkercli.Run with no Bootstrap: the built binary
// (DefaultEnv) first brings the control plane up as the Docker container
// clawker-controlplane (cpboot.EnsureRunning), which must not happen here:
// the control plane under test runs in this process, and the daemon's
// clawker-controlplane container is not the test's to replace.
func runCLI(t *testing.T, home *cptest.Home, args ...string) cptest.Result {
	t.Helper()
	vars := map[string]string{}
	for _, kv := range home.Env() {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	var stdout, stderr lockedBuffer
	code := clawkercli.Run(clawkercli.Env{Stdout: &stdout, Stderr: &stderr, Getenv: func(k string) string { return vars[k] }},
		append([]string{"clawker"}, args...))
	return cptest.Result{Stdout: stdout.String(), Stderr: stderr.String(), Code: code}
}

// TestControlplaneAgentsCLI: `clawker controlplane agents`, run with the
// home's environment against the in-process CP (its admin port read from
// the home's settings), lists the connected agent in its table (short
// container id and thumbprint) and, with --format json, with full values.
func TestControlplaneAgentsCLI(t *testing.T) {
	t.Parallel()
	w := newWorld(t, fastSessions(heartbeat))
	files := w.agent(t, "proj", "dev")
	r := w.start(t)
	w.clawkerd(t, files)
	r.waitConnected(t, files.Name())
	a := r.waitListedConnected(t, files, true)
	registered := a.GetRegisteredAt().AsTime().UTC()

	res := runCLI(t, w.home, "controlplane", "agents")
	if res.Code != 0 {
		t.Fatalf("clawker controlplane agents: exit %d\nstdout:\n%s\nstderr:\n%s", res.Code, res.Stdout, res.Stderr)
	}
	rows := strings.Split(strings.TrimRight(res.Stdout, "\n"), "\n")
	if len(rows) != 2 {
		t.Fatalf("table has %d lines, want a header and one row:\n%s", len(rows), res.Stdout)
	}
	if got := strings.Join(strings.Fields(rows[0]), " "); got != "AGENT PROJECT CONTAINER THUMBPRINT REGISTERED LAST SEEN" {
		t.Errorf("header %q", rows[0])
	}
	f := strings.Fields(rows[1])
	if len(f) != 6 {
		t.Fatalf("row %q has %d columns, want 6", rows[1], len(f))
	}
	want := []string{"dev", "proj", files.ID.ContainerID[:12], files.Thumbprint()[:12], registered.Format(time.RFC3339)}
	if got := f[:5]; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("row %q, want it to start with %q", f, want)
	}
	if seen, err := time.Parse(time.RFC3339, f[5]); err != nil || seen.Before(registered.Truncate(time.Second)) {
		t.Errorf("LAST SEEN %q (%v), want a time not before registration %v", f[5], err, registered)
	}

	res = runCLI(t, w.home, "controlplane", "agents", "--format", "json")
	if res.Code != 0 {
		t.Fatalf("clawker controlplane agents --format json: exit %d\nstderr:\n%s", res.Code, res.Stderr)
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(res.Stdout), &list); err != nil {
		t.Fatalf("--format json output is not a JSON array: %v\n%s", err, res.Stdout)
	}
	if len(list) != 1 {
		t.Fatalf("--format json lists %d agents, want 1:\n%s", len(list), res.Stdout)
	}
	got := list[0]
	for k, v := range map[string]any{
		"agent": "dev", "project": "proj", "container_id": files.ID.ContainerID, "thumbprint": files.Thumbprint(),
		"key": files.AgentKey(), "connected": true,
	} {
		if got[k] != v {
			t.Errorf("json %s = %v, want %v", k, got[k], v)
		}
	}
	if s, _ := got["registered_at"].(string); s != registered.Format(time.RFC3339Nano) {
		t.Errorf("json registered_at %q, want %q (full precision)", s, registered.Format(time.RFC3339Nano))
	}
	if s, _ := got["last_seen"].(string); s == "" {
		t.Errorf("json last_seen %v, want a time", got["last_seen"])
	} else if seen, err := time.Parse(time.RFC3339Nano, s); err != nil || seen.Before(registered) {
		t.Errorf("json last_seen %q (%v), want a time not before registration", s, err)
	}
}

// TestLastSeenAdvancesBatched: heartbeats move last_seen past
// registered_at, and the registry writes it in batches: with a flush every
// second and heartbeats every 200ms, ListAgents sees last_seen change at
// most once per flush, not once per heartbeat.
func TestLastSeenAdvancesBatched(t *testing.T) {
	t.Parallel()
	const flush = time.Second
	w := newWorld(t, fastSessions(flush))
	files := w.agent(t, "proj", "dev")
	r := w.start(t)
	d := w.clawkerd(t, files)
	r.waitConnected(t, files.Name())
	a := r.waitListedConnected(t, files, true)
	registered := a.GetRegisteredAt().AsTime()

	// Sample for three flush intervals: last_seen never goes back and
	// takes few distinct values.
	distinct := map[time.Time]bool{}
	var last time.Time
	start := time.Now()
	for time.Since(start) < 3*flush {
		a := r.listed(t, files)
		seen, now := a.GetLastSeen().AsTime(), time.Now()
		if seen.Before(last) {
			t.Fatalf("last_seen went back from %v to %v", last, seen)
		}
		if seen.Before(registered) || seen.After(now.Add(time.Second)) {
			t.Fatalf("last_seen %v outside [registered_at %v, now %v]", seen, registered, now)
		}
		last = seen
		distinct[seen] = true
		time.Sleep(cptest.PollInterval)
	}
	t.Logf("last_seen took %d distinct values in %s", len(distinct), time.Since(start).Round(time.Millisecond))
	// At most one write per flush tick in the window, plus the value
	// before it and one flush in flight when it began.
	if max := int(time.Since(start)/flush) + 3; len(distinct) > max {
		t.Errorf("last_seen took %d distinct values in %s, more than %d: not batched per flush (%s)",
			len(distinct), time.Since(start).Round(time.Millisecond), max, flush)
	}

	// Heartbeats keep it moving: after a second of Session it is past
	// registered_at by at least that.
	cptest.WaitFor(t, waitShort, "last_seen to be a second past registered_at", func() (bool, string) {
		a := r.listed(t, files)
		gap := a.GetLastSeen().AsTime().Sub(a.GetRegisteredAt().AsTime())
		return gap >= time.Second, "gap " + gap.String()
	})
	if hb := d.EventCount("session_broken"); hb != 0 {
		t.Errorf("the Session broke %d times while sampling", hb)
	}
}
