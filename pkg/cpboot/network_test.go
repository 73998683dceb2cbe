package cpboot

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
)

// netDocker is a daemon holding networks by name; a network created without
// IPAM gets probeSubnet (Docker's own pick). Other calls panic (nil
// embedded interface).
type netDocker struct {
	Docker
	nets        map[string]network.Inspect
	probeSubnet netip.Prefix
	creates     []client.NetworkCreateOptions
	removed     []string
}

func (d *netDocker) NetworkInspect(_ context.Context, name string, _ client.NetworkInspectOptions) (client.NetworkInspectResult, error) {
	for _, n := range d.nets {
		if n.Name == name || n.ID == name {
			return client.NetworkInspectResult{Network: n}, nil
		}
	}
	return client.NetworkInspectResult{}, cerrdefs.ErrNotFound.WithMessage("network " + name + " not found")
}

func (d *netDocker) NetworkCreate(_ context.Context, name string, o client.NetworkCreateOptions) (client.NetworkCreateResult, error) {
	if _, ok := d.nets[name]; ok {
		return client.NetworkCreateResult{}, cerrdefs.ErrConflict.WithMessage("network with name " + name + " already exists")
	}
	d.creates = append(d.creates, o)
	var cfg []network.IPAMConfig
	if o.IPAM != nil {
		cfg = o.IPAM.Config
	} else {
		gw := d.probeSubnet.Addr().Next()
		cfg = []network.IPAMConfig{{Subnet: d.probeSubnet, Gateway: gw}}
	}
	n := network.Inspect{Network: network.Network{Name: name, ID: "id-" + name, IPAM: network.IPAM{Driver: "default", Config: cfg}}}
	d.nets[name] = n
	return client.NetworkCreateResult{ID: n.ID}, nil
}

func (d *netDocker) NetworkRemove(_ context.Context, id string, _ client.NetworkRemoveOptions) (client.NetworkRemoveResult, error) {
	for name, n := range d.nets {
		if n.ID == id || name == id {
			delete(d.nets, name)
			d.removed = append(d.removed, name)
			return client.NetworkRemoveResult{}, nil
		}
	}
	return client.NetworkRemoveResult{}, cerrdefs.ErrNotFound.WithMessage("network " + id + " not found")
}

// existingNet is a daemon that already has clawker-net on 172.30.0.0/16
// with the given ip-range (none when r is empty) and attached containers.
func existingNet(r string, containers ...string) *netDocker {
	cfg := network.IPAMConfig{Subnet: netip.MustParsePrefix("172.30.0.0/16"), Gateway: netip.MustParseAddr("172.30.0.1")}
	if r != "" {
		cfg.IPRange = netip.MustParsePrefix(r)
	}
	n := network.Inspect{
		Network:    network.Network{Name: NetworkName, ID: "id-existing", IPAM: network.IPAM{Config: []network.IPAMConfig{cfg}}},
		Containers: map[string]network.EndpointResource{},
	}
	for i, c := range containers {
		n.Containers[strings.Repeat(string(rune('a'+i)), 12)] = network.EndpointResource{Name: c}
	}
	return &netDocker{nets: map[string]network.Inspect{NetworkName: n}}
}

