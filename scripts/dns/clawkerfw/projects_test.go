package clawkerfw_test

import (
	"net"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// askFrom sends the query from src (a loopback address of its own), as an
// agent at that address would.
func askFrom(t *testing.T, w *world, netw, src, name string) *dns.Msg {
	t.Helper()
	var local net.Addr = &net.UDPAddr{IP: net.ParseIP(src)}
	if netw == "tcp" {
		local = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c := &dns.Client{Net: netw, Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: local, Timeout: 5 * time.Second}}
	q := new(dns.Msg).SetQuestion(dns.Fqdn(name), dns.TypeA)
	q.SetEdns0(1232, false)
	m, _, err := c.Exchange(q, w.addr(netw))
	if err != nil {
		t.Fatalf("%s from %s %s: %v", netw, src, name, err)
	}
	return m
}

// Each agent resolves the global rules and its own project's; a name only
// another project's rule allows is NXDOMAIN to it, even once cached below
// for the project that may resolve it. A client the doc does not name gets
// the global rules only.
func TestProjectsDecidedByClientAddress(t *testing.T) {
	doc := egressrules.Doc{Generation: 1, Rules: []egressrules.Entry{
		allow(1, "allowed.test"),
		{ID: 2, Rule: egressrules.Rule{Dst: "edge.cdn.test", Projects: []string{"alpha"}}},
		{ID: 3, Rule: egressrules.Rule{Dst: "unlisted.test", Projects: []string{"beta"}}},
	}, Agents: map[string]string{"127.0.0.2": "alpha", "127.0.0.3": "beta"}}
	w := newWorld(t, &doc)
	type q struct {
		src, name string
		want      []string // nil: NXDOMAIN
	}
	cases := []q{
		{"127.0.0.2", "edge.cdn.test", []string{"203.0.113.20"}},
		{"127.0.0.3", "edge.cdn.test", nil}, // cached for alpha by now
		{"127.0.0.3", "unlisted.test", []string{"203.0.113.50"}},
		{"127.0.0.2", "unlisted.test", nil},
		{"127.0.0.2", "allowed.test", []string{"203.0.113.10"}},
		{"127.0.0.3", "allowed.test", []string{"203.0.113.10"}},
		{"127.0.0.1", "allowed.test", []string{"203.0.113.10"}},
		{"127.0.0.1", "edge.cdn.test", nil},
		{"127.0.0.1", "unlisted.test", nil},
	}
	for _, netw := range []string{"udp", "tcp"} {
		for _, c := range cases {
			m := askFrom(t, w, netw, c.src, c.name)
			if c.want == nil {
				if m.Rcode != dns.RcodeNameError {
					t.Errorf("%s from %s %s: %s %v, want NXDOMAIN", netw, c.src, c.name, dns.RcodeToString[m.Rcode], aRecords(m))
				}
				continue
			}
			if m.Rcode != dns.RcodeSuccess || !slices.Equal(aRecords(m), c.want) {
				t.Errorf("%s from %s %s: %s %v, want %v", netw, c.src, c.name, dns.RcodeToString[m.Rcode], aRecords(m), c.want)
			}
		}
	}
	// The answers were reported under the rule of the asking project.
	ids := map[string]uint32{}
	for _, call := range w.rep.Calls() {
		for _, a := range call {
			ids[a.Name] = a.RuleIDs[0]
		}
	}
	if ids["edge.cdn.test"] != 2 || ids["unlisted.test"] != 3 {
		t.Errorf("reported rule ids %v", ids)
	}
}

// The proxy (Doc.Proxies) resolves for every project: what any project
// may resolve, it may.
func TestProjectsProxyResolvesEveryProject(t *testing.T) {
	doc := egressrules.Doc{Generation: 1, Rules: []egressrules.Entry{
		{ID: 2, Rule: egressrules.Rule{Dst: "edge.cdn.test", Projects: []string{"alpha"}}},
		{ID: 3, Rule: egressrules.Rule{Dst: "unlisted.test", Projects: []string{"beta"}}},
	}, Agents: map[string]string{"127.0.0.2": "alpha"}, Proxies: []string{"127.0.0.5"}}
	w := newWorld(t, &doc)
	for _, name := range []string{"edge.cdn.test", "unlisted.test"} {
		if m := askFrom(t, w, "udp", "127.0.0.5", name); m.Rcode != dns.RcodeSuccess || len(aRecords(m)) != 1 {
			t.Errorf("proxy %s: %s %v", name, dns.RcodeToString[m.Rcode], aRecords(m))
		}
	}
	if m := askFrom(t, w, "udp", "127.0.0.2", "unlisted.test"); m.Rcode != dns.RcodeNameError {
		t.Errorf("alpha's agent resolves beta's name: %s", dns.RcodeToString[m.Rcode])
	}
}
