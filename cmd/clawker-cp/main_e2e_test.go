package main_test

// These tests exec the real clawker-cp (and clawker) binaries: each test has
// its own XDG home and free ports, so they all run in parallel.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/dockerx"
)

const (
	cpPkg  = "github.com/clawker/clawker-cp/cmd/clawker-cp"
	cliPkg = "github.com/clawker/clawker-cp/cmd/clawker"

	faultsEnv    = "CLAWKER_CP_DEBUG_FAULTS=1"
	holdReadyEnv = "CLAWKER_CP_DEBUG_HOLD_READY"

	// Generous bounds for a loaded 2-core machine; a healthy run takes
	// milliseconds for each.
	healthyTimeout = 60 * time.Second
	exitTimeout    = 30 * time.Second
	changeTimeout  = 20 * time.Second
)

func TestMain(m *testing.M) { cptest.Main(m) }

// subsystems are the root's children, in start order.
var subsystems = []string{"health", "overseer", "registry", "ebpf", "firewall", "netlogger", "dockerfeed", "watcher", "auth", "grpc"}

// grandchildren are the children of subsystems that have any.
var grandchildren = map[string][]string{"firewall": {"dns", "proxy"}, "grpc": {"sessions"}}

// drainSteps is the ordered drain (cpapi.DrainSteps), as its drain_step
// lines name the steps.
var drainSteps = cpapi.DrainStepNames()

func cpBinary(t testing.TB) string {
	t.Helper()
	return cptest.BuildBinaries(t, cpPkg)["clawker-cp"]
}

// startHealthy starts a CP in a fresh home whose settings are the free ports
// merged with extraSettings, and waits for /healthz to answer 200.
func startHealthy(t *testing.T, extraSettings string, env ...string) (*cptest.Home, *cptest.Process) {
	t.Helper()
	home := cptest.NewCPHome(t, extraSettings)
	p := cptest.StartCP(t, home, cpBinary(t), env...)
	p.WaitHealthy(t, healthyTimeout)
	return home, p
}

// stepNames lists the "step" field of drain_step lines.
func stepNames(lines []map[string]any) []string {
	var out []string
	for _, l := range lines {
		s, _ := l["step"].(string)
		out = append(out, s)
	}
	return out
}

// checkDrain asserts the ordered drain ran completely, once, in order, and
// returns its lines.
func checkDrain(t *testing.T, p *cptest.Process) []map[string]any {
	t.Helper()
	steps := p.Events("drain_step")
	if got := stepNames(steps); !slices.Equal(got, drainSteps) {
		t.Fatalf("drain_step lines ran %q, want exactly %q", got, drainSteps)
	}
	for i, s := range steps {
		if _, ok := s["duration_ms"].(float64); !ok {
			t.Errorf("drain step %v has no numeric duration_ms: %v", s["step"], s)
		}
		if o, _ := s["outcome"].(string); o == "" {
			t.Errorf("drain step %v has no outcome: %v", s["step"], s)
		}
		if idx, _ := s["index"].(float64); int(idx) != i+1 {
			t.Errorf("drain step %v has index %v, want %d", s["step"], s["index"], i+1)
		}
	}
	return steps
}

// checkDrainSucceeded asserts no step of the drain failed or timed out.
func checkDrainSucceeded(t *testing.T, steps []map[string]any) {
	t.Helper()
	for _, s := range steps {
		if o := s["outcome"]; o != "done" && o != "nothing" {
			t.Errorf("drain step %v: outcome %v (%v), want done or nothing", s["step"], o, s["detail"])
		}
	}
}

// everyLineHasEvent asserts each line carries a non-empty "event".
func everyLineHasEvent(t *testing.T, where string, lines []map[string]any) {
	t.Helper()
	for _, l := range lines {
		if ev, _ := l["event"].(string); ev == "" {
			t.Errorf("%s: a line without an event field: %v", where, l)
		}
	}
}

