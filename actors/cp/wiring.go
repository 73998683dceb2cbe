package cp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/auth"
	"github.com/clawker/clawker-cp/actors/dockerfeed"
	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/actors/firewall/dns"
	"github.com/clawker/clawker-cp/actors/grpc"
	"github.com/clawker/clawker-cp/actors/health"
	"github.com/clawker/clawker-cp/actors/netlogger"
	"github.com/clawker/clawker-cp/actors/registry"
	"github.com/clawker/clawker-cp/actors/request"
	"github.com/clawker/clawker-cp/actors/root"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/actors/watcher"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/denials"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/egressrules"
	"github.com/clawker/clawker-cp/pkg/logging"
	"github.com/clawker/clawker-cp/pkg/metrics"
	"github.com/clawker/clawker-cp/pkg/oauth"
	"github.com/clawker/clawker-cp/pkg/ory"
	"github.com/clawker/clawker-cp/pkg/settings"
	"github.com/clawker/clawker-cp/pkg/stackapi"
)

// stackWait bounds how long start-up waits for the firewall stack's members
// to answer: they are adopted, already running, not started by us.
const stackWait = 3 * time.Second

// networkWait bounds reading the agent network from Docker at start.
const networkWait = 10 * time.Second

// livenessTimeout bounds how long an actor may take to answer Ping before
// its probe fails.
const livenessTimeout = time.Second

// wiring is what the children's configurations are made of: the settings,
// the actor system and tree, and the few things built before any actor
// runs (the debug listener, the agent network, the stack service).
type wiring struct {
	opts    Options
	s       settings.Settings
	log     *zap.Logger
	started time.Time // the watcher's grace counts from here
	sys     *actor.ActorSystem
	tree    *supervise.Tree
	in      supervise.Intensity

	debug        *health.DebugListener
	agentNet     firewall.AgentNetwork
	auth         auth.Config
	introspector grpc.TokenIntrospector // nil: refuse (no Hydra to ask)
	stack        *firewall.StackConfig  // nil: no stack of ours
	// adminReady opens the AdminService's non-public methods once the
	// whole tree is ready.
	adminReady atomic.Bool
	metrics    *metrics.Registry // GET /metrics on the health port
}

func newWiring(opts Options) (_ *wiring, err error) {
	s := opts.Settings
	w := &wiring{
		opts: opts, s: s, log: opts.Log, started: time.Now(),
		tree: supervise.NewTree(),
		in:   supervise.Intensity{Max: s.ControlPlane.Supervisor.MaxRestarts, Window: s.ControlPlane.Supervisor.RestartWindow},
	}
	w.sys = actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(logging.SlogHandler(opts.Log))
	}))
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	// The internal listener of /debug/actors and /debug/state, bound before
	// the tree starts so that Oathkeeper's rules can name its port.
	if w.debug, err = health.ListenDebug(net.JoinHostPort(ory.LoopbackHost, "0")); err != nil {
		return nil, err
	}
	ports := ory.PortsFrom(s.ControlPlane)
	ports.Debug = w.debug.Port()
	oryRun, oryUser := oryIdentity(opts.Paths.CPDir)
	w.auth = auth.Config{
		Enable: opts.OryDir != "", Tree: w.tree, Intensity: w.in,
		BinDir: opts.OryDir, RunDir: oryRun, User: oryUser,
		BindHost: opts.BindHost, Ports: ports, ServerBundleDir: opts.Paths.CPAuthDir,
		Log: w.log.With(zap.String("actor", cpapi.ActorAuth)),
	}
	// The AdminService asks Hydra (the auth child, admin API on loopback,
	// plain HTTP) about bearer tokens.
	if w.auth.Enable {
		in, err := oauth.NewIntrospector("http://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(s.ControlPlane.HydraAdminPort)), nil, "")
		if err != nil {
			return nil, err
		}
		w.introspector = in
	} else {
		w.log.Warn("no Ory binaries (--ory-dir): the AdminService refuses every method but GetSystemTime",
			zap.String("event", "auth_unavailable"))
	}
	name := opts.Network
	if name == "" {
		name = dockerx.NetworkName
	}
	w.agentNet = firewall.AgentNetwork{Name: name}
	if s.Firewall.Enable {
		// Here, not in the firewall's Started: its mailbox must not wait on
		// Docker. A failure is the firewall's to report, with the fix.
		w.agentNet = firewall.ResolveNetwork(name, networkWait)
	}
	if w.stack, err = stackConfig(opts, name, w.answerSink); err != nil {
		return nil, err
	}
	w.metrics = newMetrics(w.sys, w.pid, w.pinDir(), w.logger(cpapi.ActorHealth))
	return w, nil
}

