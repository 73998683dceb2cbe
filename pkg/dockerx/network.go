package dockerx

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
)

// NetworkName is the agents' network, shared with the control plane and
// the firewall stack.
const NetworkName = "clawker-net"

// IPv4Config returns the first IPv4 subnet with a gateway among cfgs.
func IPv4Config(cfgs []network.IPAMConfig) (netip.Prefix, netip.Addr, bool) {
	for _, c := range cfgs {
		if c.Subnet.IsValid() && c.Subnet.Addr().Is4() && c.Gateway.Is4() {
			return c.Subnet, c.Gateway, true
		}
	}
	return netip.Prefix{}, netip.Addr{}, false
}

// NetworkInspector is the part of the client NetworkIPv4 uses.
type NetworkInspector interface {
	NetworkInspect(ctx context.Context, name string, opts client.NetworkInspectOptions) (client.NetworkInspectResult, error)
}

// NetworkIPv4 reads the IPv4 subnet and gateway of the network called name.
func NetworkIPv4(ctx context.Context, d NetworkInspector, name string) (netip.Prefix, netip.Addr, error) {
	res, err := Call(ctx, 10*time.Second, func(ctx context.Context) (client.NetworkInspectResult, error) {
		return d.NetworkInspect(ctx, name, client.NetworkInspectOptions{})
	})
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("inspecting network %s: %w", name, err)
	}
	if res.Network.Name != name { // inspect also matches an id prefix
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("inspecting network %s: found %q instead", name, res.Network.Name)
	}
	subnet, gw, ok := IPv4Config(res.Network.IPAM.Config)
	if !ok {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("network %s has no IPv4 subnet with a gateway", name)
	}
	return subnet.Masked(), gw, nil
}
