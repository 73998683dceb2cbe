// Package health is the actor behind the CP's plain-HTTP health port:
// GET /healthz (503 until ready, then every registered probe must pass),
// GET /debug/actors (the live actor tree) and GET /debug/state (the
// overseer's worldview).
package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// Probe checks one port or resource a subsystem depends on. Check must
// honour ctx: it is bounded by the probe timeout.
type Probe struct {
	Name  string
	Check func(ctx context.Context) error
}

// RegisterProbes adds probes (a probe with an existing name replaces it).
type RegisterProbes struct{ Probes []Probe }

// SetReady opens /healthz: from now on its answer is the probes' verdict.
type SetReady struct{}

// SetDraining makes /healthz answer 503 "draining" for the rest of the
// process's life.
type SetDraining struct{}

// Config configures the health actor.
type Config struct {
	Addr         string // host:port to listen on
	Tree         *supervise.Tree
	RootPath     string        // the root actor's path in Tree
	ProbeTimeout time.Duration // bound on each probe
	// Faults enables POST /debug/faults, the test hook that panics or stalls
	// a named actor. Off unless CLAWKER_CP_DEBUG_FAULTS=1.
	Faults bool
	// Overseer answers GET /debug/state; nil leaves the route answering 503.
	Overseer *actor.PID
	Log      *zap.Logger
}

// New returns a producer of fresh health actors.
func New(cfg Config) actor.Producer {
	return func() actor.Actor { return &Actor{cfg: cfg, probes: map[string]Probe{}} }
}

// Actor owns the health listener and the probe set.
type Actor struct {
	cfg      Config
	srv      *http.Server
	ready    bool
	draining bool
	probes   map[string]Probe
}

// snapshot is the actor's answer to the HTTP handler.
type snapshot struct {
	ready, draining bool
	probes          []Probe
}

type getSnapshot struct{}

// Receive handles the actor's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		supervise.ReportReady(ctx, a.listen(ctx))
	case *actor.Stopping, *actor.Restarting:
		a.close()
	case *RegisterProbes:
		for _, p := range m.Probes {
			a.probes[p.Name] = p
		}
	case *SetReady:
		a.ready = true
	case *SetDraining:
		a.draining = true
	case *getSnapshot:
		s := snapshot{ready: a.ready, draining: a.draining}
		for _, p := range a.probes {
			s.probes = append(s.probes, p)
		}
		sort.Slice(s.probes, func(i, j int) bool { return s.probes[i].Name < s.probes[j].Name })
		ctx.Respond(&s)
	case *supervise.DrainStep:
		ctx.Respond(&supervise.StepDone{Step: m.Step, Outcome: supervise.OutcomeFailed, Detail: "health owns no drain step"})
	}
}

func (a *Actor) listen(ctx actor.Context) error {
	ln, err := net.Listen("tcp", a.cfg.Addr)
	if err != nil {
		return fmt.Errorf("health port: %w (is another control plane running? change control_plane.health_port)", err)
	}
	h := &handler{cfg: a.cfg, sys: ctx.ActorSystem(), self: ctx.Self()}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", h.healthz)
	mux.HandleFunc("GET /debug/actors", h.actors)
	mux.HandleFunc("GET /debug/state", h.state)
	if a.cfg.Faults {
		mux.HandleFunc("POST /debug/faults", h.faults)
	}
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	srv := a.srv
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.cfg.Log.Error("health listener failed", zap.String("event", "health_unavailable"), zap.Error(err))
		}
	}()
	a.cfg.Log.Info("health port listening", zap.String("event", "health_listening"), zap.String("addr", ln.Addr().String()))
	return nil
}

// close shuts the listener down; bounded so a stuck client cannot hold the
// actor (and with it the drain) hostage.
func (a *Actor) close() {
	if a.srv == nil {
		return
	}
	c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := a.srv.Shutdown(c); err != nil {
		_ = a.srv.Close()
	}
	a.srv = nil
}

// handler serves HTTP on net/http's goroutines. It reaches the actor's state
// only by asking it, and runs the probes itself, off the actor's mailbox.
type handler struct {
	cfg  Config
	sys  *actor.ActorSystem
	self *actor.PID
}

