package auth_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/clawker/clawker-cp/actors/auth"
	"github.com/clawker/clawker-cp/actors/root"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/ory"
	"github.com/clawker/clawker-cp/pkg/ory/orytest"
	"github.com/clawker/clawker-cp/pkg/testkit"
	"github.com/clawker/clawker-cp/pkg/testkit/actortest"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// harness runs auth as the only child of a real root supervisor.
type harness struct {
	t     *testing.T
	sys   *actor.ActorSystem
	tree  *supervise.Tree
	root  *actor.PID
	logs  *observer.ObservedLogs
	out   *syncBuf
	ready chan struct{}
	exit  chan int
	begin time.Time
}

func startRoot(t *testing.T, cfg auth.Config, in supervise.Intensity) *harness {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	h := &harness{
		t: t, tree: supervise.NewTree(), logs: logs, out: &syncBuf{},
		ready: make(chan struct{}), exit: make(chan int, 1),
		sys: actortest.Quiet(),
	}
	log := zap.New(core)
	cfg.Tree, cfg.Intensity, cfg.Log = h.tree, in, log.With(zap.String("actor", "auth"))
	if cfg.Output == nil {
		cfg.Output = h.out
	}
	var once sync.Once
	props := h.tree.Props(root.New(root.Config{
		Log: log, Tree: h.tree, Intensity: in, StartTimeout: time.Minute, StepTimeout: 10 * time.Second,
		Children: []supervise.Spec{auth.Spec(cfg)},
		OnReady:  func(actor.Context, map[string]*actor.PID) { once.Do(func() { close(h.ready) }) },
		Exit:     func(code int) { h.exit <- code },
	}), in)
	h.begin = time.Now()
	pid, err := h.sys.Root.SpawnNamed(props, root.Name)
	if err != nil {
		t.Fatal(err)
	}
	h.root = pid
	t.Cleanup(func() {
		h.drain()
		h.sys.Shutdown()
		if t.Failed() {
			t.Logf("servers' output:\n%s", h.out.String())
			for _, e := range h.logs.All() {
				t.Logf("log: %s %v", e.Message, e.ContextMap())
			}
		}
	})
	return h
}

// drain runs the root's ordered drain (stopping auth) once; it returns the
// exit code.
func (h *harness) drain() int {
	select {
	case code := <-h.exit:
		h.exit <- code
		return code
	default:
	}
	h.sys.Root.Send(h.root, &root.Drain{Reason: "test", ExitCode: root.ExitClean})
	select {
	case code := <-h.exit:
		h.exit <- code
		return code
	case <-time.After(30 * time.Second):
		h.t.Error("the root did not exit within 30s of the drain")
		return -1
	}
}

func (h *harness) waitReady(within time.Duration) time.Duration {
	h.t.Helper()
	select {
	case <-h.ready:
		return time.Since(h.begin)
	case code := <-h.exit:
		h.t.Fatalf("the root exited %d before ready", code)
	case <-time.After(within):
		h.t.Fatalf("not ready within %s", within)
	}
	return 0
}

func (h *harness) events(event string) []map[string]any {
	var out []map[string]any
	for _, e := range h.logs.All() {
		m := e.ContextMap()
		if m["event"] == event {
			out = append(out, m)
		}
	}
	return out
}

func (h *harness) serverEvents(event, server string) []map[string]any {
	var out []map[string]any
	for _, m := range h.events(event) {
		if m["server"] == server {
			out = append(out, m)
		}
	}
	return out
}

func (h *harness) pidOf(server string) int {
	h.t.Helper()
	ev := h.serverEvents("ory_process_started", server)
	if len(ev) == 0 {
		h.t.Fatalf("no ory_process_started for %s", server)
	}
	return int(ev[len(ev)-1]["pid"].(int64))
}