// canonical renders lines as sorted JSON strings (map keys sorted), to
// compare two logs as multisets.
func canonical(t *testing.T, lines []map[string]any) []string {
	t.Helper()
	out := make([]string, 0, len(lines))
	for _, l := range lines {
		b, err := json.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	sort.Strings(out)
	return out
}

// describeTree checks the tree's shape right after start-up and returns ""
// when every actor is where it belongs, running, never restarted.
func describeTree(root cpapi.ActorNode) string {
	var problems []string
	if root.Name != "clawker-cp" || root.Path != "clawker-cp" || root.State != cpapi.ActorRunning {
		problems = append(problems, fmt.Sprintf("root is %s (%s) %s", root.Name, root.Path, root.State))
	}
	var names []string
	for _, c := range root.Children {
		names = append(names, c.Name)
	}
	if !sameSet(names, subsystems) {
		problems = append(problems, fmt.Sprintf("root's children %q, want %q", names, subsystems))
	}
	for _, c := range root.Children {
		if c.Path != "clawker-cp/"+c.Name || c.State != cpapi.ActorRunning || c.Restarts != 0 || c.LastError != "" {
			problems = append(problems, fmt.Sprintf("%s: path %s state %s restarts %d last_error %q", c.Name, c.Path, c.State, c.Restarts, c.LastError))
		}
		var kids []string
		for _, g := range c.Children {
			kids = append(kids, g.Name)
			if g.Path != c.Path+"/"+g.Name || g.State != cpapi.ActorRunning || g.Restarts != 0 || len(g.Children) != 0 {
				problems = append(problems, fmt.Sprintf("%s: path %s state %s restarts %d children %d", g.Name, g.Path, g.State, g.Restarts, len(g.Children)))
			}
		}
		if !sameSet(kids, grandchildren[c.Name]) {
			problems = append(problems, fmt.Sprintf("%s's children %q, want %q", c.Name, kids, grandchildren[c.Name]))
		}
	}
	return strings.Join(problems, "; ")
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func actorsURL(p *cptest.Process) string  { return p.HealthURL() + "/debug/actors" }
func healthzURL(p *cptest.Process) string { return p.HealthURL() + "/healthz" }

func postFault(t *testing.T, p *cptest.Process, actor, kind, duration string) {
	t.Helper()
	q := url.Values{"actor": {actor}, "kind": {kind}}
	if duration != "" {
		q.Set("duration", duration)
	}
	var body map[string]string
	if code := cptest.PostJSON(t, p.HealthURL()+"/debug/faults?"+q.Encode(), &body); code != http.StatusAccepted {
		t.Fatalf("POST /debug/faults %s: %d %v\nstderr tail:\n%s", q.Encode(), code, body, p.Tail(cptest.TailLines))
	}
}

// waitActor polls /debug/actors until cond holds for the named actor.
func waitActor(t *testing.T, p *cptest.Process, name, what string, cond func(cpapi.ActorNode) bool) cpapi.ActorNode {
	t.Helper()
	var node cpapi.ActorNode
	p.WaitFor(t, changeTimeout, name+" "+what, func() (bool, string) {
		var root cpapi.ActorNode
		code, err := cptest.TryGetJSON(actorsURL(p), &root)
		if err != nil || code != http.StatusOK {
			return false, fmt.Sprintf("GET /debug/actors: %d %v", code, err)
		}
		n, ok := cptest.FindActor(root, name)
		if !ok {
			return false, name + " is not in the tree"
		}
		node = n
		return cond(n), fmt.Sprintf("%+v", n)
	})
	return node
}

// TestStartupAndOrderedDrain: /healthz says not_ready until the held ready
// declaration, then ok with one probe per subsystem; /debug/actors shows the
// whole tree running; a signal runs the seven drain steps in order, logged to
// stderr and to the log file alike, and the CP exits 0.
func TestStartupAndOrderedDrain(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
	}{{"SIGTERM", syscall.SIGTERM}, {"SIGINT", syscall.SIGINT}} {
		sig := tc.sig
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			home := cptest.NewCPHome(t, "")
			p := cptest.StartCP(t, home, cpBinary(t), holdReadyEnv+"=1500ms")

			// Record every distinct answer of /healthz until it is 200.
			var seen []string
			var healthy cpapi.Health
			p.WaitFor(t, healthyTimeout, "GET /healthz to answer 200", func() (bool, string) {
				var h cpapi.Health
				code, err := cptest.TryGetJSON(healthzURL(p), &h)
				if code == 0 {
					return false, fmt.Sprint(err) // not listening yet
				}
				obs := fmt.Sprintf("%d %s", code, h.Status)
				if err != nil {
					obs = fmt.Sprintf("%d %v", code, err)
				}
				if len(seen) == 0 || seen[len(seen)-1] != obs {
					seen = append(seen, obs)
				}
				healthy = h
				return code == http.StatusOK, obs
			})
			if want := []string{"503 not_ready", "200 ok"}; !slices.Equal(seen, want) {
				t.Errorf("/healthz answered %q in turn, want %q", seen, want)
			}
			var probes []string
			for _, pr := range healthy.Probes {
				probes = append(probes, pr.Name)
				if !pr.OK || pr.Error != "" {
					t.Errorf("probe %s failing: %+v", pr.Name, pr)
				}
			}
			// One liveness probe per subsystem (health aside); subsystems
			// may add probes of their own ports and resources.
			for _, want := range subsystems[1:] {
				if !slices.Contains(probes, want) {
					t.Errorf("/healthz has no probe for %s: %q", want, probes)
				}
			}
			if len(healthy.Failing) != 0 {
				t.Errorf("/healthz 200 with failing %q", healthy.Failing)
			}

			p.WaitFor(t, changeTimeout, "/debug/actors to show every subsystem running", func() (bool, string) {
				var root cpapi.ActorNode
				code, err := cptest.TryGetJSON(actorsURL(p), &root)
				if err != nil || code != http.StatusOK {
					return false, fmt.Sprintf("GET /debug/actors: %d %v", code, err)
				}
				problems := describeTree(root)
				return problems == "", problems
			})

			if err := p.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if code := p.MustExit(t, exitTimeout); code != 0 {
				t.Fatalf("exit code %d after %s, want 0", code, sig)
			}
			steps := checkDrain(t, p)
			checkDrainSucceeded(t, steps)
			if b := p.Events("drain_begin"); len(b) != 1 || b[0]["reason"] != "signal" {
				t.Errorf("drain_begin lines %v, want one with reason signal", b)
			}
			if e := p.Events("exit"); len(e) != 1 || e[0]["exit_code"] != 0.0 {
				t.Errorf("exit lines %v, want one with exit_code 0", e)
			}

			stderrLines := p.Lines()
			if other := p.NonJSON(); len(other) != 0 {
				t.Errorf("stderr has lines that are not JSON: %q", other)
			}
			everyLineHasEvent(t, "stderr", stderrLines)

			fileLines, other := cptest.ReadJSONLines(t, home.LogFile(t))
			if len(other) != 0 {
				t.Errorf("log file has lines that are not JSON: %q", other)
			}
			everyLineHasEvent(t, "log file", fileLines)
			if fileSteps := cptest.FilterEvent(fileLines, "drain_step"); !reflect.DeepEqual(fileSteps, steps) {
				t.Errorf("log file drain_step lines differ from stderr's:\nfile:   %v\nstderr: %v", fileSteps, steps)
			}
			// The two outputs are one tee: the same lines, though concurrent
			// writers may interleave them differently.
			if f, s := canonical(t, fileLines), canonical(t, stderrLines); !slices.Equal(f, s) {
				t.Errorf("the log file (%d lines) and stderr (%d lines) differ", len(f), len(s))
			}
		})
	}
}

