// Package health is the actor behind the CP's plain-HTTP listeners.
//
// The health port (Config.Addr) serves GET /healthz (503 until ready, then
// every registered probe must pass), GET /metrics (Prometheus, pkg/metrics)
// and, when the fault knob is on and the port is bound to loopback, POST
// /debug/faults.
//
// GET /debug/actors (the live actor tree) and GET /debug/state (the
// overseer's worldview: every managed container and agent Session) are
// served on the internal debug listener (Config.Debug), bound to 127.0.0.1
// inside the CP. It is the upstream of Oathkeeper, which serves both paths
// on oathkeeper_port to bearer tokens with scope admin only.
//
// GET /healthz answers from the last probe run for ProbeCacheTTL (one run
// at a time, shared by every request meanwhile), so a burst of requests
// costs one round of probes, not one per request. A caller from outside
// loopback (in the container: an agent on clawker-net, and the host through
// Docker's port forward) gets the verdict and each probe's name, result and
// latency, but not its error text, which names internal addresses and
// files; a loopback caller gets the text too.
//
// Inside the container the health port listens on 0.0.0.0: Docker
// publishes it on the host's loopback, but the agents on clawker-net reach
// it too, so there it serves no /debug/actors or /debug/state, and never
// /debug/faults whatever the knob says (an agent must not be able to panic
// the CP's actors). When the
// health port itself is bound to a loopback address (a CP run as a host
// process: tests and development), no agent can reach it and it serves
// both paths as well, besides the internal listener.
package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/actors/request"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/debugknob"
)

// Probe checks one port or resource a subsystem depends on (declared in
// supervise, beside the specs that carry them).
type Probe = supervise.Probe

// RegisterProbes adds probes (a probe with an existing name replaces it).
type RegisterProbes struct{ Probes []Probe }

// SetReady opens /healthz: from now on its answer is the probes' verdict.
type SetReady struct{}

// SetDraining makes /healthz answer 503 "draining" for the rest of the
// process's life.
type SetDraining struct{}

// Config configures the health actor.
type Config struct {
	// Addr is the health port's host:port. When its host is a loopback
	// address, the health port serves /debug/actors and /debug/state too
	// (see the package comment).
	Addr string
	// Debug is the internal listener of /debug/actors and /debug/state
	// (Oathkeeper's upstream); nil serves them on no internal listener.
	Debug        *DebugListener
	Tree         *supervise.Tree
	RootPath     string        // the root actor's path in Tree
	ProbeTimeout time.Duration // bound on each probe
	// Faults enables POST /debug/faults, the test hook that panics or stalls
	// a named actor. Off unless CLAWKER_CP_DEBUG_FAULTS=1, and refused (one
	// warning, event debug_knob_refused) when Addr is not loopback.
	Faults bool
	// Overseer answers GET /debug/state; nil leaves the route answering 503.
	Overseer *actor.PID
	// Metrics serves GET /metrics (pkg/metrics); nil serves no such route.
	// Counts only, no names: the agents on clawker-net may read them.
	Metrics http.Handler
	// ProbeCacheTTL is how long one probe run answers /healthz; 0 means
	// DefaultProbeCacheTTL. A change of the probe set is seen at once.
	ProbeCacheTTL time.Duration
	// Clock reads the time for the probe cache; nil is time.Now.
	Clock func() time.Time
	Log   *zap.Logger
}

// DefaultProbeCacheTTL is Config.ProbeCacheTTL's default: short enough for
// the CLI's readiness poll, long enough that a flood of requests (an agent
// can reach the port) runs the probes about once a second.
const DefaultProbeCacheTTL = time.Second

// New returns a producer of fresh health actors.
func New(cfg Config) actor.Producer {
	// Shared by every incarnation: a restart binds the port again but must
	// not repeat the refusal warning.
	refused := &sync.Once{}
	return func() actor.Actor { return &Actor{cfg: cfg, probes: map[string]Probe{}, faultsRefused: refused} }
}

// Actor owns the health port, the internal debug listener and the probe
// set.
type Actor struct {
	cfg      Config
	srv      *http.Server // the health port
	debugSrv *http.Server // the internal debug listener
	ready    bool
	draining bool
	probes   map[string]Probe
	probeGen uint64 // bumped by every RegisterProbes: the cache's key
	// faultsRefused logs the refusal of the fault knob once per New.
	faultsRefused *sync.Once
}

