package health_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/health"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/testkit"
	"github.com/clawker/clawker-cp/pkg/testkit/actortest"
)

func pass(context.Context) error { return nil }

// ---- RunProbes -------------------------------------------------------------

func TestRunProbesAllPass(t *testing.T) {
	t.Parallel()
	h := health.RunProbes(context.Background(), []health.Probe{
		{Name: "overseer", Check: pass},
		{Name: "registry", Check: pass},
	}, time.Second)
	if h.Status != cpapi.StatusOK || len(h.Failing) != 0 {
		t.Fatalf("verdict %+v", h)
	}
	if len(h.Probes) != 2 || h.Probes[0].Name != "overseer" || h.Probes[1].Name != "registry" {
		t.Fatalf("probes not reported in order: %+v", h.Probes)
	}
	for _, p := range h.Probes {
		if !p.OK || p.Error != "" || p.LatencyMS < 0 {
			t.Errorf("probe %+v", p)
		}
	}
}

func TestRunProbesNoProbes(t *testing.T) {
	t.Parallel()
	h := health.RunProbes(context.Background(), nil, time.Second)
	if h.Status != cpapi.StatusOK || len(h.Probes) != 0 {
		t.Errorf("verdict %+v", h)
	}
}

func TestRunProbesOneFailing(t *testing.T) {
	t.Parallel()
	h := health.RunProbes(context.Background(), []health.Probe{
		{Name: "a", Check: pass},
		{Name: "b", Check: func(context.Context) error { return errors.New("dial tcp 127.0.0.1:7443: connection refused") }},
		{Name: "c", Check: pass},
	}, time.Second)
	if h.Status != cpapi.StatusUnhealthy {
		t.Errorf("status %q", h.Status)
	}
	if strings.Join(h.Failing, ",") != "b" {
		t.Errorf("failing %v", h.Failing)
	}
	b := h.Probes[1]
	if b.Name != "b" || b.OK || b.Error != "dial tcp 127.0.0.1:7443: connection refused" {
		t.Errorf("probe b %+v", b)
	}
	if !h.Probes[0].OK || !h.Probes[2].OK {
		t.Errorf("passing probes reported failed: %+v", h.Probes)
	}
}

func TestRunProbesHangingProbeIsCut(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	timeout := 50 * time.Millisecond
	begin := time.Now()
	h := health.RunProbes(context.Background(), []health.Probe{
		// Ignores ctx entirely.
		{Name: "stuck", Check: func(context.Context) error { <-release; return nil }},
		// Honours ctx.
		{Name: "polite", Check: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }},
		{Name: "fine", Check: pass},
	}, timeout)
	el := time.Since(begin)
	if el < timeout || el > 5*time.Second {
		t.Errorf("RunProbes took %s with a %s probe timeout", el, timeout)
	}
	if h.Status != cpapi.StatusUnhealthy || strings.Join(h.Failing, ",") != "stuck,polite" {
		t.Fatalf("verdict %+v", h)
	}
	if s := h.Probes[0]; !strings.Contains(s.Error, "no answer") || !strings.Contains(s.Error, context.DeadlineExceeded.Error()) {
		t.Errorf("stuck probe error %q", s.Error)
	}
	if s := h.Probes[0]; s.LatencyMS < float64(timeout.Milliseconds()) {
		t.Errorf("stuck probe latency %v ms", s.LatencyMS)
	}
	if p := h.Probes[1]; p.OK || p.Error == "" {
		t.Errorf("polite probe %+v", p)
	}
}

func TestRunProbesPanickingProbeFails(t *testing.T) {
	t.Parallel()
	h := health.RunProbes(context.Background(), []health.Probe{
		{Name: "crashy", Check: func(context.Context) error { panic("nil map") }},
		{Name: "fine", Check: pass},
	}, time.Second)
	if h.Status != cpapi.StatusUnhealthy || strings.Join(h.Failing, ",") != "crashy" {
		t.Fatalf("verdict %+v", h)
	}
	if e := h.Probes[0].Error; e != "probe panicked: nil map" {
		t.Errorf("error %q", e)
	}
}

