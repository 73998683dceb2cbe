package cpboot

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// Host octets of the fixed addresses on clawker-net: the gateway's last
// octet replaced by these.
const (
	ProxyHostOctet = 200 // egress proxy (Envoy)
	DNSHostOctet   = 201 // CoreDNS
	CPHostOctet    = 202 // the control plane
)

// netInfo is what cpboot needs to know about clawker-net.
type netInfo struct {
	ID      string
	Subnet  netip.Prefix
	Gateway netip.Addr
	CPIP    netip.Addr
}

// AddrWithLastOctet replaces the last octet of the IPv4 address gw.
func AddrWithLastOctet(gw netip.Addr, octet byte) (netip.Addr, error) {
	if !gw.Is4() {
		return netip.Addr{}, fmt.Errorf("gateway %s is not an IPv4 address", gw)
	}
	b := gw.As4()
	b[3] = octet
	return netip.AddrFrom4(b), nil
}

// cpAddress is the control plane's static address on a network: the
// gateway with its last octet replaced by 202. The subnet must hold it as
// an ordinary host address.
func cpAddress(subnet netip.Prefix, gw netip.Addr) (netip.Addr, error) {
	ip, err := AddrWithLastOctet(gw, CPHostOctet)
	if err != nil {
		return netip.Addr{}, err
	}
	subnet = subnet.Masked()
	if !subnet.IsValid() || !subnet.Addr().Is4() {
		return netip.Addr{}, fmt.Errorf("subnet %s is not an IPv4 subnet", subnet)
	}
	if !subnet.Contains(ip) || ip == subnet.Addr() || ip == lastAddr(subnet) || ip == gw {
		return netip.Addr{}, fmt.Errorf("subnet %s (gateway %s) cannot hold the control plane's address %s "+
			"(the gateway's last octet replaced by %d); remove the network (docker network rm %s) so clawker recreates it, "+
			"or give it a subnet of /24 or larger", subnet, gw, ip, CPHostOctet, NetworkName)
	}
	return ip, nil
}

// lastAddr is the broadcast address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= (uint32(1) << (32 - p.Bits())) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// dynamicRange is the half of subnet that does not hold reserved: the range
// Docker hands addresses out of, so that no container started later can take
// the fixed addresses (.200 to .202) while their owner is down. ok is false
// when the subnet is too small to split usefully.
func dynamicRange(subnet netip.Prefix, reserved netip.Addr) (r netip.Prefix, ok bool) {
	subnet = subnet.Masked()
	if !subnet.Addr().Is4() || subnet.Bits() > 24 {
		// A /25 or smaller: halving leaves too few addresses for agents.
		return netip.Prefix{}, false
	}
	lo := netip.PrefixFrom(subnet.Addr(), subnet.Bits()+1)
	hiAddr := subnet.Addr().As4()
	bit := subnet.Bits() // index of the first host bit
	hiAddr[bit/8] |= 0x80 >> (bit % 8)
	hi := netip.PrefixFrom(netip.AddrFrom4(hiAddr), subnet.Bits()+1)
	if lo.Contains(reserved) {
		return hi, true
	}
	return lo, true
}

// ensureNetwork returns the network called name, creating it when missing.
//
// Docker only accepts a static container address on a network whose subnet
// was configured by its creator ("user specified IP address is supported
// only when connecting to networks with user configured subnets"). To still
// let Docker choose a subnet that collides with nothing (its address pools
// know the host's routes and the other networks), a short-lived probe network
// is created without one, its subnet read back, the probe removed, and the
// real network created with that subnet spelled out.
func ensureNetwork(ctx context.Context, d Docker, name string, labels map[string]string) (netInfo, error) {
	info, err := inspectNetwork(ctx, d, name)
	if err == nil {
		return info, nil
	}
	if !isNotFound(err) {
		return netInfo{}, err
	}
	subnet, gw, err := probeSubnet(ctx, d, name, labels)
	if err != nil {
		return netInfo{}, err
	}
	cpIP, err := cpAddress(subnet, gw)
	if err != nil {
		return netInfo{}, err
	}
	r, ok := dynamicRange(subnet, cpIP)
	if !ok {
		// Without a dynamic range Docker could give the fixed addresses to
		// any container; inspectNetwork would refuse the result anyway.
		return netInfo{}, fmt.Errorf("creating network %s: the subnet %s Docker offered is too small to keep .%d-.%d "+
			"outside its dynamic range; give Docker address pools of /24 or larger (default-address-pools in daemon.json)",
			name, subnet, ProxyHostOctet, CPHostOctet)
	}
	cfg := network.IPAMConfig{Subnet: subnet, Gateway: gw, IPRange: r}
	_, err = bounded(ctx, callTimeout, func(ctx context.Context) (client.NetworkCreateResult, error) {
		return d.NetworkCreate(ctx, name, client.NetworkCreateOptions{
			Driver: "bridge",
			IPAM:   &network.IPAM{Driver: "default", Config: []network.IPAMConfig{cfg}},
			Labels: labels,
		})
	})
	if err != nil && !isConflict(err) {
		return netInfo{}, fmt.Errorf("creating network %s (subnet %s): %w", name, subnet, err)
	}
	// Created, or created by someone else in the meantime: read it back.
	return inspectNetwork(ctx, d, name)
}

