// Package cp assembles the control plane: it builds the actor system, the
// root supervisor and its subsystem children from the settings, and runs
// them until the root's final exit. cmd/clawker-cp is a thin main around
// Run; tests call Run the same way.
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
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/moby/moby/client"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/auth"
	"github.com/clawker/clawker-cp/actors/dockerfeed"
	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/actors/firewall/dns"
	"github.com/clawker/clawker-cp/actors/firewall/stack"
	"github.com/clawker/clawker-cp/actors/grpc"
	"github.com/clawker/clawker-cp/actors/health"
	"github.com/clawker/clawker-cp/actors/netlogger"
	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/actors/registry"
	"github.com/clawker/clawker-cp/actors/request"
	"github.com/clawker/clawker-cp/actors/root"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/actors/watcher"
	"github.com/clawker/clawker-cp/pkg/denials"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/egressrules"
	"github.com/clawker/clawker-cp/pkg/logging"
	"github.com/clawker/clawker-cp/pkg/oauth"
	"github.com/clawker/clawker-cp/pkg/ory"
	"github.com/clawker/clawker-cp/pkg/settings"
	"github.com/clawker/clawker-cp/pkg/stackapi"
)

// Options are what Run needs from the outside world.
type Options struct {
	Settings settings.Settings
	Paths    settings.Paths
	Log      *zap.Logger
	// BindHost is the address the health port listens on: 127.0.0.1 on a
	// host, 0.0.0.0 inside the container (where Docker publishes it to the
	// host's loopback only). /debug/actors and /debug/state are served on
	// an internal listener on 127.0.0.1 (a port the kernel picks at start),
	// the upstream of Oathkeeper; the health port serves them too only when
	// BindHost is a loopback address (see package health).
	BindHost string
	// DebugFaults enables POST /debug/faults (tests only).
	DebugFaults bool
	// HoldReady delays the ready declaration (tests only).
	HoldReady time.Duration
	// PinDir is where the eBPF state is pinned; "" means
	// egress.DefaultPinDir. Tests give each CP its own.
	PinDir string
	// NoMount forbids mounting bpffs: set inside the container, where only
	// the host's bpffs bind-mounted at /sys/fs/bpf keeps pins alive.
	NoMount bool
	// HostProc is where the host's /proc is mounted in the CP's container
	// ("" on the host): the eBPF owner's cuts enter agents' network
	// namespaces through it.
	HostProc string
	// Network is the agents' network; "" means clawker-net.
	Network string
	// OryDir holds the hydra, kratos and oathkeeper binaries the auth
	// actor supervises; "" runs without them, and the AdminService then
	// refuses every method but the public one (fail closed).
	OryDir string
	// StackDir holds the firewall siblings' binaries (clawker-dns,
	// clawker-proxy): with the firewall enabled the CP builds their images
	// and runs them itself. "" adopts whatever answers at the stack's
	// addresses (a stack run by hand; the kernel-only tests).
	StackDir string
	// SiblingLabels are put on the sibling containers (tests remove by
	// them).
	SiblingLabels map[string]string
	// SystemClock is the clock the AdminService's GetSystemTime reports;
	// nil means time.Now. Tests skew it (CLAWKER_CP_DEBUG_CLOCK_SKEW).
	SystemClock func() time.Time
}

// DrainSteps is the ordered drain: each step and the child that owns it.
var DrainSteps = []root.Step{
	{Name: supervise.StepFirewallQueueClose, Target: "firewall"},
	{Name: supervise.StepGRPCStop, Target: "grpc"},
	{Name: supervise.StepBypassTimersCancel, Target: "firewall"},
	{Name: supervise.StepStackStop, Target: "firewall"},
	{Name: supervise.StepNetloggerStop, Target: "netlogger"},
	{Name: supervise.StepDNSGCStop, Target: "firewall"},
	{Name: supervise.StepEBPFFlush, Target: "ebpf"},
}

// stackWait bounds how long start-up waits for the firewall stack's members
// to answer: they are adopted, already running, not started by us.
const stackWait = 3 * time.Second

