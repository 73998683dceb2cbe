package egressrules

import "net/netip"

// restrictedBlock is one range of the fixed deny set.
type restrictedBlock struct {
	prefix netip.Prefix
	class  string
}

// restrictedV4 and restrictedV6 are checked in order: the first holding the
// address names its class, so narrower blocks come before the ones that
// contain them (0.0.0.0 before 0.0.0.0/8, 255.255.255.255 before 240/4).
var (
	restrictedV4 = []restrictedBlock{
		{netip.MustParsePrefix("0.0.0.0/32"), "unspecified"},
		{netip.MustParsePrefix("0.0.0.0/8"), "this network (0.0.0.0/8)"},
		{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
		{netip.MustParsePrefix("10.0.0.0/8"), "private (RFC 1918)"},
		{netip.MustParsePrefix("172.16.0.0/12"), "private (RFC 1918)"},
		{netip.MustParsePrefix("192.168.0.0/16"), "private (RFC 1918)"},
		{netip.MustParsePrefix("100.64.0.0/10"), "shared address space (CGNAT)"},
		{netip.MustParsePrefix("169.254.0.0/16"), "link-local (cloud metadata)"},
		{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
		{netip.MustParsePrefix("255.255.255.255/32"), "broadcast"},
		{netip.MustParsePrefix("240.0.0.0/4"), "reserved (240.0.0.0/4)"},
	}
	restrictedV6 = []restrictedBlock{
		{netip.MustParsePrefix("::/128"), "unspecified"},
		{netip.MustParsePrefix("::1/128"), "loopback"},
		{netip.MustParsePrefix("::ffff:0:0/96"), "IPv4-mapped IPv6"},
		{netip.MustParsePrefix("::/96"), "IPv4-compatible IPv6"},
		{netip.MustParsePrefix("64:ff9b::/96"), "NAT64 (embeds IPv4)"},
		{netip.MustParsePrefix("64:ff9b:1::/48"), "local NAT64 (embeds IPv4)"},
		{netip.MustParsePrefix("2002::/16"), "6to4 (embeds IPv4)"},
		{netip.MustParsePrefix("2001::/32"), "Teredo (embeds IPv4)"},
		{netip.MustParsePrefix("fe80::/10"), "link-local"},
		{netip.MustParsePrefix("fc00::/7"), "unique local (IPv6 ULA)"},
		{netip.MustParsePrefix("ff00::/8"), "multicast"},
	}
)

// Restricted reports whether ip is in the fixed deny set that answers and
// IP-literal hosts must not reach unless opened on purpose: unspecified,
// 0.0.0.0/8, loopback, RFC 1918, CGNAT, link-local (169.254.169.254 is the
// cloud metadata service), multicast, 240.0.0.0/4, broadcast, IPv6 ULA and
// link-local, and every IPv6 form that embeds an IPv4 address (which could
// smuggle any of the above past a v4-only check). For a v4-mapped address
// the class names the embedded address's class when it has one. An invalid
// ip is restricted.
func Restricted(ip netip.Addr) (class string, restricted bool) {
	b, ok := restrictedBlockOf(ip)
	if !ok {
		return "", false
	}
	if ip.Is4In6() {
		if inner, ok := restrictedBlockOf(ip.Unmap()); ok {
			return inner.class + " in IPv4-mapped IPv6", true
		}
	}
	return b.class, true
}

func restrictedBlockOf(ip netip.Addr) (restrictedBlock, bool) {
	if !ip.IsValid() {
		return restrictedBlock{class: "invalid address"}, true
	}
	blocks := restrictedV6
	if ip.Is4() {
		blocks = restrictedV4
	} else {
		// A zone (fe80::1%eth0) does not change which block holds it.
		ip = ip.WithZone("")
	}
	for _, b := range blocks {
		if b.prefix.Contains(ip) {
			return b, true
		}
	}
	return restrictedBlock{}, false
}