// snapshot is the actor's answer to the HTTP handler.
type snapshot struct {
	ready, draining bool
	probes          []Probe
	probeGen        uint64
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
		a.probeGen++
	case *SetReady:
		a.ready = true
	case *SetDraining:
		a.draining = true
	case *getSnapshot:
		s := snapshot{ready: a.ready, draining: a.draining, probeGen: a.probeGen}
		for _, p := range a.probes {
			s.probes = append(s.probes, p)
		}
		sort.Slice(s.probes, func(i, j int) bool { return s.probes[i].Name < s.probes[j].Name })
		ctx.Respond(&s)
	}
}

func (a *Actor) listen(ctx actor.Context) error {
	ln, err := net.Listen("tcp", a.cfg.Addr)
	if err != nil {
		return fmt.Errorf("health port: %w (is another control plane running? change control_plane.health_port)", err)
	}
	h := newHandler(a.cfg, ctx.ActorSystem(), ctx.Self())
	debugHere := LoopbackOnly(a.cfg.Addr)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", h.healthz)
	if a.cfg.Metrics != nil {
		mux.Handle("GET /metrics", a.cfg.Metrics)
	}
	if debugHere {
		h.routeDebug(mux)
	}
	faultsHere := a.cfg.Faults && debugHere
	if faultsHere {
		mux.HandleFunc("POST /debug/faults", h.faults)
	} else if a.cfg.Faults {
		a.faultsRefused.Do(func() {
			a.cfg.Log.Warn("POST /debug/faults refused: the health port is reachable from outside the host (agents on clawker-net); "+
				"the fault hook is served only on a loopback-bound health port",
				zap.String("event", "debug_knob_refused"), zap.String("knob", debugknob.Faults.Name), zap.String("addr", a.cfg.Addr))
		})
	}
	var dln net.Listener
	if a.cfg.Debug != nil {
		if dln, err = a.cfg.Debug.listen(); err != nil {
			_ = ln.Close()
			return err
		}
	}
	a.srv = a.serve(ln, mux, "health listener failed")
	fields := []zap.Field{zap.String("event", "health_listening"), zap.String("addr", ln.Addr().String()),
		zap.Bool("debug_on_health_port", debugHere), zap.Bool("faults", faultsHere)}
	if dln != nil {
		dmux := http.NewServeMux()
		h.routeDebug(dmux)
		a.debugSrv = a.serve(dln, dmux, "debug listener failed")
		fields = append(fields, zap.String("debug_addr", dln.Addr().String()))
	}
	a.cfg.Log.Info("health port listening", fields...)
	return nil
}

// serve serves mux on ln until the returned server is shut down.
func (a *Actor) serve(ln net.Listener, mux *http.ServeMux, failed string) *http.Server {
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.cfg.Log.Error(failed, zap.String("event", "health_unavailable"), zap.Error(err))
		}
	}()
	return srv
}

// LoopbackOnly reports whether addr (host:port) listens on a loopback
// address only: 127.0.0.0/8, ::1 or localhost. An empty host, 0.0.0.0 or
// any other address is reachable from outside the host (in the container:
// from clawker-net).
func LoopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// DebugListener is the internal listener of /debug/actors and /debug/state.
// The control plane binds it before the actor tree starts, so its port is
// known when Oathkeeper's rules are written; the first health actor serves
// that listener, and a restarted one binds the same address again (the
// rules name it).
type DebugListener struct {
	addr string
	port int

	mu sync.Mutex
	ln net.Listener // bound, not served yet
}

// ListenDebug binds the internal debug listener on addr, which must be a
// loopback address; port 0 lets the kernel pick one (see Port).
func ListenDebug(addr string) (*DebugListener, error) {
	if !LoopbackOnly(addr) {
		return nil, fmt.Errorf("debug listener: %s is not a loopback address", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("debug listener: %w", err)
	}
	tcp := ln.Addr().(*net.TCPAddr)
	return &DebugListener{addr: net.JoinHostPort(tcp.IP.String(), strconv.Itoa(tcp.Port)), port: tcp.Port, ln: ln}, nil
}

// Addr is the listener's host:port.
func (d *DebugListener) Addr() string { return d.addr }

// Port is the listener's port.
func (d *DebugListener) Port() int { return d.port }

// listen hands out the listener bound by ListenDebug once, then binds Addr
// again.
func (d *DebugListener) listen() (net.Listener, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ln := d.ln; ln != nil {
		d.ln = nil
		return ln, nil
	}
	ln, err := net.Listen("tcp", d.addr)
	if err != nil {
		return nil, fmt.Errorf("debug listener: binding %s again: %w", d.addr, err)
	}
	return ln, nil
}

// Close releases the listener bound by ListenDebug if no health actor took
// it; one that did closes it when it stops.
func (d *DebugListener) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ln == nil {
		return nil
	}
	err := d.ln.Close()
	d.ln = nil
	return err
}