// livenessTimeout bounds how long an actor may take to answer Ping before
// its probe fails.
const livenessTimeout = time.Second

// Run starts the control plane and blocks until the root exits, returning the
// process exit code (see package root). Cancelling ctx (a signal) runs the
// ordered drain.
func Run(ctx context.Context, opts Options) int {
	inst, err := Start(opts)
	if err != nil {
		opts.Log.Error("cannot spawn the root supervisor", zap.String("event", "startup_failed"), zap.Error(err))
		return root.ExitStartupFailure
	}
	defer inst.System.Shutdown()
	select {
	case code := <-inst.Exit:
		return code
	case <-ctx.Done():
		inst.Drain("signal")
	}
	return <-inst.Exit
}

// Instance is a running control plane.
type Instance struct {
	System *actor.ActorSystem
	Tree   *supervise.Tree
	Root   *actor.PID
	// Exit delivers the exit code once, after the root's drain.
	Exit <-chan int
}

// PID returns the PID of the actor at path below the root, e.g.
// "grpc/sessions".
func (i *Instance) PID(path string) *actor.PID {
	return actor.NewPID(i.System.Address(), root.Name+"/"+path)
}

// Drain asks the root for the ordered drain (exit 0).
func (i *Instance) Drain(reason string) {
	i.System.Root.Send(i.Root, &root.Drain{Reason: reason, ExitCode: root.ExitClean})
}