func TestRunProbesCancelledRequest(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h := health.RunProbes(ctx, []health.Probe{
		{Name: "polite", Check: func(ctx context.Context) error { return ctx.Err() }},
	}, time.Second)
	if h.Status != cpapi.StatusUnhealthy {
		t.Errorf("a probe of a cancelled request passed: %+v", h)
	}
}

// ---- the actor and its HTTP port --------------------------------------------

// parent is a tiny root for the health actor: it spawns it (and optionally a
// victim for the fault endpoint) and hands every Ready to the test.
type parent struct {
	cfg    health.Config
	tree   *supervise.Tree
	victim bool
	ready  chan *supervise.Ready
}

type victim struct{}

type ask struct{}

func (victim) Receive(ctx actor.Context) {
	if _, ok := ctx.Message().(*ask); ok {
		ctx.Respond("here")
	}
}

var in = supervise.Intensity{Max: 5, Window: time.Minute}

func (p *parent) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if p.victim {
			if _, err := ctx.SpawnNamed(p.tree.Props(func() actor.Actor { return victim{} }, in), "victim"); err != nil {
				panic(err)
			}
		}
		if _, err := ctx.SpawnNamed(p.tree.Props(health.New(p.cfg), in), "health"); err != nil {
			panic(err)
		}
	case *supervise.Ready:
		p.ready <- m
	}
}

type rig struct {
	sys    *actor.ActorSystem
	tree   *supervise.Tree
	base   string
	health *actor.PID
	top    *actor.PID
	ready  chan *supervise.Ready
}

func startRig(t *testing.T, faults, withVictim bool, addr string) *rig {
	t.Helper()
	return startRigDebug(t, faults, withVictim, addr, nil)
}

// startRigDebug is startRig with an internal debug listener (nil: none).
func startRigDebug(t *testing.T, faults, withVictim bool, addr string, debug *health.DebugListener) *rig {
	t.Helper()
	return startRigLog(t, faults, withVictim, addr, debug, zap.NewNop())
}

// startRigLog is startRigDebug logging to log.
func startRigLog(t *testing.T, faults, withVictim bool, addr string, debug *health.DebugListener, log *zap.Logger) *rig {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:" + strconv.Itoa(cptest.FreePorts(t, 1)[0])
	}
	sys := actortest.Quiet()
	tree := supervise.NewTree()
	r := &rig{sys: sys, tree: tree, base: "http://" + addr, ready: make(chan *supervise.Ready, 8)}
	p := &parent{
		cfg: health.Config{
			Addr: addr, Debug: debug, Tree: tree, RootPath: "hp", ProbeTimeout: 500 * time.Millisecond,
			Faults: faults, Log: log,
		},
		tree: tree, victim: withVictim, ready: r.ready,
	}
	top, err := sys.Root.SpawnNamed(tree.Props(func() actor.Actor { return p }, in), "hp")
	if err != nil {
		t.Fatal(err)
	}
	r.top = top
	r.health = actor.NewPID(sys.Address(), "hp/health")
	t.Cleanup(func() {
		_ = sys.Root.StopFuture(top).Wait()
		sys.Shutdown()
	})
	return r
}