// TestPanicIsRestarted: a panicking actor is restarted one-for-one by the
// root; the CP stays up and healthy.
func TestPanicIsRestarted(t *testing.T) {
	t.Parallel()
	_, p := startHealthy(t, "", faultsEnv)

	postFault(t, p, "overseer", "panic", "")
	node := waitActor(t, p, "overseer", "restarted once and running again", func(n cpapi.ActorNode) bool {
		return n.Restarts == 1 && n.State == cpapi.ActorRunning
	})
	if !strings.Contains(node.LastError, "debug fault") {
		t.Errorf("overseer last_error %q, want the injected panic", node.LastError)
	}
	h := p.WaitHealthy(t, changeTimeout)
	for _, pr := range h.Probes {
		if pr.Name == "overseer" && !pr.OK {
			t.Errorf("overseer probe failing after the restart: %+v", pr)
		}
	}
	// One-for-one: nobody else was restarted.
	root := p.Actors(t)
	for _, c := range root.Children {
		if c.Name != "overseer" && c.Restarts != 0 {
			t.Errorf("%s restarted %d times, want 0", c.Name, c.Restarts)
		}
	}
	if root.State != cpapi.ActorRunning {
		t.Errorf("root state %s, want running", root.State)
	}
	if r := p.Events("subsystem_restart"); len(r) != 1 || r[0]["subsystem"] != "overseer" {
		t.Errorf("subsystem_restart lines %v, want one for overseer", r)
	}
	if p.Exited() {
		t.Fatal("the CP exited after a single panic")
	}
	if d := p.Events("drain_step"); len(d) != 0 {
		t.Errorf("a drain ran after a single panic: %v", d)
	}

	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.MustExit(t, exitTimeout); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	checkDrainSucceeded(t, checkDrain(t, p))
}