// Start builds the actor tree and spawns the root; it returns at once. The
// caller waits on Instance.Exit and shuts the actor system down after.
func Start(opts Options) (*Instance, error) {
	log := opts.Log
	s := opts.Settings
	// The watcher's grace counts from here.
	started := time.Now()
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(logging.SlogHandler(log))
	}))
	tree := supervise.NewTree()
	in := supervise.Intensity{Max: s.ControlPlane.Supervisor.MaxRestarts, Window: s.ControlPlane.Supervisor.RestartWindow}
	stepTimeout := s.ControlPlane.Supervisor.DrainStepTimeout
	props := func(p actor.Producer) func() *actor.Props {
		return func() *actor.Props { return tree.Props(p, in) }
	}
	// Siblings find each other by PID; a PID id is the actor's path, fixed
	// by its name, and survives restarts.
	pidOf := func(name string) *actor.PID { return actor.NewPID(sys.Address(), root.Name+"/"+name) }
	bind := func(port int) string { return net.JoinHostPort(opts.BindHost, strconv.Itoa(port)) }
	pinDir := opts.PinDir
	if pinDir == "" {
		pinDir = egress.DefaultPinDir
	}
	agentNet := &networkInfo{name: opts.Network}
	if agentNet.name == "" {
		agentNet.name = dockerx.NetworkName
	}
	// The internal listener of /debug/actors and /debug/state, bound before
	// the tree starts so that Oathkeeper's rules can name its port.
	debug, err := health.ListenDebug(net.JoinHostPort(ory.LoopbackHost, "0"))
	if err != nil {
		sys.Shutdown()
		return nil, err
	}
	ports := ory.PortsFrom(s.ControlPlane)
	ports.Debug = debug.Port()
	// The AdminService asks Hydra (the auth child, admin API on loopback,
	// plain HTTP) about bearer tokens, and refuses non-public methods until
	// the whole tree is ready (handOver).
	var adminReady atomic.Bool
	oryRun, oryUser := oryIdentity(opts.Paths.CPDir)
	authCfg := auth.Config{
		Enable: opts.OryDir != "", Tree: tree, Intensity: in,
		BinDir: opts.OryDir, RunDir: oryRun, User: oryUser,
		BindHost: opts.BindHost, Ports: ports, ServerBundleDir: opts.Paths.CPAuthDir,
		Log: log.With(zap.String("actor", "auth")),
	}
	var introspector grpc.TokenIntrospector // nil: refuse (no Hydra to ask)
	if authCfg.Enable {
		in, err := oauth.NewIntrospector("http://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(s.ControlPlane.HydraAdminPort)), nil, "")
		if err != nil {
			_ = debug.Close()
			sys.Shutdown()
			return nil, err
		}
		introspector = in
	} else {
		log.Warn("no Ory binaries (--ory-dir): the AdminService refuses every method but GetSystemTime",
			zap.String("event", "auth_unavailable"))
	}
	stackCfg, err := stackConfig(opts, agentNet.name, func(ctx context.Context, _ string, answers []stackapi.Answer) error {
		d, err := dns.NewClient(sys, pidOf("firewall/dns"), 2*time.Second).ReportAnswers(ctx, answers)
		switch {
		case errors.Is(err, request.ErrWrongReply):
			return fmt.Errorf("the DNS owner answered: %w", err)
		case err != nil:
			return fmt.Errorf("the DNS owner did not answer: %w", err)
		}
		return d.Err
	})
	if err != nil {
		_ = debug.Close()
		sys.Shutdown()
		return nil, err
	}
	// The BPF events cost something per connect: on only when netlogger reads them.
	ebpfCfg := ebpf.Production(s.Firewall.Enable, pinDir, opts.NoMount, opts.HostProc, log.With(zap.String("actor", "ebpf")))
	ebpfCfg.Events, ebpfCfg.EventRate = s.Monitoring.OTLPEndpoint != "", uint32(s.Monitoring.EgressEventsPerSecond)
	hostName, _ := os.Hostname()
	reg := newMetrics(sys, pidOf, pinDir, log.With(zap.String("actor", "health")))
	children := []root.Child{
		{Name: "health", Props: props(health.New(health.Config{
			Addr:         bind(s.ControlPlane.HealthPort),
			Debug:        debug,
			Tree:         tree,
			RootPath:     root.Name,
			ProbeTimeout: 2 * time.Second,
			Faults:       opts.DebugFaults,
			Overseer:     pidOf("overseer"),
			Metrics:      reg.Handler(),
			Log:          log.With(zap.String("actor", "health")),
		}))},
		{Name: "overseer", Props: props(overseer.New())},
		{Name: "registry", Props: props(registry.New(registry.Config{
			Path: opts.Paths.RegistryDB, FlushInterval: s.ControlPlane.Sessions.LastSeenFlush, OpTimeout: 10 * time.Second,
			Log: log.With(zap.String("actor", "registry")),
		}))},
		{Name: "ebpf", Props: props(ebpf.New(ebpfCfg))},
		{Name: "firewall", Props: props(firewall.New(firewall.Config{
			Enable: s.Firewall.Enable, Tree: tree, Intensity: in, StepTimeout: stepTimeout,
			EBPF: pidOf("ebpf"), Overseer: pidOf("overseer"), Network: agentNet.resolve, ProxyPort: uint16(s.Firewall.ProxyPort),
			AgentPort: uint16(s.ControlPlane.AgentPort), HydraPublicPort: uint16(s.ControlPlane.HydraPublicPort), AgentToAgent: s.Firewall.AgentToAgent,
			StackWait: stackWait, OpTimeout: 5 * time.Second, Stack: stackCfg,
			RulesDir: opts.Paths.FirewallDir, PrivateDestinations: s.Firewall.PrivateDestinations, Publish: publishTo(stackCfg),
			Log: log.With(zap.String("actor", "firewall")),
		}))},
		{Name: "netlogger", Props: props(netlogger.New(netlogger.Config{
			Monitoring: s.Monitoring, AuthDir: opts.Paths.CPAuthDir, HostName: hostName,
			EBPF: pidOf("ebpf"), Overseer: pidOf("overseer"), DNS: pidOf("firewall/dns"), Firewall: pidOf("firewall"),
			CgroupOf: egress.ContainerCgroup, StepTimeout: stepTimeout,
			Log: log.With(zap.String("actor", "netlogger")),
		}))},
		// Docker is optional for both: unreachable, they log it, report
		// Ready and keep retrying. Each owns its own client.
		{Name: "dockerfeed", Props: props(dockerfeed.New(dockerfeed.Config{
			Overseer: pidOf("overseer"), Registry: pidOf("registry"),
			Log: log.With(zap.String("actor", "dockerfeed")),
		}))},
		{Name: "watcher", Props: props(watcher.New(watcher.Config{
			Enable: s.ControlPlane.Watcher.Enable, PollInterval: s.ControlPlane.Watcher.PollInterval,
			Grace: s.ControlPlane.Watcher.Grace, ZeroStreak: s.ControlPlane.Watcher.ZeroStreak,
			Started: started,
			Log:     log.With(zap.String("actor", "watcher")),
		}))},
		// auth before grpc: the AdminService serves only once Hydra,
		// which validates its tokens, is up.
		{Name: "auth", Props: props(auth.New(authCfg))},
		{Name: "grpc", Props: props(grpc.New(grpc.Config{
			Tree: tree, Intensity: in, BindHost: opts.BindHost,
			AgentPort: s.ControlPlane.AgentPort, AdminPort: s.ControlPlane.AdminPort, AuthDir: opts.Paths.CPAuthDir,
			Registry: pidOf("registry"), Overseer: pidOf("overseer"), Enforce: s.Firewall.Enable,
			Firewall: pidOf("firewall"), Now: opts.SystemClock,
			Heartbeat: s.ControlPlane.Sessions.Heartbeat, RequestTimeout: 5 * time.Second, StopTimeout: stepTimeout * 8 / 10,
			Introspector: introspector, AdminReady: adminReady.Load,
			ServerOptions: reg.GRPCServerOptions, ContainerAddrs: dockerContainerAddrs(),
			Log: log.With(zap.String("actor", "grpc")),
		}))},
	}

	// Probes of the subsystems' own ports and resources.
	resources := []health.Probe{
		{Name: "registry_db", Check: func(ctx context.Context) error {
			h, err := registry.NewClient(sys, pidOf("registry"), livenessTimeout).CheckHealth(ctx)
			if err != nil {
				return fmt.Errorf("registry did not answer: %w", err)
			}
			return h.Err
		}},
		portProbe("agent_port", s.ControlPlane.AgentPort),
		portProbe("admin_port", s.ControlPlane.AdminPort),
	}
	resources = append(resources, authCfg.Probes()...)
	if s.Firewall.Enable && stackCfg != nil {
		// The members check their siblings every second through their own
		// protocol; the probe reads what they last saw.
		resources = append(resources, health.Probe{Name: "firewall_stack", Check: func(ctx context.Context) error {
			var errs []error
			for _, m := range []string{"firewall/dns", "firewall/proxy"} {
				st, err := stack.NewClient(sys, pidOf(m), livenessTimeout).Status(ctx)
				switch {
				case errors.Is(err, request.ErrWrongReply):
					errs = append(errs, fmt.Errorf("%s: %w", m, err))
				case err != nil:
					errs = append(errs, fmt.Errorf("%s did not answer: %w", m, err))
				case !st.Healthy:
					msg := "not healthy"
					if st.Error != "" {
						msg = st.Error
					}
					errs = append(errs, fmt.Errorf("%s: %s", m, msg))
				}
			}
			return errors.Join(errs...)
		}})
	} else if s.Firewall.Enable {
		resources = append(resources, health.Probe{Name: "firewall_stack", Check: func(ctx context.Context) error {
			subnet, gw, err := agentNet.resolve(ctx)
			if err != nil {
				return err
			}
			members, err := firewall.Members(subnet, gw, uint16(s.Firewall.ProxyPort))
			if err != nil {
				return err
			}
			for _, m := range members {
				if err := stack.Check(ctx, m); err != nil {
					return err
				}
			}
			return nil
		}})
	}

	// handOver gives the health actor its probes: every subsystem's liveness
	// (its mailbox answers Ping in time) and the resource probes.
	handOver := func(c actor.Context, pids map[string]*actor.PID) {
		probes := append([]health.Probe(nil), resources...)
		for _, ch := range children {
			if ch.Name == "health" {
				continue
			}
			pid := pids[ch.Name]
			probes = append(probes, health.Probe{Name: ch.Name, Check: func(ctx context.Context) error {
				_, err := request.Ask[*supervise.Pong](ctx, request.Target{Sys: sys, PID: pid, Timeout: livenessTimeout}, &supervise.Ping{})
				if err != nil {
					return fmt.Errorf("actor %s did not answer a ping within %s: %w", pid.Id, livenessTimeout, err)
				}
				return nil
			}})
		}
		c.Send(pids["health"], &health.RegisterProbes{Probes: probes})
		c.Send(pids["health"], &health.SetReady{})
		adminReady.Store(true)
	}

	exit := make(chan int, 1)
	rootProps := tree.Props(root.New(root.Config{
		Log:          log,
		Tree:         tree,
		Intensity:    in,
		StartTimeout: s.ControlPlane.Supervisor.StartTimeout,
		StepTimeout:  stepTimeout,
		Children:     children,
		Steps:        DrainSteps,
		HoldReady:    opts.HoldReady,
		OnReady:      handOver,
		OnRestarted: func(c actor.Context, name string, pids map[string]*actor.PID) {
			switch name {
			case "health":
				handOver(c, pids)
			case "overseer":
				// It came back with an empty worldview: the feeder
				// republishes the containers it knows.
				c.Send(pids["dockerfeed"], &dockerfeed.Resync{})
			case "ebpf":
				// Its container-to-cgroup table starts empty (the pins
				// and enrollments were re-adopted): enforce the running
				// agents again.
				c.Send(pids["firewall"], &firewall.Reenforce{})
			}
		},
		OnDraining: func(c actor.Context, pids map[string]*actor.PID) {
			c.Send(pids["health"], &health.SetDraining{})
		},
		Exit: func(code int) {
			_ = debug.Close() // in case no health actor ever took it
			exit <- code
		},
	}), in)
	rootPID, err := sys.Root.SpawnNamed(rootProps, root.Name)
	if err != nil {
		_ = debug.Close()
		sys.Shutdown()
		return nil, err
	}
	return &Instance{System: sys, Tree: tree, Root: rootPID, Exit: exit}, nil
}

