package health_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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

// fakeClock is the probe cache's clock, moved by the test only.
// reads counts the cache's look-ups: every request reads it once on
// arrival, and once more after waiting for a run in flight.
type fakeClock struct{ ns, reads atomic.Int64 }

func (c *fakeClock) now() time.Time          { c.reads.Add(1); return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// startCacheRig starts a health actor on loopback with cfg's cache
// settings and returns its config (Addr set) and the rig.
func startCacheRig(t *testing.T, ttl time.Duration, clock *fakeClock) (health.Config, *rig) {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(cptest.FreePorts(t, 1)[0])
	sys := actortest.Quiet()
	tree := supervise.NewTree()
	r := &rig{sys: sys, tree: tree, base: "http://" + addr, ready: make(chan *supervise.Ready, 8)}
	cfg := health.Config{Addr: addr, Tree: tree, RootPath: "hp", ProbeTimeout: 2 * time.Second,
		ProbeCacheTTL: ttl, Clock: clock.now, Log: zap.NewNop()}
	top, err := sys.Root.SpawnNamed(tree.Props(func() actor.Actor { return &parent{cfg: cfg, tree: tree, ready: r.ready} }, in), "hp")
	if err != nil {
		t.Fatal(err)
	}
	r.top, r.health = top, actor.NewPID(sys.Address(), "hp/health")
	t.Cleanup(func() {
		_ = sys.Root.StopFuture(top).Wait()
		sys.Shutdown()
	})
	if m := r.waitReady(t); m.Err != nil {
		t.Fatal(m.Err)
	}
	return cfg, r
}

// TestHealthzAnswersFromCache: within the cache's lifetime a burst of
// requests runs the probes once; after it, one request runs them again;
// a new probe set is probed at once, whatever the cache's age.
func TestHealthzAnswersFromCache(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{}
	_, r := startCacheRig(t, time.Second, clock)
	var runs atomic.Int64
	counting := func(context.Context) error { runs.Add(1); return nil }
	r.sys.Root.Send(r.health, &health.RegisterProbes{Probes: []health.Probe{{Name: "counted", Check: counting}}})
	r.sys.Root.Send(r.health, &health.SetReady{})
	testkit.WaitFor(t, 5*time.Second, "/healthz 200", func() bool { c, _ := healthz(t, r.base); return c == http.StatusOK })
	before := runs.Load()
	if before != 1 {
		t.Fatalf("the probe ran %d times for the requests until ready, want 1 (the clock has not moved)", before)
	}

	var wg sync.WaitGroup
	codes := make([]int, 50)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], _ = healthz(t, r.base)
		}()
	}
	wg.Wait()
	for i, c := range codes {
		if c != http.StatusOK {
			t.Fatalf("request %d: %d", i, c)
		}
	}
	if got := runs.Load(); got != before {
		t.Errorf("50 requests within the cache's lifetime ran the probe %d more times, want 0", got-before)
	}

	clock.advance(time.Second)
	if c, _ := healthz(t, r.base); c != http.StatusOK || runs.Load() != before+1 {
		t.Errorf("after the cache expired: %d, probe runs %d, want %d", c, runs.Load(), before+1)
	}

	r.sys.Root.Send(r.health, &health.RegisterProbes{Probes: []health.Probe{
		{Name: "counted", Check: counting},
		{Name: "new", Check: func(context.Context) error { return errors.New("new probe fails") }},
	}})
	testkit.WaitFor(t, 5*time.Second, "the new probe set answered without the clock moving", func() bool {
		c, h := healthz(t, r.base)
		return c == http.StatusServiceUnavailable && strings.Join(h.Failing, ",") == "new"
	})
}