// TestRestartIntensityExceeded: past supervisor.max_restarts within the
// window the root gives up: ordered drain, then exit 2.
func TestRestartIntensityExceeded(t *testing.T) {
	t.Parallel()
	_, p := startHealthy(t, "control_plane:\n  supervisor:\n    max_restarts: 2\n    restart_window: 30s\n", faultsEnv)

	for i := 1; i <= 2; i++ {
		postFault(t, p, "watcher", "panic", "")
		waitActor(t, p, "watcher", fmt.Sprintf("restarted %d times and running", i), func(n cpapi.ActorNode) bool {
			return n.Restarts == i && n.State == cpapi.ActorRunning
		})
		if len(p.Events("restart_intensity_exceeded")) != 0 || p.Exited() {
			t.Fatalf("the CP gave up after %d panics, within max_restarts 2", i)
		}
	}
	postFault(t, p, "watcher", "panic", "")

	if code := p.MustExit(t, exitTimeout); code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
	ex := p.Events("restart_intensity_exceeded")
	if len(ex) != 1 || ex[0]["subsystem"] != "watcher" {
		t.Errorf("restart_intensity_exceeded lines %v, want one for watcher", ex)
	}
	// An escalation keeps enforcement pinned: every step but the last,
	// ebpf_flush, runs; that one is logged as skipped.
	steps := checkDrain(t, p)
	checkDrainSucceeded(t, steps[:len(steps)-1])
	if last := steps[len(steps)-1]; last["step"] != "ebpf_flush" || last["outcome"] != "skipped" {
		t.Errorf("last drain step %v, want ebpf_flush skipped", last)
	}
	if b := p.Events("drain_begin"); len(b) != 1 || b[0]["exit_code"] != 2.0 {
		t.Errorf("drain_begin lines %v, want one with exit_code 2", b)
	}
	if e := p.Events("exit"); len(e) != 1 || e[0]["exit_code"] != 2.0 {
		t.Errorf("exit lines %v, want one with exit_code 2", e)
	}
}