// portProbe checks that something accepts TCP connections on the port on
// loopback (where the CP's listeners are reachable in a container and on a
// host alike).
// networkInfo resolves the agent network's subnet and gateway through
// Docker once, then answers from memory: the network cannot change under a
// running control plane (its addresses are fixed in every enrollment).
type networkInfo struct {
	name   string
	mu     sync.Mutex
	subnet netip.Prefix
	gw     netip.Addr
}

func (n *networkInfo) resolve(ctx context.Context) (netip.Prefix, netip.Addr, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.subnet.IsValid() {
		return n.subnet, n.gw, nil
	}
	c, err := dockerx.New("")
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, err
	}
	defer c.Close()
	subnet, gw, err := dockerx.NetworkIPv4(ctx, c, n.name)
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, err
	}
	n.subnet, n.gw = subnet, gw
	return subnet, gw, nil
}

// dockerContainerAddrs looks a container's addresses up with a Docker
// client of its own, made on first use: the AgentService binds an agent's
// identity to them.
func dockerContainerAddrs() grpc.ContainerAddrs {
	newClient := sync.OnceValues(func() (*client.Client, error) { return dockerx.New(dockerx.Host(os.Getenv)) })
	return func(ctx context.Context, id string) ([]netip.Addr, error) {
		c, err := newClient()
		if err != nil {
			return nil, err
		}
		return dockerx.ContainerAddrs(ctx, c, id)
	}
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
			window.Add(denials.Record{Time: r.Time, Src: src, Where: where, Name: r.Name, Proto: r.Proto, Reason: r.Reason})
		}
	})
	return &firewall.StackConfig{
		BinDir: opts.StackDir, Docker: d, CA: ca, Denials: window,
		Server:      srv,
		NetworkName: network, HostProcess: isLoopback(opts.BindHost),
		Port: s.ControlPlane.StackPort, UpstreamDNS: s.Firewall.UpstreamDNS,
		Labels: opts.SiblingLabels, StartWait: 20 * time.Second,
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

func portProbe(name string, port int) health.Probe {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return health.Probe{Name: name, Check: func(ctx context.Context) error {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return conn.Close()
	}}
}
