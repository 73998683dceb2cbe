package grpc

import (
	"context"
	"net"
	"strconv"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// Spec is how the root spawns the gRPC actor; it owns grpc_stop. Its probes
// agent_port and admin_port check that each port accepts connections.
func Spec(cfg Config) supervise.Spec {
	return supervise.Spec{
		Name: cpapi.ActorGRPC, Producer: New(cfg), Steps: cpapi.StepsOwnedBy(cpapi.ActorGRPC),
		Probes: func(*actor.ActorSystem) []supervise.Probe {
			return []supervise.Probe{portProbe("agent_port", cfg.AgentPort), portProbe("admin_port", cfg.AdminPort)}
		},
	}
}

// portProbe checks that something accepts TCP connections on the port on
// loopback (where the CP's listeners are reachable in a container and on a
// host alike).
func portProbe(name string, port int) supervise.Probe {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return supervise.Probe{Name: name, Check: func(ctx context.Context) error {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return conn.Close()
	}}
}