// close shuts the listeners down; bounded so a stuck client cannot hold the
// actor (and with it the drain) hostage.
func (a *Actor) close() {
	for _, srv := range []*http.Server{a.srv, a.debugSrv} {
		if srv == nil {
			continue
		}
		c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := srv.Shutdown(c); err != nil {
			_ = srv.Close()
		}
		cancel()
	}
	a.srv, a.debugSrv = nil, nil
}

// handler serves HTTP on net/http's goroutines. It reaches the actor's state
// only by asking it, and runs the probes itself, off the actor's mailbox.
type handler struct {
	cfg   Config
	sys   *actor.ActorSystem
	self  *actor.PID
	cache *probeCache
}

func newHandler(cfg Config, sys *actor.ActorSystem, self *actor.PID) *handler {
	c := &probeCache{ttl: cfg.ProbeCacheTTL, now: cfg.Clock}
	if c.ttl <= 0 {
		c.ttl = DefaultProbeCacheTTL
	}
	if c.now == nil {
		c.now = time.Now
	}
	return &handler{cfg: cfg, sys: sys, self: self, cache: c}
}

// probeCache holds the last probe run for ttl, keyed by the probe set's
// generation, and lets only one run happen at a time.
type probeCache struct {
	ttl time.Duration
	now func() time.Time

	mu       sync.Mutex
	have     bool
	gen      uint64
	at       time.Time
	body     cpapi.Health
	inflight chan struct{} // closed when the run in flight ends
}

// get returns a run of probes (generation gen) younger than ttl, running
// them if there is none. A request that finds a run in flight waits for
// it; ok is false only when ctx ended first.
func (c *probeCache) get(ctx context.Context, gen uint64, probes []Probe, timeout time.Duration) (body cpapi.Health, ok bool) {
	for {
		now := c.now()
		c.mu.Lock()
		if c.have && c.gen == gen && now.Sub(c.at) < c.ttl {
			body = c.body
			c.mu.Unlock()
			return body, true
		}
		if wait := c.inflight; wait != nil {
			c.mu.Unlock()
			select {
			case <-wait:
				continue // its run may be of another generation
			case <-ctx.Done():
				return cpapi.Health{}, false
			}
		}
		done := make(chan struct{})
		c.inflight = done
		c.mu.Unlock()
		// Not the request's context: the run answers every waiter, and
		// each probe is bounded by timeout anyway.
		body = RunProbes(context.Background(), probes, timeout)
		c.mu.Lock()
		c.have, c.gen, c.at, c.body, c.inflight = true, gen, c.now(), body, nil
		c.mu.Unlock()
		close(done)
		return body, true
	}
}

// fromLoopback reports whether the request came from a loopback address.
func fromLoopback(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

// withoutErrors is h for a caller outside loopback: each probe's error
// text is dropped (its name and result stay). h's slices are shared with
// the cache, so the probes are copied.
func withoutErrors(h cpapi.Health) cpapi.Health {
	probes := make([]cpapi.ProbeResult, len(h.Probes))
	for i, p := range h.Probes {
		p.Error = ""
		probes[i] = p
	}
	h.Probes = probes
	return h
}

// routeDebug adds GET /debug/actors and GET /debug/state to mux.
func (h *handler) routeDebug(mux *http.ServeMux) {
	mux.HandleFunc("GET /debug/actors", h.actors)
	mux.HandleFunc("GET /debug/state", h.state)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func (h *handler) healthz(w http.ResponseWriter, r *http.Request) {
	s, err := request.Ask[*snapshot](r.Context(), request.Target{Sys: h.sys, PID: h.self, Timeout: time.Second}, &getSnapshot{})
	if err != nil {
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
	body, ok := h.cache.get(r.Context(), s.probeGen, s.probes, h.cfg.ProbeTimeout)
	if !ok {
		return // the caller is gone
	}
	if !fromLoopback(r) {
		body = withoutErrors(body)
	}
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
			results[i] = cpapi.ProbeResult{Name: p.Name, OK: err == nil, LatencyMS: cpapi.Millis(time.Since(begin))}
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
func (h *handler) state(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Overseer == nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "no overseer is wired to this health port"})
		return
	}
	st, err := overseer.NewClient(h.sys, h.cfg.Overseer, stateTimeout).GetState(r.Context())
	switch {
	case errors.Is(err, request.ErrWrongReply):
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": fmt.Sprintf("the overseer answered: %v", err)})
		return
	case err != nil:
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": fmt.Sprintf("the overseer did not answer within %s: %v", stateTimeout, err)})
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
