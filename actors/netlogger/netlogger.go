// Package netlogger is the egress event log: it reads the eBPF programs'
// decision events off their ring buffer and ships each as an
// OpenTelemetry log record to the collector at monitoring.otlp_endpoint
// (pkg/netlog is the pipeline), with the firewall siblings' log lines
// beside them (siblinglogs.go). Its drain step, netlogger_stop, runs
// before ebpf_flush: it reads what is left in the ring, exports every
// record read and shuts the provider down, so no event dies with the maps.
//
// The actor never waits in Receive: the ring is read by the pipeline's own
// goroutine, exports run on the batch processor's, enrichment (who owns a
// cgroup, which allowed name an address was learned for) is gathered by
// an enricher goroutine asking the overseer, the eBPF owner, the DNS owner
// and the firewall, and the drain runs on a goroutine that answers the
// step itself. A collector that is down is logged once
// (event=netlogger_unavailable) and changes nothing else: enforcement does
// not depend on this actor at all.
package netlogger

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/actors/firewall/dns"
	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/actors/request"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/denials"
	"github.com/clawker/clawker-cp/pkg/netlog"
	"github.com/clawker/clawker-cp/pkg/settings"
)

// Config wires the netlogger.
type Config struct {
	Monitoring settings.Monitoring
	// AuthDir is the CP's server bundle, which holds the clawker-netlogger
	// client pair (pkg/certs).
	AuthDir  string
	HostName string
	// The actors enrichment asks; a nil PID is skipped.
	EBPF, Overseer, DNS, Firewall *actor.PID
	// CgroupOf resolves an agent container's cgroup when the eBPF owner
	// has not (yet) mapped it: after a CP restart its map is rebuilt
	// only as Docker's listing is replayed.
	CgroupOf func(containerID string) (path string, id uint64, err error)
	// OpenSource replaces asking the eBPF owner for the ring (tests).
	OpenSource func() (netlog.Source, error)
	// Tune adjusts the pipeline's config before it is built (tests).
	Tune func(*netlog.Config)
	// Denials is the firewall's window of recent refusals: the kernel's
	// go in too (refusals.go); nil without the firewall stack.
	Denials *denials.Window
	// Siblings are the stack containers whose log lines are followed
	// through Docker (siblinglogs.go) when a collector is set; none
	// without a stack of ours.
	Siblings []Sibling
	Docker   SiblingDocker
	Log      *zap.Logger
}

// GetStats asks for the counters; answered with *Stats.
type GetStats struct{}

// Stats answers GetStats. The counters are the CP's since start: a
// restarted netlogger (a new pipeline) adds to what the previous ones
// counted, so /metrics never sees a counter go back.
type Stats struct {
	Enabled bool
	netlog.Stats
}

// carried is what the pipelines of earlier incarnations counted. Records
// still in flight when one closed are counted Failed: they never left.
type carried struct {
	mu sync.Mutex
	netlog.Stats
}

func (c *carried) add(s netlog.Stats) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.Read += s.Read
	c.Lines += s.Lines
	c.Malformed += s.Malformed
	c.Emitted += s.Emitted
	c.Exported += s.Exported
	c.Failed += s.Failed + s.InFlight
	c.Dropped += s.Dropped
	c.DroppedDown += s.DroppedDown
}

// plus is the carried counts with the live pipeline's s on top.
func (c *carried) plus(s netlog.Stats) netlog.Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s.Read += c.Read
	s.Lines += c.Lines
	s.Malformed += c.Malformed
	s.Emitted += c.Emitted
	s.Exported += c.Exported
	s.Failed += c.Failed
	s.Dropped += c.Dropped
	s.DroppedDown += c.DroppedDown
	return s
}

// availability is the pipeline's report of a reachability change.
type availability struct {
	up     bool
	reason string
}

// sourceOpened carries the ring reader, opened off the mailbox.
type sourceOpened struct {
	src netlog.Source
	err error
}

// drained is the drain goroutine's report.
type drained struct{}