func (w *wiring) close() {
	if w.debug != nil {
		_ = w.debug.Close()
	}
	w.sys.Shutdown()
}

// answerSink hands the DNS sibling's answers to the DNS owner and waits
// until they are in the kernel.
func (w *wiring) answerSink(ctx context.Context, _ string, answers []stackapi.Answer) error {
	d, err := dns.NewClient(w.sys, w.pid(cpapi.ActorDNS), 2*time.Second).ReportAnswers(ctx, answers)
	switch {
	case errors.Is(err, request.ErrWrongReply):
		return fmt.Errorf("the DNS owner answered: %w", err)
	case err != nil:
		return fmt.Errorf("the DNS owner did not answer: %w", err)
	}
	return d.Err
}

func (w *wiring) pid(path string) *actor.PID { return supervise.PIDOf(w.sys, path) }

func (w *wiring) bind(port int) string {
	return net.JoinHostPort(w.opts.BindHost, strconv.Itoa(port))
}

func (w *wiring) logger(actor string) *zap.Logger { return w.log.With(zap.String("actor", actor)) }

func (w *wiring) stepTimeout() time.Duration { return w.s.ControlPlane.Supervisor.DrainStepTimeout }

func (w *wiring) health() health.Config {
	return health.Config{
		Addr:         w.bind(w.s.ControlPlane.HealthPort),
		Debug:        w.debug,
		Tree:         w.tree,
		RootPath:     root.Name,
		ProbeTimeout: 2 * time.Second,
		Faults:       w.opts.DebugFaults,
		Overseer:     w.pid(cpapi.ActorOverseer),
		Metrics:      w.metrics.Handler(),
		Log:          w.logger(cpapi.ActorHealth),
	}
}

func (w *wiring) registry() registry.Config {
	return registry.Config{
		Path: w.opts.Paths.RegistryDB, FlushInterval: w.s.ControlPlane.Sessions.LastSeenFlush, OpTimeout: 10 * time.Second,
		Log: w.logger(cpapi.ActorRegistry),
	}
}

func (w *wiring) pinDir() string {
	if w.opts.PinDir == "" {
		return egress.DefaultPinDir
	}
	return w.opts.PinDir
}

func (w *wiring) ebpf() ebpf.Config {
	c := ebpf.Production(w.s.Firewall.Enable, w.pinDir(), w.opts.NoMount, w.opts.HostProc, w.logger(cpapi.ActorEBPF))
	// The BPF events cost something per connect: on only when netlogger
	// reads them. Without a collector, the refusals alone, for `clawker
	// firewall denied` (the netlogger reads them into the stack's window).
	c.Events, c.EventRate = w.s.Monitoring.OTLPEndpoint != "", uint32(w.s.Monitoring.EgressEventsPerSecond)
	c.EventsDenied = !c.Events && w.stack != nil && w.stack.Denials != nil
	return c
}

func (w *wiring) firewall() firewall.Config {
	s := w.s
	return firewall.Config{
		Enable: s.Firewall.Enable, Tree: w.tree, Intensity: w.in,
		EBPF: w.pid(cpapi.ActorEBPF), Overseer: w.pid(cpapi.ActorOverseer), Network: w.agentNet, ProxyPort: uint16(s.Firewall.ProxyPort),
		AgentPort: uint16(s.ControlPlane.AgentPort), HydraPublicPort: uint16(s.ControlPlane.HydraPublicPort), AgentToAgent: s.Firewall.AgentToAgent,
		StackWait: stackWait, OpTimeout: 5 * time.Second, Stack: w.stack,
		RulesDir: w.opts.Paths.FirewallDir, PrivateDestinations: s.Firewall.PrivateDestinations, Publish: publishTo(w.stack),
		Log: w.logger(cpapi.ActorFirewall),
	}
}