// TestHealthzOneProbeRunAtATime: requests arriving while a slow run is in
// flight wait for it instead of starting their own.
func TestHealthzOneProbeRunAtATime(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{}
	_, r := startCacheRig(t, time.Second, clock)
	r.sys.Root.Send(r.health, &health.SetReady{})
	testkit.WaitFor(t, 5*time.Second, "/healthz 200", func() bool { c, _ := healthz(t, r.base); return c == http.StatusOK })

	var runs atomic.Int64
	started := make(chan struct{}, 64)
	release := make(chan struct{})
	r.sys.Root.Send(r.health, &health.RegisterProbes{Probes: []health.Probe{{Name: "slow", Check: func(ctx context.Context) error {
		runs.Add(1)
		started <- struct{}{}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}}})
	// The snapshot sees the new probe once the actor took the message:
	// the first request to run it is the one the others must wait for.
	go func() { _, _ = healthz(t, r.base) }()
	<-started
	base := clock.reads.Load()
	var wg sync.WaitGroup
	results := make([]cpapi.Health, 20)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, results[i] = healthz(t, r.base)
		}()
	}
	testkit.WaitFor(t, 10*time.Second, "20 requests at the cache while the run is in flight", func() bool {
		return clock.reads.Load()-base >= 20
	})
	close(release)
	wg.Wait()
	if got := runs.Load(); got != 1 {
		t.Errorf("21 requests during one slow run ran the probe %d times, want 1", got)
	}
	for i, h := range results {
		if h.Status != cpapi.StatusOK || len(h.Probes) != 1 {
			t.Errorf("request %d: %+v", i, h)
		}
	}
}

// TestHealthzErrorTextOnlyForLoopback: a failing probe's error text (which
// names internal addresses) reaches a loopback caller, never one from
// another address; both get the verdict and the probe's name and result.
func TestHealthzErrorTextOnlyForLoopback(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{}
	cfg, r := startCacheRig(t, time.Second, clock)
	const detail = "dial tcp 127.0.0.1:4445: connect: connection refused"
	r.sys.Root.Send(r.health, &health.RegisterProbes{Probes: []health.Probe{
		{Name: "ory_hydra", Check: func(context.Context) error { return errors.New(detail) }},
		{Name: "registry", Check: pass},
	}})
	r.sys.Root.Send(r.health, &health.SetReady{})
	testkit.WaitFor(t, 5*time.Second, "/healthz to run the probes", func() bool { _, h := healthz(t, r.base); return len(h.Probes) == 2 })

	// A real request over loopback keeps the detail.
	if code, h := healthz(t, r.base); code != http.StatusServiceUnavailable || h.Probes[0].Error != detail {
		t.Errorf("loopback caller: %d %+v, want the error text", code, h)
	}
	srv := health.HealthzHandler(cfg, r.sys, r.health)
	for _, remote := range []string{"192.0.2.10:40000", "[2001:db8::10]:40000", "198.51.100.1:1"} {
		req := httptest.NewRequest(http.MethodGet, "/healthz", nil)
		req.RemoteAddr = remote
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, req)
		body := w.Body.String()
		var h cpapi.Health
		if err := json.Unmarshal([]byte(body), &h); err != nil {
			t.Fatalf("%s: %v: %s", remote, err, body)
		}
		if w.Code != http.StatusServiceUnavailable || h.Status != cpapi.StatusUnhealthy || strings.Join(h.Failing, ",") != "ory_hydra" ||
			len(h.Probes) != 2 || h.Probes[0].Name != "ory_hydra" || h.Probes[0].OK || !h.Probes[1].OK {
			t.Errorf("caller %s: %d %+v, want the verdict and the probes' names and results", remote, w.Code, h)
		}
		if strings.Contains(body, "4445") || strings.Contains(body, "refused") || strings.Contains(body, `"error"`) {
			t.Errorf("caller %s got internal error text: %s", remote, body)
		}
	}
	for _, remote := range []string{"127.0.0.7:40000", "[::1]:40000", "[::ffff:127.0.0.1]:40000"} {
		req := httptest.NewRequest(http.MethodGet, "/healthz", nil)
		req.RemoteAddr = remote
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, req)
		if !strings.Contains(w.Body.String(), detail) {
			t.Errorf("loopback caller %s lost the detail: %s", remote, w.Body.String())
		}
	}
}
