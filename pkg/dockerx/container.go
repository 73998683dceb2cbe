package dockerx

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
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
	if st := res.Container.State; st == nil || !st.Running {
		return nil, nil
	}
	return NetworkAddrs(res.Container.NetworkSettings), nil
}

// NetworkAddrs lists a container's address on each network of its
// inspect's NetworkSettings (nil: none).
func NetworkAddrs(ns *container.NetworkSettings) []netip.Addr {
	if ns == nil {
		return nil
	}
	var out []netip.Addr
	for _, ep := range ns.Networks {
		if ep != nil && ep.IPAddress.IsValid() {
			out = append(out, ep.IPAddress.Unmap())
		}
	}
	return out
}

// LazyClient returns a Docker client made on its first call (from the
// environment's DOCKER_HOST) and shared by every later one: for a part of
// the CP that needs a client of its own only once it has work.
func LazyClient() func() (*client.Client, error) {
	return sync.OnceValues(func() (*client.Client, error) { return New(Host(os.Getenv)) })
}