func (w *wiring) netlogger() netlogger.Config {
	hostName, _ := os.Hostname()
	c := netlogger.Config{
		Monitoring: w.s.Monitoring, AuthDir: w.opts.Paths.CPAuthDir, HostName: hostName,
		EBPF: w.pid(cpapi.ActorEBPF), Overseer: w.pid(cpapi.ActorOverseer), DNS: w.pid(cpapi.ActorDNS), Firewall: w.pid(cpapi.ActorFirewall),
		CgroupOf: egress.ContainerCgroup, Denials: w.denials(),
		Log: w.logger(cpapi.ActorNetlogger),
	}
	if w.stack != nil && w.stack.Docker != nil {
		c.Docker, c.Siblings = w.stack.Docker, netlogger.StackSiblings(w.stack.NetworkName)
	}
	return c
}

// denials is the stack's window of recent refusals, or nil without one.
func (w *wiring) denials() *denials.Window {
	if w.stack == nil {
		return nil
	}
	return w.stack.Denials
}

func (w *wiring) dockerfeed() dockerfeed.Config {
	return dockerfeed.Config{
		Overseer: w.pid(cpapi.ActorOverseer), Registry: w.pid(cpapi.ActorRegistry),
		Log: w.logger(cpapi.ActorDockerfeed),
	}
}

func (w *wiring) watcher() watcher.Config {
	c := w.s.ControlPlane.Watcher
	return watcher.Config{
		Enable: c.Enable, PollInterval: c.PollInterval, Grace: c.Grace, ZeroStreak: c.ZeroStreak,
		Started: w.started,
		Log:     w.logger(cpapi.ActorWatcher),
	}
}

func (w *wiring) grpc() grpc.Config {
	s := w.s
	return grpc.Config{
		Tree: w.tree, Intensity: w.in, BindHost: w.opts.BindHost,
		AgentPort: s.ControlPlane.AgentPort, AdminPort: s.ControlPlane.AdminPort, AuthDir: w.opts.Paths.CPAuthDir,
		Registry: w.pid(cpapi.ActorRegistry), Overseer: w.pid(cpapi.ActorOverseer), Enforce: s.Firewall.Enable,
		Firewall: w.pid(cpapi.ActorFirewall), Now: w.opts.SystemClock,
		Heartbeat: s.ControlPlane.Sessions.Heartbeat, RequestTimeout: 5 * time.Second,
		Introspector: w.introspector, AdminReady: w.adminReady.Load,
		ServerOptions: w.metrics.GRPCServerOptions, ContainerAddrs: dockerContainerAddrs(),
		Log: w.logger(cpapi.ActorGRPC),
	}
}

// dockerContainerAddrs looks a container's addresses up with a Docker
// client of its own, made on first use: the AgentService binds an agent's
// identity to them.
func dockerContainerAddrs() grpc.ContainerAddrs {
	newClient := dockerx.LazyClient()
	return func(ctx context.Context, id string) ([]netip.Addr, error) {
		c, err := newClient()
		if err != nil {
			return nil, err
		}
		return dockerx.ContainerAddrs(ctx, c, id)
	}
}

// spawnRoot spawns the root over children. Once they are all ready the
// health actor gets every probe: each child's liveness (its mailbox answers
// Ping in time) and the resource probes of the specs; a restarted health
// actor gets them again.
func (w *wiring) spawnRoot(children []supervise.Spec) (*Instance, error) {
	var probes []health.Probe
	for _, c := range children {
		if c.Probes != nil {
			probes = append(probes, c.Probes(w.sys)...)
		}
	}
	for _, c := range children {
		if c.Name != cpapi.ActorHealth {
			probes = append(probes, w.liveness(c.Name))
		}
	}
	handOver := []any{&health.RegisterProbes{Probes: probes}, &health.SetReady{}}
	for i := range children {
		if children[i].Name == cpapi.ActorHealth {
			children[i].AfterRestart = map[string][]any{cpapi.ActorHealth: handOver}
		}
	}
	exit := make(chan int, 1)
	rootProps := w.tree.Props(root.New(root.Config{
		Log:          w.log,
		Tree:         w.tree,
		Intensity:    w.in,
		StartTimeout: w.s.ControlPlane.Supervisor.StartTimeout,
		StepTimeout:  w.stepTimeout(),
		Children:     children,
		Steps:        cpapi.DrainSteps,
		HoldReady:    w.opts.HoldReady,
		OnReady: func(c actor.Context, pids map[string]*actor.PID) {
			for _, m := range handOver {
				c.Send(pids[cpapi.ActorHealth], m)
			}
			w.adminReady.Store(true)
		},
		OnDraining: func(c actor.Context, pids map[string]*actor.PID) {
			c.Send(pids[cpapi.ActorHealth], &health.SetDraining{})
		},
		Exit: func(code int) {
			_ = w.debug.Close() // in case no health actor ever took it
			exit <- code
		},
	}), w.in)
	rootPID, err := w.sys.Root.SpawnNamed(rootProps, root.Name)
	if err != nil {
		w.close()
		return nil, err
	}
	return &Instance{System: w.sys, Tree: w.tree, Root: rootPID, Exit: exit}, nil
}

