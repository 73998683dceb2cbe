package egressrules

import (
	"fmt"
	"net/netip"
	"testing"
)

// kernelDecides is what the eBPF programs do with the entries: the longest
// entry holding ip, then its first rule whose range holds port. ok is false
// when no rule applies (the connect then goes on to the proxy).
func kernelDecides(entries []KernelIPEntry, ip netip.Addr, port uint16) (allow, ok bool) {
	best := -1
	for i, e := range entries {
		if e.Prefix.Contains(ip) && (best < 0 || e.Prefix.Bits() > entries[best].Prefix.Bits()) {
			best = i
		}
	}
	if best < 0 {
		return false, false
	}
	for _, r := range entries[best].Rules {
		if r.Port.Contains(port) {
			return r.Allow, true
		}
	}
	return false, false
}

// The kernel's entries decide every TCP destination as Policy.Decide does:
// longest applicable prefix, deny before allow at one prefix, a broad rule
// not opening a restricted address unless a private destination holds it.
func TestKernelIPEntriesAgreeWithDecide(t *testing.T) {
	rule := func(id uint32, dst string, port PortRange, action Action) Entry {
		return Entry{ID: id, Rule: Rule{Dst: dst, Proto: TCP, Port: port, Action: action}}
	}
	entries := []Entry{
		rule(1, "0.0.0.0/0", PortRange{Lo: 443, Hi: 443}, Allow),
		rule(2, "198.51.100.0/24", PortRange{Lo: 1, Hi: 65535}, Allow),
		rule(3, "198.51.100.7", PortRange{Lo: 22, Hi: 22}, Deny),
		rule(4, "198.51.100.0/24", PortRange{Lo: 8000, Hi: 8100}, Deny),
		rule(5, "10.20.0.0/16", PortRange{Lo: 5432, Hi: 5432}, Allow),
		rule(6, "203.0.113.9", PortRange{Lo: 9000, Hi: 9000}, Allow),
	}
	private := []netip.Prefix{netip.MustParsePrefix("192.168.7.0/24")}
	p := Compile(entries, private)
	ke, err := p.KernelIPEntries()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ke {
		t.Logf("%s: %+v", e.Prefix, e.Rules)
	}
	ips := []string{"198.51.100.7", "198.51.100.8", "203.0.113.9", "203.0.113.10", "10.20.3.4", "10.21.3.4",
		"192.168.7.9", "192.168.8.9", "169.254.169.254", "100.64.1.1", "192.0.2.1"}
	ports := []uint16{22, 80, 443, 5432, 8050, 9000, 65535}
	for _, s := range ips {
		ip := netip.MustParseAddr(s)
		for _, port := range ports {
			d := p.Decide(s, TCP, port)
			allow, ok := kernelDecides(ke, ip, port)
			if ok && allow != d.Allow || !ok && d.Allow {
				t.Errorf("%s:%d: kernel allow=%v (decided %v), Decide %+v", s, port, allow, ok, d)
			}
		}
	}
	// Spot checks of what the table must say.
	for _, c := range []struct {
		ip    string
		port  uint16
		allow bool
	}{
		{"198.51.100.7", 22, false}, {"198.51.100.7", 443, true}, {"198.51.100.8", 8050, false}, {"198.51.100.8", 8101, true},
		{"10.20.3.4", 5432, true}, {"10.20.3.4", 443, false}, {"169.254.169.254", 443, false}, {"192.168.7.9", 443, true},
		{"192.168.8.9", 443, false}, {"192.0.2.1", 443, true}, {"192.0.2.1", 80, false},
	} {
		if d := p.Decide(c.ip, TCP, c.port); d.Allow != c.allow {
			t.Errorf("Decide(%s, %d) = %+v, want allow=%v", c.ip, c.port, d, c.allow)
		}
	}
}

func TestKernelIPEntriesBound(t *testing.T) {
	var entries []Entry
	for i := range MaxKernelRulesPerEntry + 1 {
		entries = append(entries, Entry{ID: uint32(i + 1), Rule: Rule{Dst: fmt.Sprintf("198.51.100.0/%d", 24+i%8), Proto: TCP, Port: PortRange{Lo: uint16(1000 + i), Hi: uint16(1000 + i)}}})
	}
	entries = append(entries, Entry{ID: 99, Rule: Rule{Dst: "198.51.100.0", Proto: TCP, Port: PortRange{Lo: 1, Hi: 2}}})
	if _, err := Compile(entries, nil).KernelIPEntries(); err == nil {
		t.Fatal("more rules for one address than the kernel holds: no error")
	}
	if ke, err := Compile(nil, nil).KernelIPEntries(); err != nil || ke != nil {
		t.Errorf("no rules: %v %v", ke, err)
	}
}