// TestFailingProbe: an actor whose mailbox stalls fails its liveness probe,
// /healthz says which, and recovers once the stall ends.
func TestFailingProbe(t *testing.T) {
	t.Parallel()
	_, p := startHealthy(t, "", faultsEnv)

	postFault(t, p, "overseer", "block", "4s")
	var bad cpapi.Health
	p.WaitFor(t, changeTimeout, "/healthz to report overseer failing", func() (bool, string) {
		var h cpapi.Health
		code, err := cptest.TryGetJSON(healthzURL(p), &h)
		if err != nil {
			return false, err.Error()
		}
		bad = h
		return code == http.StatusServiceUnavailable && h.Status == cpapi.StatusUnhealthy, fmt.Sprintf("%d %+v", code, h)
	})
	if !slices.Equal(bad.Failing, []string{"overseer"}) {
		t.Errorf("failing %q, want exactly [overseer]", bad.Failing)
	}
	var found bool
	for _, pr := range bad.Probes {
		if pr.Name != "overseer" {
			if !pr.OK {
				t.Errorf("probe %s failing too: %+v", pr.Name, pr)
			}
			continue
		}
		found = true
		if pr.OK || !strings.Contains(pr.Error, "overseer") {
			t.Errorf("overseer probe %+v, want a failure naming overseer", pr)
		}
	}
	if !found {
		t.Errorf("no overseer probe in %+v", bad)
	}

	h := p.WaitHealthy(t, changeTimeout)
	if h.Status != cpapi.StatusOK || len(h.Failing) != 0 {
		t.Errorf("after the block: %+v", h)
	}
	if p.Exited() {
		t.Fatal("the CP exited because of a stalled mailbox")
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.MustExit(t, exitTimeout); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
}

// TestBadSettings: an invalid settings.yaml stops the CP at once with exit 1,
// naming the offending key, before any actor (so before any drain) runs.
func TestBadSettings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		extra func(t testing.TB, h *cptest.Home) string
		want  []string // substrings of the settings_invalid message
	}{
		{
			name:  "unknown key",
			extra: func(testing.TB, *cptest.Home) string { return "control_plane:\n  admn_port: 7443\n" },
			want:  []string{"control_plane.admn_port"},
		},
		{
			name:  "port out of range",
			extra: func(testing.TB, *cptest.Home) string { return "control_plane:\n  agent_port: 70000\n" },
			want:  []string{"control_plane.agent_port", "70000"},
		},
		{
			name: "admin port equals health port",
			extra: func(t testing.TB, h *cptest.Home) string {
				return fmt.Sprintf("control_plane:\n  admin_port: %d\n", h.Ports(t).Health())
			},
			want: []string{"control_plane.health_port", "control_plane.admin_port"},
		},
		{
			name: "health port as a string",
			extra: func(t testing.TB, h *cptest.Home) string {
				return fmt.Sprintf("control_plane:\n  health_port: %q\n", strconv.Itoa(h.Ports(t).Health()))
			},
			want: []string{"control_plane.health_port"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			bin := cpBinary(t)
			home := cptest.NewHome(t)
			written := home.WriteSettingsWithPorts(t, tt.extra(t, home))
			p := cptest.StartCP(t, home, bin)
			if code := p.MustExit(t, exitTimeout); code != 1 {
				t.Fatalf("exit code %d, want 1 (settings:\n%s)", code, written)
			}
			inv := p.Events("settings_invalid")
			if len(inv) != 1 {
				t.Fatalf("settings_invalid lines %v, want one (settings:\n%s)", inv, written)
			}
			msg, _ := inv[0]["msg"].(string)
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("settings_invalid message %q does not name %q", msg, w)
				}
			}
			if d := p.Events("drain_step"); len(d) != 0 {
				t.Errorf("drain steps ran on invalid settings: %v", d)
			}
			if s := p.Events("startup_begin"); len(s) != 0 {
				t.Errorf("the actor tree started on invalid settings: %v", s)
			}
		})
	}
}

// TestFailureBeforeReady: a subsystem that cannot start (the health port is
// taken) makes the CP exit 1 without any drain step, so eBPF state is left
// enforcing.
func TestFailureBeforeReady(t *testing.T) {
	t.Parallel()
	bin := cpBinary(t)
	home := cptest.NewCPHome(t, "")
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(home.Ports(t).Health())))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	p := cptest.StartCP(t, home, bin)
	if code := p.MustExit(t, exitTimeout); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	failed := p.Events("startup_failed")
	if len(failed) != 1 {
		t.Fatalf("startup_failed lines %v, want one", failed)
	}
	if e, _ := failed[0]["error"].(string); !strings.Contains(e, "control_plane.health_port") {
		t.Errorf("startup_failed error %q does not point at control_plane.health_port", e)
	}
	if d := p.Events("drain_step"); len(d) != 0 {
		t.Errorf("drain steps ran on a failure before ready: %v", d)
	}
	if r := p.Events("ready"); len(r) != 0 {
		t.Errorf("the CP declared ready: %v", r)
	}
	if e := p.Events("exit"); len(e) != 1 || e[0]["exit_code"] != 1.0 {
		t.Errorf("exit lines %v, want one with exit_code 1", e)
	}
}