// Actor is the netlogger.
type Actor struct {
	cfg      Config
	carried  *carried
	pipe     *netlog.Pipeline
	enricher *enricher
	feed     *refusalFeed // the kernel's refusals into Config.Denials
	follow   *followers   // the siblings' logs
	pos      *positions   // shared by every incarnation
	endpoint string
	// down is whether the last report was "unavailable" (a first
	// success after start is logged too, as netlogger_connected).
	down, reported bool
	draining       bool
}

// New returns a producer of fresh netloggers.
func New(cfg Config) actor.Producer {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	c, pos := &carried{}, &positions{} // shared by every incarnation
	return func() actor.Actor { return &Actor{cfg: cfg, carried: c, pos: pos} }
}

var routeErrors sync.Once

// Receive handles the actor's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.start(ctx)
		supervise.ReportReady(ctx, nil)
	case *actor.Restarting, *actor.Stopping:
		// Bounded (the reader stops at once, the batch gets a second):
		// a restarted netlogger must not find the old reader still on the
		// ring, which would split its records between the two.
		a.stop()
	case *sourceOpened:
		a.opened(m)
	case *availability:
		a.availability(m)
	case *overseer.ContainerStarted, *overseer.ContainerStopped, *overseer.ContainerDestroyed, *overseer.ContainerRenamed:
		if a.enricher != nil {
			a.enricher.kick()
		}
		if st, ok := m.(*overseer.ContainerStarted); ok {
			a.follow.wake(st.Name)
		}
	case *GetStats:
		st := &Stats{Enabled: a.pipe != nil}
		var live netlog.Stats
		if a.pipe != nil {
			live = a.pipe.Stats()
		}
		st.Stats = a.carried.plus(live)
		ctx.Respond(st)
	case *drained:
		if a.pipe != nil {
			a.carried.add(a.pipe.Stats())
		}
		a.pipe = nil
	case *supervise.DrainStep:
		// Only netlogger_stop: the middleware answers any other step.
		a.drain(ctx, m)
	}
}

func (a *Actor) start(ctx actor.Context) {
	mon, log := a.cfg.Monitoring, a.cfg.Log
	a.feed = newRefusalFeed(a.cfg.Denials)
	if mon.OTLPEndpoint == "" {
		if a.feed != nil {
			// The programs emit the refusals alone (ebpf.Config.EventsDenied).
			log.Info("netlogger off: no monitoring.otlp_endpoint; the kernel's refusals are read for `clawker firewall denied` only",
				zap.String("event", "netlogger_off"))
			a.openSource(ctx)
			return
		}
		log.Info("netlogger off: no monitoring.otlp_endpoint, the programs emit no events", zap.String("event", "netlogger_off"))
		return
	}
	routeErrors.Do(func() {
		netlog.RouteOTelErrors(func(err error) {
			log.Debug("OpenTelemetry SDK error", zap.String("event", "netlogger_otel_error"), zap.Error(err))
		})
	})
	target, err := settings.ParseOTLPEndpoint(mon.OTLPEndpoint, mon.OTLPInsecure)
	if err == nil && target.Plaintext && !mon.OTLPInsecure {
		err = fmt.Errorf("monitoring.otlp_endpoint: %q is plaintext and monitoring.otlp_insecure is not set", mon.OTLPEndpoint)
	}
	pcfg := netlog.Config{Endpoint: target.HostPort, HostName: a.cfg.HostName, ParkFor: 500 * time.Millisecond}
	if err == nil && !target.Plaintext {
		pcfg.TLS, err = a.clientTLS()
	}
	if err != nil {
		// A configuration problem the operator fixes (auth rotate, a CA
		// file): said once, and the CP runs on without the log.
		log.Warn("netlogger unavailable: "+err.Error(), zap.String("event", "netlogger_unavailable"), zap.String("endpoint", mon.OTLPEndpoint), zap.Error(err))
		return
	}
	a.endpoint = target.HostPort
	sys, self := ctx.ActorSystem(), ctx.Self()
	a.enricher = newEnricher(sys, a.cfg)
	pcfg.Enrich = a.enricher.load
	pcfg.Refresh = a.enricher.kick
	if a.feed != nil {
		pcfg.OnEvent = a.feed.add
	}
	pcfg.Availability = func(up bool, reason string) { sys.Root.Send(self, &availability{up: up, reason: reason}) }
	if a.cfg.Tune != nil {
		a.cfg.Tune(&pcfg)
	}
	p, err := netlog.New(pcfg)
	if err != nil {
		log.Warn("netlogger unavailable: "+err.Error(), zap.String("event", "netlogger_unavailable"), zap.String("endpoint", mon.OTLPEndpoint), zap.Error(err))
		a.enricher.stop()
		a.enricher = nil
		return
	}
	a.pipe = p
	a.enricher.kick() // warm: agents enforced before we started
	if a.cfg.Overseer != nil {
		ctx.Send(a.cfg.Overseer, &overseer.Subscribe{Subscriber: self})
	}
	a.openSource(ctx)
	if a.cfg.Docker != nil && len(a.cfg.Siblings) > 0 {
		a.follow = startFollowers(a.cfg.Docker, a.cfg.Siblings, a.pos, p.EmitLine, log)
	}
	log.Info("netlogger started", zap.String("event", "netlogger_started"), zap.String("endpoint", a.endpoint), zap.Bool("tls", pcfg.TLS != nil))
}

