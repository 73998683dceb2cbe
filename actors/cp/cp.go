// Package cp assembles the control plane: it builds the actor system, the
// root supervisor and its subsystem children from the settings, and runs
// them until the root's final exit. cmd/clawker-cp is a thin main around
// Run; tests call Run the same way.
//
// Each actor package says how it is spawned (its Spec: name, drain steps,
// probes, what it gives back to a restarted sibling); Start lists those
// specs in start order, and wiring.go turns the settings into each one's
// Config.
package cp

import (
	"context"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/auth"
	"github.com/clawker/clawker-cp/actors/dockerfeed"
	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/actors/grpc"
	"github.com/clawker/clawker-cp/actors/health"
	"github.com/clawker/clawker-cp/actors/netlogger"
	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/actors/registry"
	"github.com/clawker/clawker-cp/actors/root"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/actors/watcher"
	"github.com/clawker/clawker-cp/pkg/settings"
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
	return supervise.PIDOf(i.System, path)
}

// Drain asks the root for the ordered drain (exit 0).
func (i *Instance) Drain(reason string) {
	i.System.Root.Send(i.Root, &root.Drain{Reason: reason, ExitCode: root.ExitClean})
}

// Start builds the actor tree and spawns the root; it returns once the root
// runs, after reading the agent network from Docker when the firewall is on
// (networkWait at most). The caller waits on Instance.Exit and shuts the
// actor system down after.
func Start(opts Options) (*Instance, error) {
	w, err := newWiring(opts)
	if err != nil {
		return nil, err
	}
	// The start order: each child after whatever it sends to at start,
	// before whatever sends to it.
	children := []supervise.Spec{
		health.Spec(w.health()),
		overseer.Spec(),
		registry.Spec(w.registry()),
		ebpf.Spec(w.ebpf()),
		firewall.Spec(w.firewall()),
		netlogger.Spec(w.netlogger()),
		// Docker is optional for both: unreachable, they log it, report
		// Ready and keep retrying. Each owns its own client.
		dockerfeed.Spec(w.dockerfeed()),
		watcher.Spec(w.watcher()),
		// auth before grpc: the AdminService serves only once Hydra,
		// which validates its tokens, is up.
		auth.Spec(w.auth),
		grpc.Spec(w.grpc()),
	}
	return w.spawnRoot(children)
}
