package cptest

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// Authority is a test's DNS "internet": an authoritative server for the
// names it is given, on an address of the test's own (a test network's
// gateway), so firewall.upstream_dns never points at a resolver the test
// did not create. Unknown names get NXDOMAIN; AAAA of a known name gets
// a ULA address (which the firewall must never pass on).
type Authority struct {
	Addr netip.AddrPort

	mu      sync.Mutex
	records map[string][]netip.Addr
	queries map[string]int
}

// StartAuthority listens on ip (UDP, a port the kernel picks).
func StartAuthority(t testing.TB, ip netip.Addr, records map[string][]netip.Addr) *Authority {
	t.Helper()
	pc, err := net.ListenPacket("udp4", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		t.Fatalf("cptest: authority on %s: %v", ip, err)
	}
	t.Cleanup(func() { pc.Close() })
	a := &Authority{Addr: netip.MustParseAddrPort(pc.LocalAddr().String()), records: map[string][]netip.Addr{}, queries: map[string]int{}}
	for n, ips := range records {
		a.Set(n, ips...)
	}
	go a.serve(pc)
	return a
}

// Set replaces the A records of name.
func (a *Authority) Set(name string, ips ...netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.records[strings.ToLower(strings.TrimSuffix(name, "."))] = ips
}

// Queries is how many queries named name (any type).
func (a *Authority) Queries(name string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.queries[strings.ToLower(strings.TrimSuffix(name, "."))]
}

func (a *Authority) serve(pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if out, ok := a.answer(buf[:n]); ok {
			_, _ = pc.WriteTo(out, from)
		}
	}
}

func (a *Authority) answer(q []byte) ([]byte, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil {
		return nil, false
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 {
		return nil, false
	}
	question := qs[0]
	name := strings.ToLower(strings.TrimSuffix(question.Name.String(), "."))
	a.mu.Lock()
	a.queries[name]++
	ips, known := a.records[name]
	a.mu.Unlock()

	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true})
	b.EnableCompression()
	if !known {
		b = dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RCode: dnsmessage.RCodeNameError})
	}
	_ = b.StartQuestions()
	_ = b.Question(question)
	_ = b.StartAnswers()
	rh := dnsmessage.ResourceHeader{Name: question.Name, Class: dnsmessage.ClassINET, TTL: 30}
	if known {
		switch question.Type {
		case dnsmessage.TypeA:
			for _, ip := range ips {
				_ = b.AResource(rh, dnsmessage.AResource{A: ip.As4()})
			}
		case dnsmessage.TypeAAAA:
			_ = b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: netip.MustParseAddr("fd00:c1a:3e::1").As16()})
		}
	}
	out, err := b.Finish()
	return out, err == nil
}