func (a *Actor) clientTLS() (*tls.Config, error) {
	roots, err := settings.LoadOTLPCA(a.cfg.Monitoring.OTLPCA)
	if err != nil {
		return nil, fmt.Errorf("monitoring.otlp_ca: %w", err)
	}
	b, err := certs.LoadServerBundle(a.cfg.AuthDir)
	if err != nil {
		return nil, err
	}
	return b.NetloggerClientTLSConfig(roots, "")
}

// openSource gets the ring off the mailbox: from the eBPF owner by a
// future, or from the test hook on a goroutine.
func (a *Actor) openSource(ctx actor.Context) {
	if a.cfg.OpenSource != nil {
		sys, self := ctx.ActorSystem(), ctx.Self()
		go func() {
			src, err := a.cfg.OpenSource()
			sys.Root.Send(self, &sourceOpened{src: src, err: err})
		}()
		return
	}
	if a.cfg.EBPF == nil {
		return
	}
	request.Reenter(ctx, a.cfg.EBPF, &ebpf.OpenEvents{}, 5*time.Second, func(r *ebpf.EventsRing, err error) {
		switch {
		case errors.Is(err, request.ErrWrongReply):
			a.opened(&sourceOpened{err: fmt.Errorf("the eBPF owner answered: %w", err)})
			return
		case err != nil:
			a.opened(&sourceOpened{err: fmt.Errorf("the eBPF owner did not answer: %w", err)})
			return
		}
		if r.Err != nil {
			a.opened(&sourceOpened{err: r.Err})
			return
		}
		src, err := netlog.NewRingSource(r.Map)
		_ = r.Map.Close() // the reader holds its own reference
		a.opened(&sourceOpened{src: src, err: err})
	})
}

func (a *Actor) opened(m *sourceOpened) {
	log := a.cfg.Log
	switch {
	case errors.Is(m.err, ebpf.ErrNotLoaded):
		log.Info("netlogger has no events to read: no eBPF programs loaded (firewall.enable: false)", zap.String("event", "netlogger_no_ring"))
	case m.err != nil:
		log.Warn("netlogger cannot read the events ring", zap.String("event", "netlogger_no_ring"), zap.Error(m.err))
	case a.pipe == nil && a.feed != nil && a.cfg.Monitoring.OTLPEndpoint == "" && !a.draining:
		a.feed.read(m.src, log)
	case a.pipe == nil || a.draining:
		_ = m.src.Close()
	default:
		if err := a.pipe.Start(m.src); err != nil {
			_ = m.src.Close()
			log.Warn("netlogger cannot read the events ring", zap.String("event", "netlogger_no_ring"), zap.Error(err))
		}
	}
}

