// Package dnstestenv is the test world of clawker-dns: a fake upstream
// authority and a CoreDNS server started in-process from a Corefile, both on
// 127.0.0.1 only.
package dnstestenv

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/miekg/dns"
)

// Upstream is an authority answering fixed records over UDP and TCP on one
// 127.0.0.1 port, counting every query it gets.
type Upstream struct {
	Addr string // 127.0.0.1:port

	mu      sync.Mutex
	records map[string][]dns.RR // "name.|TYPE" -> answer
	extra   map[string][]dns.RR
	counts  map[string]int
	total   int
}

// NewUpstream starts an Upstream; zone lines are RFC 1035 records, e.g.
// "allowed.test. 60 IN A 203.0.113.10". A line prefixed "+extra " goes into
// the additional section of the answers for the same owner name.
func NewUpstream(t testing.TB, zone ...string) *Upstream {
	t.Helper()
	u := &Upstream{records: map[string][]dns.RR{}, extra: map[string][]dns.RR{}, counts: map[string]int{}}
	for _, line := range zone {
		extra := strings.HasPrefix(line, "+extra ")
		rr, err := dns.NewRR(strings.TrimPrefix(line, "+extra "))
		if err != nil {
			t.Fatalf("upstream record %q: %v", line, err)
		}
		if extra {
			u.extra[strings.ToLower(rr.Header().Name)] = append(u.extra[strings.ToLower(rr.Header().Name)], rr)
			continue
		}
		k := key(rr.Header().Name, rr.Header().Rrtype)
		u.records[k] = append(u.records[k], rr)
	}
	// One port for both transports, as a real resolver has: forward uses
	// the client's transport.
	var (
		pc net.PacketConn
		ln net.Listener
	)
	for try := 0; ; try++ {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		if try > 20 {
			t.Fatalf("no port free for both udp and tcp: %v", err)
		}
	}
	u.Addr = pc.LocalAddr().String()
	udp := &dns.Server{PacketConn: pc, Handler: u}
	tcp := &dns.Server{Listener: ln, Handler: u}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	t.Cleanup(func() { udp.Shutdown(); tcp.Shutdown() })
	return u
}

func key(name string, t uint16) string {
	return strings.ToLower(dns.Fqdn(name)) + "|" + dns.TypeToString[t]
}

// ServeDNS answers from the records, following one CNAME level, as an
// authority that also serves the CDN's zone would.
func (u *Upstream) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	q := r.Question[0]
	u.mu.Lock()
	u.counts[key(q.Name, q.Qtype)]++
	u.total++
	m := new(dns.Msg).SetReply(r)
	m.Authoritative = true
	name := q.Name
	for depth := 0; depth < 4; depth++ {
		if rrs := u.records[key(name, q.Qtype)]; len(rrs) > 0 {
			m.Answer = append(m.Answer, rrs...)
			break
		}
		c := u.records[key(name, dns.TypeCNAME)]
		if len(c) == 0 {
			break
		}
		m.Answer = append(m.Answer, c...)
		name = c[0].(*dns.CNAME).Target
	}
	m.Extra = append(m.Extra, u.extra[strings.ToLower(q.Name)]...)
	u.mu.Unlock()
	if len(m.Answer) == 0 && !u.exists(q.Name) {
		m.Rcode = dns.RcodeNameError
	}
	w.WriteMsg(m)
}

func (u *Upstream) exists(name string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for k := range u.records {
		if strings.HasPrefix(k, strings.ToLower(dns.Fqdn(name))+"|") {
			return true
		}
	}
	return false
}

// Count is how often (name, qtype) was asked.
func (u *Upstream) Count(name string, qtype uint16) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.counts[key(name, qtype)]
}

// Total is how many queries arrived at all.
func (u *Upstream) Total() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.total
}

var startMu sync.Mutex

// StartCoreDNS starts the Corefile in this process (the plugins it names must
// be imported and in dnsserver.Directives) and returns its UDP and TCP
// addresses. The server stops at the end of the test.
func StartCoreDNS(t testing.TB, corefile string) (udp, tcp string) {
	t.Helper()
	startMu.Lock()
	caddy.Quiet = true
	dnsserver.Quiet = true
	inst, err := caddy.Start(caddy.CaddyfileInput{Contents: []byte(corefile), Filepath: t.Name(), ServerTypeName: "dns"})
	startMu.Unlock()
	if err != nil {
		t.Fatalf("start CoreDNS: %v\n%s", err, corefile)
	}
	t.Cleanup(func() { inst.Stop() })
	for _, s := range inst.Servers() {
		if a := s.LocalAddr(); a != nil && udp == "" {
			udp = a.String()
		}
		if a := s.Addr(); a != nil && tcp == "" {
			tcp = a.String()
		}
	}
	if udp == "" || tcp == "" {
		t.Fatalf("CoreDNS listens on udp %q tcp %q", udp, tcp)
	}
	for _, a := range []string{udp, tcp} {
		if !strings.HasPrefix(a, "127.0.0.1:") {
			panic(fmt.Sprintf("test server on %s: tests use 127.0.0.1 only", a))
		}
	}
	return udp, tcp
}