// TestCLIAgainstLiveCP runs `clawker controlplane status|tree` against a
// running CP, then against none.
func TestCLIAgainstLiveCP(t *testing.T) {
	t.Parallel()
	bins := cptest.BuildBinaries(t, cpPkg, cliPkg)
	cli := bins["clawker"]
	home := cptest.NewCPHome(t, "")
	p := cptest.StartCP(t, home, bins["clawker-cp"])
	p.WaitHealthy(t, healthyTimeout)
	env := append(home.Env(), "CLAWKER_NO_BOOTSTRAP=1")
	run := func(args ...string) cptest.Result {
		t.Helper()
		return cptest.RunCmd(t, cptest.DefaultCmdTimeout, env, cli, append([]string{"controlplane"}, args...)...)
	}

	// status asks Docker for the clawker-controlplane container; this CP is
	// a host process, so status names it as running outside Docker unless
	// the host happens to run the real container too.
	wantStatus, wantContainer := "Container: stopped\nHealthz: ✓ (a control plane outside Docker answers)\n", "stopped"
	if realCPRunning(t) {
		wantStatus, wantContainer = "Container: running\nHealthz: ✓\n", "running"
	}
	// This CP runs without Ory: its AdminService refuses every caller, so
	// the firewall line says the state could not be read.
	if r := run("status"); r.Code != 0 || !strings.HasPrefix(r.Stdout, wantStatus+"Firewall: ✗ (") || strings.TrimPrefix(r.Stderr, knobNote) != "" {
		t.Errorf("status: %+v, want stdout %q and a firewall line", r, wantStatus)
	}

	r := run("status", "--format", "json")
	var st struct {
		Container string `json:"container"`
		Healthz   *struct {
			OK     bool   `json:"ok"`
			Status string `json:"status"`
		} `json:"healthz"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &st); err != nil || r.Code != 0 {
		t.Errorf("status --format json: %+v (%v)", r, err)
	} else if st.Container != wantContainer || st.Healthz == nil || !st.Healthz.OK || st.Healthz.Status != "ok" {
		t.Errorf("status --format json: %s", r.Stdout)
	}

	r = run("tree")
	if r.Code != 0 {
		t.Fatalf("tree: %+v", r)
	}
	states := map[string]string{}
	for _, line := range strings.Split(strings.TrimRight(r.Stdout, "\n"), "\n")[1:] {
		f := strings.Fields(strings.TrimLeft(line, "│├└─  "))
		if len(f) < 2 {
			t.Errorf("tree: unexpected line %q", line)
			continue
		}
		states[f[0]] = f[1]
	}
	want := append([]string{"clawker-cp"}, subsystems...)
	for _, g := range grandchildren {
		want = append(want, g...)
	}
	var names []string
	for n, s := range states {
		names = append(names, n)
		if s != string(cpapi.ActorRunning) {
			t.Errorf("tree: %s is %s, want running", n, s)
		}
	}
	if !sameSet(names, want) {
		t.Errorf("tree lists %q, want %q:\n%s", names, want, r.Stdout)
	}

	r = run("tree", "--format", "json")
	var root cpapi.ActorNode
	if err := json.Unmarshal([]byte(r.Stdout), &root); err != nil || r.Code != 0 {
		t.Errorf("tree --format json: %+v (%v)", r, err)
	} else if problems := describeTree(root); problems != "" {
		t.Errorf("tree --format json: %s", problems)
	}

	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.MustExit(t, exitTimeout); code != 0 {
		t.Fatalf("CP exit code %d, want 0", code)
	}

	if realCPRunning(t) {
		// The host's real container answers for "Container"; this home's
		// health port is silent now.
		if r := run("status"); r.Code != 0 || !strings.HasPrefix(r.Stdout, "Container: running\nHealthz: ✗") {
			t.Errorf("status after the CP exited (real CP container running): %+v", r)
		}
	} else if r := run("status"); r.Code != 0 || r.Stdout != "Container: stopped\n" {
		t.Errorf("status after the CP exited: %+v", r)
	}
	if r := run("tree"); r.Code == 0 || !strings.Contains(r.Stderr, "clawker controlplane up") {
		t.Errorf("tree after the CP exited: %+v, want a non-zero exit and a hint at `clawker controlplane up`", r)
	}
}

// BenchmarkExecToHealthy measures the time from exec to the first 200 of
// /healthz (polled every 5ms). The drain and exit are not timed.
func BenchmarkExecToHealthy(b *testing.B) {
	bin := cpBinary(b)
	home := cptest.NewCPHome(b, "")
	healthz := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(home.Ports(b).Health())) + "/healthz"
	// A fresh connection per poll, as a first contact with a new process.
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	defer hc.CloseIdleConnections()

	b.ResetTimer()
	for range b.N {
		b.StartTimer()
		p := cptest.StartCP(b, home, bin)
		deadline := time.Now().Add(healthyTimeout)
		for {
			resp, err := hc.Get(healthz)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Now().After(deadline) || p.Exited() {
				b.Fatalf("no 200 from %s within %s (last error %v)\nstderr tail:\n%s", healthz, healthyTimeout, err, p.Tail(cptest.TailLines))
			}
			time.Sleep(5 * time.Millisecond)
		}
		b.StopTimer()
		if err := p.Signal(syscall.SIGTERM); err != nil {
			b.Fatal(err)
		}
		if code := p.MustExit(b, exitTimeout); code != 0 {
			b.Fatalf("exit code %d, want 0", code)
		}
	}
}

// A CP asked to enforce a firewall whose stack is not there must refuse to
// report ready rather than run unprotected, and say how to opt out. Two
// ways to lack it: no agent network, and a network where nothing answers at
// the stack's addresses.
func TestFirewallEnabledWithoutStackRefusesToStart(t *testing.T) {
	bin := cpBinary(t)
	pinDir := cptest.TestPinDir(t)
	cases := []struct {
		name    string
		network func(t *testing.T) string
		want    []string
	}{
		{"no network", func(*testing.T) string { return "clawker-test-nonet-" + cptest.NewRunID() },
			[]string{"agent network cannot be read", "firewall.enable: false"}},
		{"no stack", func(t *testing.T) string {
			return cptest.NewTestNet(t, cptest.RequireDocker(t), cptest.NewRunID(), cptest.TestNetOptions{}).Name
		},
			[]string{"no DNS server answers at", ".201:53", "firewall.enable: false"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			home := cptest.NewCPHome(t, "firewall: {enable: true}")
			p := cptest.StartCP(t, home, bin, "CLAWKER_CP_DEBUG_PIN_DIR="+pinDir, "CLAWKER_CP_DEBUG_NETWORK="+c.network(t))
			if code := p.MustExit(t, exitTimeout); code != 1 {
				t.Fatalf("exit code %d, want 1", code)
			}
			failed := p.Events("startup_failed")
			if len(failed) != 1 {
				t.Fatalf("startup_failed lines %v, want one", failed)
			}
			e, _ := failed[0]["error"].(string)
			for _, want := range c.want {
				if !strings.Contains(e, want) {
					t.Errorf("startup_failed error %q does not contain %q", e, want)
				}
			}
			if d := p.Events("drain_step"); len(d) != 0 {
				t.Errorf("drain steps ran on a failure before ready: %v", d)
			}
		})
	}
}

// realCPRunning reports whether Docker runs the clawker-controlplane
// container on this host (no Docker counts as not running).
func realCPRunning(t *testing.T) bool {
	t.Helper()
	d, err := dockerx.New("")
	if err != nil {
		return false
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := cpboot.Inspect(ctx, d)
	return err == nil && st.Running && !st.Restarting
}

// knobNote is what the CLI says on stderr when CLAWKER_NO_BOOTSTRAP=1.
const knobNote = "clawker: CLAWKER_NO_BOOTSTRAP=1: not bringing the control plane up\n"
