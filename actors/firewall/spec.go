package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/firewall/stack"
	"github.com/clawker/clawker-cp/actors/request"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// AgentNetwork is the agents' Docker network as the firewall enforces it.
// It cannot change under a running control plane (its addresses are fixed
// in every enrollment), so it is read once.
type AgentNetwork struct {
	Name    string
	Subnet  netip.Prefix
	Gateway netip.Addr
	// Err says why the network could not be read; the firewall (enabled)
	// then fails its start with the fix.
	Err error
}

// ResolveNetwork reads the subnet and gateway of the network called name
// from Docker, within timeout. It runs where the tree is built, before the
// firewall starts, so that no actor's Started waits on Docker.
func ResolveNetwork(name string, timeout time.Duration) AgentNetwork {
	n := AgentNetwork{Name: name}
	c, err := dockerx.New("")
	if err != nil {
		n.Err = err
		return n
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	n.Subnet, n.Gateway, n.Err = dockerx.NetworkIPv4(ctx, c, name)
	return n
}

// probeTimeout bounds each member's answer to the firewall_stack probe.
const probeTimeout = time.Second

// Spec is how the root spawns the firewall; it owns four drain steps and
// carries out two of them with its children. When the eBPF owner is back
// from a restart (its container-to-cgroup table empty), the firewall
// enforces the running agents again. With Enable, its probe firewall_stack
// checks the stack's two members.
func Spec(cfg Config) supervise.Spec {
	s := supervise.Spec{
		Name: cpapi.ActorFirewall, Producer: New(cfg), Steps: cpapi.StepsOwnedBy(cpapi.ActorFirewall),
		AfterRestart: map[string][]any{cpapi.ActorEBPF: {&Reenforce{}}},
	}
	if cfg.Enable {
		s.Probes = func(sys *actor.ActorSystem) []supervise.Probe {
			return []supervise.Probe{{Name: "firewall_stack", Check: stackProbe(sys, cfg)}}
		}
	}
	return s
}

// stackProbe checks both members of the stack: those the CP runs by asking
// their owners what their last health check (every second) saw, adopted
// ones by checking them directly.
func stackProbe(sys *actor.ActorSystem, cfg Config) func(context.Context) error {
	if cfg.Stack != nil {
		return func(ctx context.Context) error {
			var errs []error
			for _, m := range []string{cpapi.ActorDNS, cpapi.ActorProxy} {
				st, err := stack.NewClient(sys, supervise.PIDOf(sys, m), probeTimeout).Status(ctx)
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
		}
	}
	return func(ctx context.Context) error {
		if cfg.Network.Err != nil {
			return cfg.Network.Err
		}
		members, err := Members(cfg.Network.Subnet, cfg.Network.Gateway, cfg.ProxyPort)
		if err != nil {
			return err
		}
		for _, m := range members {
			if err := stack.Check(ctx, m); err != nil {
				return err
			}
		}
		return nil
	}
}