func (r *rig) waitReady(t *testing.T) *supervise.Ready {
	t.Helper()
	for {
		select {
		case m := <-r.ready:
			if m.Name == "health" {
				return m
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the health actor never reported Ready")
			return nil
		}
	}
}

// victim waits for the victim actor to register in the tree.
func (r *rig) victim(t *testing.T) *actor.PID {
	t.Helper()
	var pid *actor.PID
	testkit.WaitFor(t, 5*time.Second, "the victim in the tree", func() bool {
		p, ok := r.tree.Lookup("hp/victim")
		pid = p
		return ok
	})
	return pid
}

var client = &http.Client{Timeout: 5 * time.Second}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func healthz(t *testing.T, base string) (int, cpapi.Health) {
	t.Helper()
	resp, err := client.Get(base + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz: %v", err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var h cpapi.Health
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatalf("decoding /healthz: %v", err)
	}
	return resp.StatusCode, h
}

func TestHealthzLifecycle(t *testing.T) {
	t.Parallel()
	r := startRig(t, false, false, "")
	if m := r.waitReady(t); m.Err != nil {
		t.Fatalf("Ready carried %v", m.Err)
	}

	code, h := healthz(t, r.base)
	if code != http.StatusServiceUnavailable || h.Status != cpapi.StatusNotReady {
		t.Fatalf("before SetReady: %d %+v", code, h)
	}

	r.sys.Root.Send(r.health, &health.RegisterProbes{Probes: []health.Probe{
		{Name: "zulu", Check: pass},
		{Name: "alpha", Check: pass},
	}})
	r.sys.Root.Send(r.health, &health.SetReady{})
	testkit.WaitFor(t, 5*time.Second, "/healthz 200", func() bool { c, _ := healthz(t, r.base); return c == http.StatusOK })
	code, h = healthz(t, r.base)
	if code != http.StatusOK || h.Status != cpapi.StatusOK || len(h.Failing) != 0 {
		t.Fatalf("ready with passing probes: %d %+v", code, h)
	}
	if len(h.Probes) != 2 || h.Probes[0].Name != "alpha" || h.Probes[1].Name != "zulu" {
		t.Errorf("probes not listed by name: %+v", h.Probes)
	}

	// A failing probe is added; one with an existing name replaces it.
	r.sys.Root.Send(r.health, &health.RegisterProbes{Probes: []health.Probe{
		{Name: "registry", Check: func(context.Context) error { return errors.New("database is locked") }},
		{Name: "zulu", Check: func(context.Context) error { return errors.New("zulu down") }},
	}})
	testkit.WaitFor(t, 5*time.Second, "/healthz to see the failing probes", func() bool {
		_, h := healthz(t, r.base)
		return len(h.Probes) == 3
	})
	code, h = healthz(t, r.base)
	if code != http.StatusServiceUnavailable || h.Status != cpapi.StatusUnhealthy || strings.Join(h.Failing, ",") != "registry,zulu" {
		t.Fatalf("with failing probes: %d %+v", code, h)
	}
	if h.Probes[1].Name != "registry" || h.Probes[1].Error != "database is locked" {
		t.Errorf("failing probe %+v", h.Probes[1])
	}

	r.sys.Root.Send(r.health, &health.SetDraining{})
	testkit.WaitFor(t, 5*time.Second, "/healthz draining", func() bool { _, h := healthz(t, r.base); return h.Status == cpapi.StatusDraining })
	code, h = healthz(t, r.base)
	if code != http.StatusServiceUnavailable || len(h.Probes) != 0 || len(h.Failing) != 0 {
		t.Errorf("draining: %d %+v", code, h)
	}
	// Draining is final: SetReady does not reopen it.
	r.sys.Root.Send(r.health, &health.SetReady{})
	if _, h := healthz(t, r.base); h.Status != cpapi.StatusDraining {
		t.Errorf("after SetReady while draining: %+v", h)
	}

	// Health owns no drain step and says so.
	res, err := r.sys.Root.RequestFuture(r.health, &supervise.DrainStep{Step: cpapi.StepGRPCStop}, 2*time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	if d := res.(*supervise.StepDone); d.Outcome != supervise.OutcomeFailed || d.Step != cpapi.StepGRPCStop {
		t.Errorf("DrainStep answer %+v", d)
	}

	// Stopping the actor closes the port.
	if err := r.sys.Root.StopFuture(r.health).Wait(); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "the port to close", func() bool {
		resp, err := client.Get(r.base + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err != nil
	})
}

func TestHealthzWhenActorIsStalled(t *testing.T) {
	t.Parallel()
	r := startRig(t, false, false, "")
	r.waitReady(t)
	r.sys.Root.Send(r.health, &health.SetReady{})
	testkit.WaitFor(t, 5*time.Second, "/healthz 200", func() bool { c, _ := healthz(t, r.base); return c == http.StatusOK })
	// The handler asks the actor with a 1 s bound; a stalled mailbox is unhealthy.
	r.sys.Root.Send(r.health, &supervise.Fault{Kind: supervise.FaultBlock, Duration: 1500 * time.Millisecond})
	code, h := healthz(t, r.base)
	if code != http.StatusServiceUnavailable || h.Status != cpapi.StatusUnhealthy || strings.Join(h.Failing, ",") != "health" {
		t.Errorf("stalled: %d %+v", code, h)
	}
	testkit.WaitFor(t, 5*time.Second, "/healthz 200 again", func() bool { c, _ := healthz(t, r.base); return c == http.StatusOK })
}

func TestDebugActors(t *testing.T) {
	t.Parallel()
	r := startRig(t, false, true, "")
	r.waitReady(t)
	testkit.WaitFor(t, 5*time.Second, "both children in the tree", func() bool { return len(r.tree.Names()) == 3 })
	code, body := get(t, r.base+"/debug/actors")
	if code != http.StatusOK {
		t.Fatalf("/debug/actors %d %s", code, body)
	}
	var n cpapi.ActorNode
	if err := json.Unmarshal([]byte(body), &n); err != nil {
		t.Fatalf("decoding %s: %v", body, err)
	}
	// (The two children are spawned back to back, so their order is not
	// asserted here; see supervise's sibling-order test.)
	if n.Path != "hp" || n.Name != "hp" || len(n.Children) != 2 {
		t.Fatalf("tree %+v", n)
	}
	byPath := map[string]cpapi.ActorNode{}
	for _, c := range n.Children {
		byPath[c.Path] = c
	}
	hn, ok := byPath["hp/health"]
	if !ok || hn.Name != "health" || hn.State != cpapi.ActorRunning || hn.PID == "" || hn.UptimeSec < 0 {
		t.Errorf("health node %+v", hn)
	}
	if _, ok := byPath["hp/victim"]; !ok {
		t.Errorf("no victim node in %+v", n.Children)
	}
	// Indented JSON, for humans with curl.
	if !strings.Contains(body, "\n  \"path\": \"hp\"") {
		t.Errorf("body not indented: %s", body)
	}
}

func TestDebugActorsWithoutRoot(t *testing.T) {
	t.Parallel()
	addr := "127.0.0.1:" + strconv.Itoa(cptest.FreePorts(t, 1)[0])
	sys := actortest.Quiet()
	tree := supervise.NewTree()
	pid, err := sys.Root.SpawnNamed(tree.Props(health.New(health.Config{
		Addr: addr, Tree: tree, RootPath: "not-here", ProbeTimeout: time.Second, Log: zap.NewNop(),
	}), in), "lonely")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.Root.StopFuture(pid).Wait(); sys.Shutdown() })
	var code int
	var body string
	testkit.WaitFor(t, 5*time.Second, "the port to open", func() bool {
		resp, err := client.Get("http://" + addr + "/debug/actors")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		code, body = resp.StatusCode, string(b)
		return true
	})
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "root actor is not running") {
		t.Errorf("%d %s", code, body)
	}
}