func writeJSON(w http.ResponseWriter, code int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func (h *handler) healthz(w http.ResponseWriter, r *http.Request) {
	res, err := h.sys.Root.RequestFuture(h.self, &getSnapshot{}, time.Second).Result()
	s, ok := res.(*snapshot)
	if err != nil || !ok {
		writeJSON(w, http.StatusServiceUnavailable, cpapi.Health{Status: cpapi.StatusUnhealthy, Failing: []string{"health"}})
		return
	}
	switch {
	case s.draining:
		writeJSON(w, http.StatusServiceUnavailable, cpapi.Health{Status: cpapi.StatusDraining})
		return
	case !s.ready:
		writeJSON(w, http.StatusServiceUnavailable, cpapi.Health{Status: cpapi.StatusNotReady})
		return
	}
	body := RunProbes(r.Context(), s.probes, h.cfg.ProbeTimeout)
	code := http.StatusOK
	if body.Status != cpapi.StatusOK {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, body)
}

// RunProbes runs every probe concurrently, each bounded by timeout, and
// returns the verdict in probe order.
func RunProbes(ctx context.Context, probes []Probe, timeout time.Duration) cpapi.Health {
	results := make([]cpapi.ProbeResult, len(probes))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			begin := time.Now()
			err := runOne(c, p)
			results[i] = cpapi.ProbeResult{Name: p.Name, OK: err == nil, LatencyMS: float64(time.Since(begin).Microseconds()) / 1000}
			if err != nil {
				results[i].Error = err.Error()
			}
		}()
	}
	wg.Wait()
	out := cpapi.Health{Status: cpapi.StatusOK, Probes: results}
	for _, r := range results {
		if !r.OK {
			out.Status = cpapi.StatusUnhealthy
			out.Failing = append(out.Failing, r.Name)
		}
	}
	return out
}

// runOne runs a probe and enforces the deadline even if Check ignores ctx.
func runOne(ctx context.Context, p Probe) (err error) {
	done := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("probe panicked: %v", r)
			}
		}()
		done <- p.Check(ctx)
	}()
	select {
	case err = <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("no answer: %w", ctx.Err())
	}
}

func (h *handler) actors(w http.ResponseWriter, _ *http.Request) {
	snap, ok := h.cfg.Tree.Snapshot(h.cfg.RootPath)
	if !ok {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "root actor is not running"})
		return
	}
	writeJSON(w, http.StatusOK, snap)
}

// stateTimeout bounds the overseer's answer to GET /debug/state.
const stateTimeout = time.Second

// state serves the overseer's worldview (a deep copy it hands out).
func (h *handler) state(w http.ResponseWriter, _ *http.Request) {
	if h.cfg.Overseer == nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "no overseer is wired to this health port"})
		return
	}
	res, err := h.sys.Root.RequestFuture(h.cfg.Overseer, &overseer.GetState{}, stateTimeout).Result()
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": fmt.Sprintf("the overseer did not answer within %s: %v", stateTimeout, err)})
		return
	}
	st, ok := res.(*overseer.State)
	if !ok {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": fmt.Sprintf("the overseer answered %T", res)})
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// faults injects a debug fault: POST /debug/faults?actor=<name or path>&kind=panic|block&duration=5s
func (h *handler) faults(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	name := q.Get("actor")
	pid, ok := h.cfg.Tree.Lookup(name)
	if !ok {
		pid, ok = h.cfg.Tree.Lookup(h.cfg.RootPath + "/" + name)
	}
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("actor: no live actor named %q", name)})
		return
	}
	f := &supervise.Fault{Kind: supervise.FaultKind(q.Get("kind"))}
	switch f.Kind {
	case supervise.FaultPanic:
	case supervise.FaultBlock:
		d, err := time.ParseDuration(q.Get("duration"))
		if err != nil || d <= 0 || d > time.Minute {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "duration: give a Go duration between 0 and 1m, e.g. 5s"})
			return
		}
		f.Duration = d
	default:
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "kind: use panic or block"})
		return
	}
	h.cfg.Log.Warn("debug fault injected", zap.String("event", "debug_fault"), zap.String("target", pid.Id), zap.String("kind", string(f.Kind)))
	h.sys.Root.Send(pid, f)
	writeJSON(w, http.StatusAccepted, map[string]string{"actor": pid.Id, "kind": string(f.Kind)})
}