func inspectNetwork(ctx context.Context, d Docker, name string) (netInfo, error) {
	res, err := bounded(ctx, callTimeout, func(ctx context.Context) (client.NetworkInspectResult, error) {
		return d.NetworkInspect(ctx, name, client.NetworkInspectOptions{})
	})
	if err != nil {
		if isNotFound(err) {
			return netInfo{}, err
		}
		return netInfo{}, fmt.Errorf("inspecting network %s: %w", name, err)
	}
	n := res.Network
	// The probe below relies on finding the name exactly: Docker's
	// inspect also matches an ID prefix.
	if n.Name != name {
		return netInfo{}, fmt.Errorf("inspecting network %s: found %q instead", name, n.Name)
	}
	subnet, gw, ok := dockerx.IPv4Config(n.IPAM.Config)
	if !ok {
		return netInfo{}, fmt.Errorf("network %s has no IPv4 subnet with a gateway (IPAM %+v); remove it (docker network rm %s) so clawker recreates it", name, n.IPAM.Config, name)
	}
	ip, err := cpAddress(subnet, gw)
	if err != nil {
		return netInfo{}, err
	}
	if err := checkFixedOutsideRange(n, subnet, gw); err != nil {
		return netInfo{}, err
	}
	return netInfo{ID: n.ID, Subnet: subnet, Gateway: gw, CPIP: ip}, nil
}

// checkFixedOutsideRange refuses a network whose dynamic allocation range
// (IPAM IPRange) holds one of the fixed addresses (.200 to .202): Docker
// could give it to another container while its owner is down, and that
// container would then receive the agents' proxy, DNS or control plane
// traffic. No IPRange means the whole subnet is allocatable. The network
// clawker creates passes; one made by hand or by an older clawker may not.
func checkFixedOutsideRange(n network.Inspect, subnet netip.Prefix, gw netip.Addr) error {
	var r netip.Prefix
	for _, c := range n.IPAM.Config {
		if c.Subnet.Masked() == subnet.Masked() {
			r = c.IPRange
			break
		}
	}
	var held []netip.Addr
	for _, octet := range []byte{ProxyHostOctet, DNSHostOctet, CPHostOctet} {
		ip, err := AddrWithLastOctet(gw, octet)
		if err != nil {
			return err
		}
		if !r.IsValid() || r.Contains(ip) {
			held = append(held, ip)
		}
	}
	if len(held) == 0 {
		return nil
	}
	why := fmt.Sprintf("its ip-range %s holds %s", r, joinAddrs(held))
	if !r.IsValid() {
		why = fmt.Sprintf("it has no ip-range, so the whole subnet %s is allocatable", subnet)
	}
	fix := fmt.Sprintf("remove it (`docker network rm %s`) so clawker recreates it with a safe range", n.Name)
	if len(n.Containers) > 0 {
		var names []string
		for _, e := range n.Containers {
			names = append(names, e.Name)
		}
		slices.Sort(names)
		fix += fmt.Sprintf(" (first stop and remove the containers using it: %s)", strings.Join(names, ", "))
	}
	fix += ", or recreate it with an ip-range that leaves them free"
	a, _ := AddrWithLastOctet(gw, ProxyHostOctet)
	c, _ := AddrWithLastOctet(gw, CPHostOctet)
	// The range clawker itself would give it: the half without .200-.202.
	if safe, ok := dynamicRange(subnet, c); ok {
		fix += fmt.Sprintf(" (`docker network create --subnet %s --gateway %s --ip-range %s %s`)", subnet.Masked(), gw, safe, n.Name)
	}
	return fmt.Errorf("network %s cannot be adopted: Docker may give its fixed addresses %s-%s (proxy, DNS, control plane) "+
		"to other containers: %s; %s", n.Name, a, c, why, fix)
}

func joinAddrs(ips []netip.Addr) string {
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
	}
	return strings.Join(s, ", ")
}

// probeSubnet lets Docker pick a free subnet for a bridge network and
// returns it with the gateway Docker would give it.
func probeSubnet(ctx context.Context, d Docker, name string, labels map[string]string) (netip.Prefix, netip.Addr, error) {
	probe := name + "-probe-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano()%1e6, 10)
	res, err := bounded(ctx, callTimeout, func(ctx context.Context) (client.NetworkCreateResult, error) {
		return d.NetworkCreate(ctx, probe, client.NetworkCreateOptions{Driver: "bridge", Labels: labels})
	})
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("asking Docker for a free subnet (creating probe network %s): %w", probe, err)
	}
	defer func() {
		// Removed even when the caller's context is done: a leaked probe
		// would hold its subnet.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), callTimeout)
		defer cancel()
		_, _ = d.NetworkRemove(rctx, res.ID, client.NetworkRemoveOptions{})
	}()
	info, err := bounded(ctx, callTimeout, func(ctx context.Context) (client.NetworkInspectResult, error) {
		return d.NetworkInspect(ctx, res.ID, client.NetworkInspectOptions{})
	})
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("inspecting probe network %s: %w", probe, err)
	}
	subnet, gw, ok := dockerx.IPv4Config(info.Network.IPAM.Config)
	if !ok {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("docker gave probe network %s no IPv4 subnet (IPAM %+v)", probe, info.Network.IPAM.Config)
	}
	return subnet.Masked(), gw, nil
}
