package egress

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestConfigRoundTrip(t *testing.T) {
	c := Config{
		Proxy:      netip.MustParseAddrPort("10.99.0.200:3128"),
		DNS:        netip.MustParseAddrPort("10.99.0.201:53"),
		Subnet:     netip.MustParsePrefix("10.99.0.0/24"),
		Gateway:    netip.MustParseAddr("10.99.0.1"),
		Events:     true,
		EventRate:  50,
		EventBurst: 200,
	}
	v, err := c.encode()
	if err != nil {
		t.Fatal(err)
	}
	if v.SubnetPrefixlen != 24 || fromIP4(v.SubnetMask4) != netip.MustParseAddr("255.255.255.0") {
		t.Fatalf("subnet encoded as %v/%d mask %v", fromIP4(v.SubnetIp4), v.SubnetPrefixlen, fromIP4(v.SubnetMask4))
	}
	// Network byte order in memory, as the kernel hands addresses over.
	if b := [4]byte{byte(v.ProxyIp4), byte(v.ProxyIp4 >> 8), byte(v.ProxyIp4 >> 16), byte(v.ProxyIp4 >> 24)}; b != [4]byte{10, 99, 0, 200} {
		t.Fatalf("proxy ip bytes %v", b)
	}
	if got := decodeConfig(&v); got != c {
		t.Fatalf("round trip %+v\nwant %+v", got, c)
	}
	// Host bits of the subnet are masked.
	c.Subnet = netip.MustParsePrefix("10.99.0.77/24")
	v, _ = c.encode()
	if fromIP4(v.SubnetIp4) != netip.MustParseAddr("10.99.0.0") {
		t.Fatalf("subnet not masked: %v", fromIP4(v.SubnetIp4))
	}
}

func TestConfigRefused(t *testing.T) {
	ok := Config{Proxy: netip.MustParseAddrPort("10.0.0.2:3128"), DNS: netip.MustParseAddrPort("10.0.0.3:53")}
	for name, mut := range map[string]func(*Config){
		"no proxy":     func(c *Config) { c.Proxy = netip.AddrPort{} },
		"proxy port 0": func(c *Config) { c.Proxy = netip.MustParseAddrPort("10.0.0.2:0") },
		"ipv6 proxy":   func(c *Config) { c.Proxy = netip.MustParseAddrPort("[2001:db8::1]:3128") },
		"no dns":       func(c *Config) { c.DNS = netip.AddrPort{} },
		"subnet /0":    func(c *Config) { c.Subnet = netip.MustParsePrefix("0.0.0.0/0") },
		"ipv6 subnet":  func(c *Config) { c.Subnet = netip.MustParsePrefix("2001:db8::/64") },
		"ipv6 gateway": func(c *Config) { c.Gateway = netip.MustParseAddr("2001:db8::1") },
	} {
		c := ok
		mut(&c)
		if _, err := c.encode(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ok.encode(); err != nil {
		t.Fatal(err)
	}
	if err := (&Manager{}).Bypass(1, time.Now().Add(2*time.Hour)); err == nil || !strings.Contains(err.Error(), "maximum") {
		t.Fatalf("bypass of 2h: %v", err)
	}
}

func TestLinkNames(t *testing.T) {
	for _, a := range attachments {
		id, prog, ok := parseLinkName(linkName(1234, a.prog))
		if !ok || id != 1234 || prog != a.prog {
			t.Fatalf("%s: %d %s %v", a.prog, id, prog, ok)
		}
	}
	for _, bad := range []string{"x-connect4", "12-nope", "12", "-connect4"} {
		if _, _, ok := parseLinkName(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestSyncRoutesRefusesBadSets(t *testing.T) {
	m := &Manager{}
	for name, rs := range map[string][]Route{
		"icmp":      {{Identity: 1, Port: 1, Proto: 1, ListenerPort: 2}},
		"port 0":    {{Identity: 1, Port: 0, Proto: TCP, ListenerPort: 2}},
		"listener0": {{Identity: 1, Port: 1, Proto: TCP}},
		"duplicate": {{Identity: 1, Port: 1, Proto: TCP, ListenerPort: 2}, {Identity: 1, Port: 1, Proto: TCP, ListenerPort: 3}},
	} {
		if err := m.swapRoutes(rs); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