func (a *Actor) availability(m *availability) {
	log := a.cfg.Log
	switch {
	case !m.up && (!a.down || !a.reported):
		log.Warn("netlogger unavailable: "+m.reason+"; records are buffered up to a bound, then dropped and counted; enforcement is unaffected",
			zap.String("event", "netlogger_unavailable"), zap.String("endpoint", a.endpoint), zap.String("reason", m.reason))
	case m.up && a.down:
		log.Info("netlogger reaches the collector again", zap.String("event", "netlogger_available"), zap.String("endpoint", a.endpoint))
	case m.up && !a.reported:
		log.Info("netlogger connected to the collector", zap.String("event", "netlogger_connected"), zap.String("endpoint", a.endpoint))
	}
	a.down, a.reported = !m.up, true
}

func (a *Actor) drain(ctx actor.Context, m *supervise.DrainStep) {
	if a.pipe == nil && !a.draining && a.feed != nil && a.feed.stop != nil {
		a.draining = true
		a.feed.close()
		supervise.AnswerStep(ctx, m.Step, supervise.OutcomeDone, "netlogger off: stopped reading the kernel's refusals")
		return
	}
	if a.pipe == nil || a.draining {
		detail := "netlogger off: no monitoring.otlp_endpoint"
		if a.draining {
			detail = "already drained"
		} else if a.cfg.Monitoring.OTLPEndpoint != "" {
			detail = "netlogger unavailable since start: nothing was read"
		}
		supervise.AnswerStep(ctx, m.Step, supervise.OutcomeNothing, detail)
		return
	}
	a.draining = true
	p, e, fs, sender, sys, self := a.pipe, a.enricher, a.follow, ctx.Sender(), ctx.ActorSystem(), ctx.Self()
	a.follow = nil
	endpoint, bound := a.endpoint, m.Left()*8/10 // the rest for the answer's way back
	go func() {
		c, cancel := context.WithTimeout(context.Background(), bound)
		defer cancel()
		fs.stop() // no line after the provider's shutdown
		rep := p.Drain(c)
		if e != nil {
			e.stop()
		}
		outcome := supervise.OutcomeDone
		detail := fmt.Sprintf("read %d records from the ring, exported %d to %s", rep.Read, rep.Exported, endpoint)
		if rep.Lines > 0 {
			detail += fmt.Sprintf(" (with %d of the siblings' log lines)", rep.Lines)
		}
		if rep.Dropped > 0 || rep.Failed > 0 || rep.Malformed > 0 {
			detail += fmt.Sprintf("; lost %d (%d dropped at the buffer bound while the collector was away, %d failed export, %d malformed)",
				rep.Dropped+rep.Failed+rep.Malformed, rep.Dropped, rep.Failed, rep.Malformed)
		}
		if !rep.ReadAll {
			outcome = supervise.OutcomeFailed
			detail += "; the ring was still filling when the read's share of the bound ran out"
		}
		if rep.Err != nil || rep.InFlight > 0 {
			outcome = supervise.OutcomeFailed
			detail += fmt.Sprintf("; %d records not delivered: %v", rep.InFlight, rep.Err)
		}
		sys.Root.Send(self, &drained{})
		if sender != nil {
			sys.Root.Send(sender, &supervise.StepDone{Step: m.Step, Outcome: outcome, Detail: detail})
		}
	}()
}

func (a *Actor) stop() {
	if a.cfg.Monitoring.OTLPEndpoint == "" {
		a.feed.close() // its own reader: off the ring before a new one comes
	}
	a.follow.stop()
	a.follow = nil
	if a.pipe != nil && !a.draining {
		a.pipe.Close()
		a.carried.add(a.pipe.Stats())
	}
	a.pipe = nil
	if a.enricher != nil {
		a.enricher.stop()
		a.enricher = nil
	}
}