func post(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := client.Post(url, "text/plain", nil)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestDebugFaultsAbsentByDefault(t *testing.T) {
	t.Parallel()
	r := startRig(t, false, true, "")
	r.waitReady(t)
	if code, _ := post(t, r.base+"/debug/faults?actor=victim&kind=panic"); code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
		t.Errorf("POST /debug/faults answered %d with faults off", code)
	}
	if code, _ := get(t, r.base+"/debug/faults"); code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
		t.Errorf("GET /debug/faults answered %d with faults off", code)
	}
	victim := r.victim(t)
	if n := r.tree.Restarts(victim); n != 0 {
		t.Errorf("victim restarted %d times", n)
	}
	// Only GET is served on the other endpoints.
	if code, _ := post(t, r.base+"/healthz"); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz answered %d", code)
	}
}

func TestDebugFaultsWhenEnabled(t *testing.T) {
	t.Parallel()
	r := startRig(t, true, true, "")
	r.waitReady(t)
	victimPID := r.victim(t)
	cases := []struct {
		query string
		code  int
		body  string
	}{
		{"actor=nobody&kind=panic", http.StatusNotFound, `no live actor named \"nobody\"`},
		{"actor=victim&kind=melt", http.StatusBadRequest, "kind: use panic or block"},
		{"actor=victim&kind=block", http.StatusBadRequest, "duration:"},
		{"actor=victim&kind=block&duration=2m", http.StatusBadRequest, "duration:"},
		{"actor=victim&kind=block&duration=-1s", http.StatusBadRequest, "duration:"},
	}
	for _, c := range cases {
		code, body := post(t, r.base+"/debug/faults?"+c.query)
		if code != c.code || !strings.Contains(body, c.body) {
			t.Errorf("%s: %d %s, want %d containing %q", c.query, code, body, c.code, c.body)
		}
	}
	// By short name (relative to the root path) and by full path.
	for i, name := range []string{"victim", "hp/victim"} {
		code, body := post(t, r.base+"/debug/faults?actor="+name+"&kind=panic")
		if code != http.StatusAccepted || !strings.Contains(body, `"actor": "hp/victim"`) {
			t.Fatalf("panic %s: %d %s", name, code, body)
		}
		testkit.WaitFor(t, 5*time.Second, fmt.Sprintf("victim restart %d", i+1), func() bool { return r.tree.Restarts(victimPID) == i+1 })
	}
	if res, err := r.sys.Root.RequestFuture(victimPID, &ask{}, 2*time.Second).Result(); err != nil || res != "here" {
		t.Errorf("victim after restarts: %v %v", res, err)
	}
}