// A network clawker creates has .200-.202 outside its dynamic range, so it
// is adopted when read back.
func TestEnsureNetworkCreated(t *testing.T) {
	d := &netDocker{nets: map[string]network.Inspect{}, probeSubnet: netip.MustParsePrefix("172.31.0.0/16")}
	ni, err := ensureNetwork(context.Background(), d, NetworkName, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ni.CPIP != netip.MustParseAddr("172.31.0.202") || ni.Subnet != netip.MustParsePrefix("172.31.0.0/16") {
		t.Errorf("info %+v", ni)
	}
	if len(d.creates) != 2 || len(d.removed) != 1 || !strings.Contains(d.removed[0], "-probe-") {
		t.Fatalf("creates %+v, removed %v", d.creates, d.removed)
	}
	got := d.nets[NetworkName].IPAM.Config[0].IPRange
	if got != netip.MustParsePrefix("172.31.128.0/17") {
		t.Errorf("ip-range %s, want 172.31.128.0/17", got)
	}
}

// A subnet too small to split is refused before clawker-net is created:
// the whole of it would be allocatable.
func TestEnsureNetworkSmallSubnetRefused(t *testing.T) {
	d := &netDocker{nets: map[string]network.Inspect{}, probeSubnet: netip.MustParsePrefix("192.168.1.128/25")}
	_, err := ensureNetwork(context.Background(), d, NetworkName, nil)
	if err == nil || !strings.Contains(err.Error(), "too small to keep .200-.202 outside its dynamic range") || !strings.Contains(err.Error(), "default-address-pools") {
		t.Fatalf("err = %v", err)
	}
	if _, ok := d.nets[NetworkName]; ok || len(d.creates) != 1 {
		t.Errorf("networks %v, creates %d", d.nets, len(d.creates))
	}
}

// An existing clawker-net whose range leaves .200-.202 free is adopted as
// it is.
func TestEnsureNetworkExistingSafeRange(t *testing.T) {
	for _, r := range []string{"172.30.128.0/17", "172.30.0.0/25", "172.30.1.0/24"} {
		d := existingNet(r, "other")
		ni, err := ensureNetwork(context.Background(), d, NetworkName, nil)
		if err != nil || ni.ID != "id-existing" || ni.CPIP != netip.MustParseAddr("172.30.0.202") || len(d.creates) != 0 {
			t.Errorf("range %s: %+v, %v, creates %d", r, ni, err, len(d.creates))
		}
	}
}

// An existing clawker-net without a range is refused with the fix; nothing
// is created or removed.
func TestEnsureNetworkExistingNoRange(t *testing.T) {
	d := existingNet("")
	_, err := ensureNetwork(context.Background(), d, NetworkName, nil)
	want := "network clawker-net cannot be adopted: Docker may give its fixed addresses 172.30.0.200-172.30.0.202 " +
		"(proxy, DNS, control plane) to other containers: it has no ip-range, so the whole subnet 172.30.0.0/16 is allocatable; " +
		"remove it (`docker network rm clawker-net`) so clawker recreates it with a safe range, or recreate it with an ip-range " +
		"that leaves them free (`docker network create --subnet 172.30.0.0/16 --gateway 172.30.0.1 --ip-range 172.30.128.0/17 clawker-net`)"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	if len(d.creates) != 0 || len(d.removed) != 0 {
		t.Errorf("creates %d, removed %v", len(d.creates), d.removed)
	}
}

// An existing clawker-net whose range covers .201 is refused, naming the
// addresses it holds and the containers to remove first.
func TestEnsureNetworkExistingRangeCovers201(t *testing.T) {
	d := existingNet("172.30.0.201/32", "web", "db")
	_, err := ensureNetwork(context.Background(), d, NetworkName, nil)
	if err == nil {
		t.Fatal("adopted a network whose range holds the DNS address")
	}
	for _, want := range []string{
		"its ip-range 172.30.0.201/32 holds 172.30.0.201;",
		"`docker network rm clawker-net`",
		"first stop and remove the containers using it: db, web",
		"--ip-range 172.30.128.0/17",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "holds 172.30.0.200") || strings.Contains(err.Error(), "172.30.0.202;") {
		t.Errorf("err %q names addresses the range does not hold", err)
	}
	if len(d.creates) != 0 || len(d.removed) != 0 {
		t.Errorf("creates %d, removed %v", len(d.creates), d.removed)
	}

	// A wider range over all three names them all.
	_, err = ensureNetwork(context.Background(), existingNet("172.30.0.0/24"), NetworkName, nil)
	if err == nil || !strings.Contains(err.Error(), "its ip-range 172.30.0.0/24 holds 172.30.0.200, 172.30.0.201, 172.30.0.202;") {
		t.Errorf("err = %v", err)
	}
}