func (h *harness) children() []string {
	n, ok := h.tree.Snapshot(root.Name + "/auth")
	if !ok {
		return nil
	}
	var out []string
	for _, c := range n.Children {
		out = append(out, c.Name)
	}
	return out
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func realConfig(t *testing.T) (auth.Config, orytest.Env) {
	t.Helper()
	bin := orytest.BinDir(t)
	env := orytest.NewEnv(t)
	return auth.Config{
		Enable: true, BinDir: bin, RunDir: env.Config.RunDir, BindHost: "127.0.0.1", Ports: env.Config.Ports,
		ServerBundleDir: env.BundleDir, StopGrace: 3 * time.Second,
	}, env
}

func checkClients(t *testing.T, admin *ory.Admin, env orytest.Env) {
	t.Helper()
	for _, id := range []string{ory.ClientCLI, ory.ClientAgent} {
		c, err := admin.GetClient(context.Background(), id)
		if err != nil {
			t.Fatalf("client %s: %v", id, err)
		}
		if c.TokenEndpointAuthMethod != "private_key_jwt" || c.JWKS == nil || c.JWKS.Keys[0].Kid != env.Material.SigningJWK.Keys[0].Kid {
			t.Errorf("client %s: %+v", id, c)
		}
	}
}

// TestRealStackLifecycle: cold start to ready, the clients registered,
// hydra killed and brought back by its supervisor with its clients
// registered again (kratos and oathkeeper untouched), then the drain stops
// the servers in reverse order and leaves no process and no config file.
func TestRealStackLifecycle(t *testing.T) {
	t.Parallel()
	cfg, env := realConfig(t)
	h := startRoot(t, cfg, supervise.Intensity{Max: 3, Window: time.Minute})
	took := h.waitReady(time.Minute)
	t.Logf("cold start to ready (hydra, kratos, oathkeeper, clients): %s", took)

	if got := strings.Join(h.children(), ","); got != "hydra,kratos,oathkeeper" {
		t.Errorf("auth's children: %s", got)
	}
	started := h.events("ory_process_started")
	if len(started) != 3 || started[0]["server"] != "hydra" || started[1]["server"] != "kratos" || started[2]["server"] != "oathkeeper" {
		t.Errorf("start order: %v", started)
	}
	if n := len(h.events("ory_clients_registered")); n != 1 {
		t.Errorf("%d ory_clients_registered", n)
	}
	if len(h.events("ory_stack_ready")) != 1 {
		t.Error("no ory_stack_ready")
	}
	admin := ory.NewAdmin(env.Config.HydraAdminURL())
	checkClients(t, admin, env)

	// Kill hydra behind its actor's back.
	hydra, kratos, oathkeeper := h.pidOf(ory.Hydra), h.pidOf(ory.Kratos), h.pidOf(ory.Oathkeeper)
	killed := time.Now()
	if err := syscall.Kill(hydra, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 30*time.Second, "hydra restarted and its clients registered again", func() bool {
		return len(h.events("ory_clients_registered")) == 2
	})
	t.Logf("hydra killed to clients registered again: %s", time.Since(killed))
	exited := h.serverEvents("ory_process_exited", ory.Hydra)
	if len(exited) != 1 || exited[0]["code"] != int64(-1) || exited[0]["signal"] != "killed" || exited[0]["pid"] != int64(hydra) {
		t.Errorf("ory_process_exited: %v", exited)
	}
	if p := h.pidOf(ory.Hydra); p == hydra || !alive(p) {
		t.Errorf("hydra pid after the restart %d (before %d)", p, hydra)
	}
	if h.pidOf(ory.Kratos) != kratos || h.pidOf(ory.Oathkeeper) != oathkeeper || !alive(kratos) || !alive(oathkeeper) {
		t.Error("kratos or oathkeeper were restarted too")
	}
	checkClients(t, admin, env)
	hp, _ := h.tree.Lookup(root.Name + "/auth/hydra")
	ap, _ := h.tree.Lookup(root.Name + "/auth")
	if hp == nil || h.tree.Restarts(hp) != 1 || h.tree.Restarts(ap) != 0 {
		t.Errorf("restarts: hydra %d, auth %d", h.tree.Restarts(hp), h.tree.Restarts(ap))
	}
	if n, _ := h.tree.Snapshot(root.Name + "/auth/hydra"); !strings.Contains(n.LastError, "hydra exited unexpectedly (signal: killed, pid ") {
		t.Errorf("hydra's last error: %q", n.LastError)
	}

	// The drain stops them in reverse order.
	pids := []int{h.pidOf(ory.Hydra), kratos, oathkeeper}
	if code := h.drain(); code != 0 {
		t.Errorf("exit code %d", code)
	}
	var order []string
	for _, m := range h.events("ory_process_stopped") {
		order = append(order, m["server"].(string))
	}
	if got := strings.Join(order, ","); got != "oathkeeper,kratos,hydra" {
		t.Errorf("stop order %s", got)
	}
	for _, p := range pids {
		if alive(p) {
			t.Errorf("pid %d still alive after the drain", p)
		}
	}
	entries, _ := os.ReadDir(cfg.RunDir)
	if len(entries) != 0 {
		t.Errorf("run dir not empty after stop: %v", entries)
	}
}

// TestRealEscalation: hydra failing more often than the intensity bound
// allows escalates to the root, which restarts auth as a whole: every
// server is stopped (in reverse order) and started afresh, the clients
// registered again.
func TestRealEscalation(t *testing.T) {
	t.Parallel()
	cfg, env := realConfig(t)
	h := startRoot(t, cfg, supervise.Intensity{Max: 1, Window: time.Minute})
	h.waitReady(time.Minute)
	kratos := h.pidOf(ory.Kratos)

	// Within the bound: hydra alone restarts.
	if err := syscall.Kill(h.pidOf(ory.Hydra), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 30*time.Second, "hydra back", func() bool { return len(h.events("ory_clients_registered")) == 2 })
	// Past it: auth restarts.
	if err := syscall.Kill(h.pidOf(ory.Hydra), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 60*time.Second, "a fresh stack", func() bool {
		return len(h.events("ory_stack_ready")) == 2 && len(h.events("ory_clients_registered")) == 3
	})
	ap, _ := h.tree.Lookup(root.Name + "/auth")
	if h.tree.Restarts(ap) != 1 {
		t.Errorf("auth restarted %d times", h.tree.Restarts(ap))
	}
	if alive(kratos) || h.pidOf(ory.Kratos) == kratos {
		t.Error("kratos survived auth's restart")
	}
	var order []string
	for _, m := range h.events("ory_process_stopped") {
		order = append(order, m["server"].(string))
	}
	// hydra had already exited: only the two others needed stopping.
	if got := strings.Join(order, ","); got != "oathkeeper,kratos" {
		t.Errorf("stop order during auth's restart: %s", got)
	}
	checkClients(t, ory.NewAdmin(env.Config.HydraAdminURL()), env)
	select {
	case code := <-h.exit:
		t.Fatalf("the root exited %d", code)
	default:
	}
}

func TestDisabledIsAPlaceholder(t *testing.T) {
	t.Parallel()
	h := startRoot(t, auth.Config{}, supervise.Intensity{Max: 3, Window: time.Minute})
	h.waitReady(5 * time.Second)
	if len(h.events("auth_placeholder")) != 1 || len(h.children()) != 0 {
		t.Errorf("placeholder: events %v children %v", h.events("auth_placeholder"), h.children())
	}
	if p := (auth.Config{}).Probes(); p != nil {
		t.Errorf("probes of a disabled stack: %v", p)
	}
	n, _ := h.tree.Snapshot(root.Name + "/auth")
	if n.State != cpapi.ActorRunning {
		t.Errorf("auth state %s", n.State)
	}
}

// A start-up that cannot work fails the control plane's start-up (exit 1)
// with a reason naming what is missing; no process is started.
func TestStartupFailures(t *testing.T) {
	t.Parallel()
	env := orytest.NewEnv(t)
	good := auth.Config{
		Enable: true, BinDir: t.TempDir(), RunDir: env.Config.RunDir, BindHost: "127.0.0.1",
		Ports: env.Config.Ports, ServerBundleDir: env.BundleDir,
	}
	for _, n := range ory.Names {
		if err := os.WriteFile(filepath.Join(good.BinDir, n), []byte("#!/bin/sh\nexit 42\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name   string
		mutate func(*auth.Config)
		want   string
	}{
		{"no binaries", func(c *auth.Config) { c.BinDir = t.TempDir() }, "Ory server binary"},
		{"no signing key", func(c *auth.Config) { c.ServerBundleDir = t.TempDir() }, "the OAuth2 clients' key"},
		{"bad port", func(c *auth.Config) { c.Ports.HydraAdmin = 0 }, "hydra_admin_port"},
		{"hydra exits at once", func(*auth.Config) {}, "hydra exited before it was ready (exit code 42)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := good
			tc.mutate(&cfg)
			h := startRoot(t, cfg, supervise.Intensity{Max: 3, Window: time.Minute})
			select {
			case code := <-h.exit:
				h.exit <- code
				if code != root.ExitStartupFailure {
					t.Errorf("exit %d", code)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("no exit")
			}
			ev := h.events("startup_failed")
			if len(ev) != 1 || !strings.Contains(fmt.Sprint(ev[0]["error"]), tc.want) {
				t.Errorf("startup_failed %v, want %q", ev, tc.want)
			}
		})
	}
}