func TestHealthActorRestartReopensPort(t *testing.T) {
	t.Parallel()
	r := startRig(t, true, false, "")
	r.waitReady(t)
	r.sys.Root.Send(r.health, &health.SetReady{})
	testkit.WaitFor(t, 5*time.Second, "/healthz 200", func() bool { c, _ := healthz(t, r.base); return c == http.StatusOK })
	if code, body := post(t, r.base+"/debug/faults?actor=health&kind=panic"); code != http.StatusAccepted {
		t.Fatalf("%d %s", code, body)
	}
	// The restarted actor listens again and reports Ready again, with fresh
	// state: not ready until its owner hands the probes back.
	if m := r.waitReady(t); m.Err != nil {
		t.Fatalf("Ready after restart carried %v", m.Err)
	}
	testkit.WaitFor(t, 5*time.Second, "/healthz not_ready from the new incarnation", func() bool {
		resp, err := client.Get(r.base + "/healthz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var h cpapi.Health
		_ = json.NewDecoder(resp.Body).Decode(&h)
		return h.Status == cpapi.StatusNotReady
	})
	if n := r.tree.Restarts(r.health); n != 1 {
		t.Errorf("health restarts %d", n)
	}
}

func TestPortInUseReportedInReady(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r := startRig(t, false, false, ln.Addr().String())
	m := r.waitReady(t)
	if m.Err == nil || !strings.Contains(m.Err.Error(), "health port") || !strings.Contains(m.Err.Error(), "control_plane.health_port") {
		t.Errorf("Ready error %v", m.Err)
	}
}