// liveness is the probe named after a child: its mailbox answers Ping
// within livenessTimeout.
func (w *wiring) liveness(name string) health.Probe {
	pid := w.pid(name)
	return health.Probe{Name: name, Check: func(ctx context.Context) error {
		if _, err := request.Ask[*supervise.Pong](ctx, request.Target{Sys: w.sys, PID: pid, Timeout: livenessTimeout}, &supervise.Ping{}); err != nil {
			return fmt.Errorf("actor %s did not answer a ping within %s: %w", pid.Id, livenessTimeout, err)
		}
		return nil
	}}
}

// stackConfig is the firewall's StackConfig: nil unless the firewall is
// enabled and the sibling binaries are at hand.
func stackConfig(opts Options, network string, sink stackapi.AnswerSink) (*firewall.StackConfig, error) {
	s := opts.Settings
	if !s.Firewall.Enable || opts.StackDir == "" {
		return nil, nil
	}
	for _, b := range []string{firewall.DNSBinary, firewall.ProxyBinary} {
		if _, err := os.Stat(filepath.Join(opts.StackDir, b)); err != nil {
			return nil, fmt.Errorf("firewall stack binaries (--stack-dir %s): %w", opts.StackDir, err)
		}
	}
	ca, err := stackapi.LoadOrCreateCA(filepath.Join(opts.Paths.CPDir, "stack"))
	if err != nil {
		return nil, err
	}
	d, err := dockerx.New("")
	if err != nil {
		return nil, err
	}
	upstreamCA, err := settings.UpstreamCAPEM(s.Firewall.UpstreamCA)
	if err != nil {
		return nil, fmt.Errorf("firewall.upstream_ca: %w", err)
	}
	srv := stackapi.NewServer(sink, stackapi.DNSClient, stackapi.ProxyClient)
	window := denials.New(denials.DefaultSize)
	srv.OnRefusals(func(from string, rs []stackapi.Refusal) {
		where := "proxy"
		if from == stackapi.DNSClient {
			where = "dns"
		}
		for _, r := range rs {
			src, err := netip.ParseAddr(r.Src)
			if err != nil {
				continue
			}
			w := where
			if from == stackapi.ProxyClient && r.Where == denials.WherePath {
				w = denials.WherePath // a request the path rules refused
			}
			window.Add(denials.Record{Time: r.Time, Src: src, Where: w, Name: r.Name, Proto: r.Proto, Reason: r.Reason,
				Method: r.Method, Path: r.Path, Allow: r.Allow})
		}
	})
	return &firewall.StackConfig{
		BinDir: opts.StackDir, Docker: d, CA: ca, Denials: window, UpstreamCA: upstreamCA,
		Server:      srv,
		NetworkName: network, HostProcess: isLoopback(opts.BindHost),
		Port: s.ControlPlane.StackPort, UpstreamDNS: s.Firewall.UpstreamDNS,
		Labels: opts.SiblingLabels, StartWait: 20 * time.Second,
		DNSQueryLog: s.Monitoring.OTLPEndpoint != "",
	}, nil
}

// publishTo hands every rule change to the stack service, from which the
// siblings fetch it; nil (no stack of ours) publishes nowhere.
func publishTo(sc *firewall.StackConfig) func(egressrules.Doc) {
	if sc == nil {
		return nil
	}
	return sc.Server.Publish
}

func isLoopback(host string) bool {
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}