// enricher keeps the Snapshot the pipeline enriches with. It rebuilds on
// a kick (an unknown cgroup or address, a container event), at most every
// minInterval, asking the actors with short timeouts; an actor that does
// not answer leaves that part as it was.
type enricher struct {
	sys    *actor.ActorSystem
	cfg    Config
	snap   atomic.Pointer[netlog.Snapshot]
	kickCh chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

const (
	minInterval = 200 * time.Millisecond
	askTimeout  = time.Second
)

func newEnricher(sys *actor.ActorSystem, cfg Config) *enricher {
	ctx, cancel := context.WithCancel(context.Background())
	e := &enricher{sys: sys, cfg: cfg, kickCh: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	e.snap.Store(&netlog.Snapshot{})
	go e.run(ctx)
	return e
}

func (e *enricher) load() *netlog.Snapshot { return e.snap.Load() }

// kick asks for a rebuild; it never blocks (one pending kick is enough).
func (e *enricher) kick() {
	select {
	case e.kickCh <- struct{}{}:
	default:
	}
}

func (e *enricher) stop() {
	e.cancel()
	<-e.done
}

func (e *enricher) run(ctx context.Context) {
	defer close(e.done)
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.kickCh:
		}
		if d := minInterval - time.Since(last); d > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
		}
		last = time.Now()
		e.snap.Store(e.build(e.snap.Load()))
	}
}

// build gathers the facts; AsOf is taken first, so every fact older than
// it is in the snapshot.
func (e *enricher) build(prev *netlog.Snapshot) *netlog.Snapshot {
	s := &netlog.Snapshot{AsOf: time.Now(), Cgroups: map[uint64]netlog.Identity{}, Hosts: map[netip.Addr]string{}}
	// Asked at once: a build takes the slowest answer, not their sum.
	// A peer that is not wired or does not answer leaves its fact nil.
	var (
		st    *ebpf.State
		world *overseer.State
		ids   *dns.Identities
		rules *firewall.RulesResult
	)
	ctx := context.Background() // each ask is bounded by askTimeout
	var wg sync.WaitGroup
	for _, ask := range []func(){
		func() {
			st, _ = request.Ask[*ebpf.State](ctx, request.Target{Sys: e.sys, PID: e.cfg.EBPF, Timeout: askTimeout}, &ebpf.GetState{})
		},
		func() { world, _ = overseer.NewClient(e.sys, e.cfg.Overseer, askTimeout).GetState(ctx) },
		func() { ids, _ = dns.NewClient(e.sys, e.cfg.DNS, askTimeout).GetIdentities(ctx) },
		func() {
			rules, _ = firewall.NewClient(e.sys, e.cfg.Firewall, askTimeout).Rules(ctx, &firewall.ListRules{})
		},
	} {
		wg.Add(1)
		go func() { defer wg.Done(); ask() }()
	}
	wg.Wait()
	cgroupOf := map[string]uint64{}
	if st != nil {
		for _, ag := range st.Agents {
			cgroupOf[ag.ContainerID] = ag.Enrollment.CgroupID
		}
	}
	// Keep what an unanswered or partial query would lose: cgroup ids are
	// never reused, so an old entry is never wrong, only unused.
	for id, who := range prev.Cgroups {
		s.Cgroups[id] = who
	}
	if world != nil {
		for _, c := range world.Containers {
			id, ok := cgroupOf[c.ID]
			if !ok && e.cfg.CgroupOf != nil && c.Purpose == "agent" && c.State == "running" {
				if _, cg, err := e.cfg.CgroupOf(c.ID); err == nil {
					id, ok = cg, true
				}
			}
			if ok {
				s.Cgroups[id] = netlog.Identity{ContainerID: c.ID, Project: c.Project, Agent: c.Agent}
			}
		}
	}
	for c, id := range cgroupOf {
		if _, ok := s.Cgroups[id]; !ok {
			s.Cgroups[id] = netlog.Identity{ContainerID: c}
		}
	}
	if ids != nil && rules != nil {
		dst := make(map[uint32]string, len(rules.Rules))
		for _, r := range rules.Rules {
			dst[r.ID] = r.Dst
		}
		for ip, ent := range ids.Entries {
			// The kernel's id is the rule the programs route by.
			if d, ok := dst[ent.Kernel]; ok {
				s.Hosts[ip] = d
			}
		}
	} else {
		for ip, h := range prev.Hosts {
			s.Hosts[ip] = h
		}
	}
	return s
}
