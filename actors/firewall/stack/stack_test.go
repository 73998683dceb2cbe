package stack

import (
	"net/netip"
	"strings"
	"testing"
)

func TestAddrsFor(t *testing.T) {
	a, err := AddrsFor(netip.MustParsePrefix("172.30.4.0/24"), netip.MustParseAddr("172.30.4.1"), 15001)
	if err != nil {
		t.Fatal(err)
	}
	if a.Proxy.String() != "172.30.4.200:15001" || a.DNS.String() != "172.30.4.201:53" {
		t.Errorf("proxy %s dns %s", a.Proxy, a.DNS)
	}
	for _, c := range []struct{ subnet, gw, want string }{
		{"172.30.4.0/25", "172.30.4.1", "cannot hold the firewall stack address 172.30.4.200"},
		{"172.30.4.0/24", "172.30.5.1", "want an IPv4 subnet holding its gateway"},
		{"fd00::/64", "fd00::1", "want an IPv4 subnet"},
	} {
		_, err := AddrsFor(netip.MustParsePrefix(c.subnet), netip.MustParseAddr(c.gw), 15001)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s gw %s: %v, want %q", c.subnet, c.gw, err, c.want)
		}
	}
}
