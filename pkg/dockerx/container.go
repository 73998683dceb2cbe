package dockerx

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
)

// ErrNoSuchContainer is ContainerAddrs' answer for a container the daemon
// does not know.
var ErrNoSuchContainer = errors.New("no such container")

// ContainerInspector is the part of the client ContainerAddrs uses.
type ContainerInspector interface {
	ContainerInspect(ctx context.Context, id string, opts client.ContainerInspectOptions) (client.ContainerInspectResult, error)
}

// ContainerAddrs returns the addresses of a running container on every
// network it is attached to (none when it is not running).
func ContainerAddrs(ctx context.Context, d ContainerInspector, id string) ([]netip.Addr, error) {
	res, err := Call(ctx, 10*time.Second, func(ctx context.Context) (client.ContainerInspectResult, error) {
		return d.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	})
	if cerrdefs.IsNotFound(err) {
		return nil, fmt.Errorf("container %.12s: %w", id, ErrNoSuchContainer)
	}
	if err != nil {
		return nil, fmt.Errorf("inspecting container %.12s: %w", id, err)
	}
	var out []netip.Addr
	if st := res.Container.State; st == nil || !st.Running {
		return nil, nil
	}
	if ns := res.Container.NetworkSettings; ns != nil {
		for _, ep := range ns.Networks {
			if ep != nil && ep.IPAddress.IsValid() {
				out = append(out, ep.IPAddress.Unmap())
			}
		}
	}
	return out, nil
}
