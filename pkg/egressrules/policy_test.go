package egressrules

import (
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// entries numbers rules 1.. in order.
func entries(rules ...Rule) []Entry {
	out := make([]Entry, len(rules))
	for i, r := range rules {
		out[i] = Entry{Rule: r, ID: uint32(i + 1)}
	}
	return out
}

func precedencePolicy() *Policy {
	return Compile(entries(
		Rule{Dst: "example.com"},                                             // 1
		Rule{Dst: ".example.com", Action: Deny},                              // 2
		Rule{Dst: ".api.example.com"},                                        // 3
		Rule{Dst: "x.api.example.com", Action: Deny},                         // 4
		Rule{Dst: ".example.com", Proto: HTTP},                               // 5
		Rule{Dst: "dup.test.com"},                                            // 6
		Rule{Dst: "dup.test.com", Action: Deny},                              // 7
		Rule{Dst: ".ports.io", Proto: TCP, Port: PortRange{8000, 8100}},      // 8
		Rule{Dst: ".ports.io", Proto: TCP, Port: Port(8050), Action: Deny},   // 9
		Rule{Dst: "10.0.0.0/8", Proto: TCP, Port: Port(5432)},                // 10
		Rule{Dst: "10.1.0.0/16", Proto: TCP, Port: Port(5432), Action: Deny}, // 11
		Rule{Dst: "10.1.2.3", Proto: TCP, Port: Port(5432)},                  // 12
		Rule{Dst: "0.0.0.0/0"},                                               // 13
		Rule{Dst: "github.com", Proto: SSH},                                  // 14
		Rule{Dst: ".a.b.deep.org"},                                           // 15
		Rule{Dst: ".deep.org", Action: Deny},                                 // 16
		Rule{Dst: "203.0.113.4", Action: Deny},                               // 17
		Rule{Dst: "203.0.113.0/24"},                                          // 18
	), []netip.Prefix{netip.MustParsePrefix("172.30.0.1/32")})
}

func TestDecidePrecedence(t *testing.T) {
	p := precedencePolicy()
	cases := []struct {
		host   string
		proto  Proto
		port   uint16
		allow  bool
		id     uint32 // 0: no rule
		reason string
	}{
		// Exact beats every wildcard.
		{"example.com", HTTPS, 443, true, 1, "allowed by example.com:https:443"},
		{"www.example.com", HTTPS, 443, false, 2, "denied by .example.com:https:443"},
		{"a.b.c.example.com", HTTPS, 443, false, 2, "denied by .example.com:https:443"},
		// More labels beat fewer, and the wildcard matches its apex.
		{"api.example.com", HTTPS, 443, true, 3, "allowed by .api.example.com:https:443"},
		{"v1.api.example.com", HTTPS, 443, true, 3, "allowed by .api.example.com:https:443"},
		{"y.x.api.example.com", HTTPS, 443, true, 3, "allowed by .api.example.com:https:443"},
		{"x.api.example.com", HTTPS, 443, false, 4, "denied by x.api.example.com:https:443"},
		// Applicability first: the exact https rule does not shadow http.
		{"example.com", HTTP, 80, true, 5, "allowed by .example.com:http:80"},
		{"x.api.example.com", HTTP, 80, true, 5, "allowed by .example.com:http:80"},
		{"example.com", HTTP, 8080, false, 0, "no rule allows example.com on http/8080"},
		{"example.com", HTTPS, 8443, false, 0, "no rule allows example.com on https/8443"},
		{"example.com", TCP, 443, false, 0, "no rule allows example.com on tcp/443"},
		// Equal specificity: deny wins.
		{"dup.test.com", HTTPS, 443, false, 7, "denied by dup.test.com:https:443"},
		{"ports.io", TCP, 8050, false, 9, "denied by .ports.io:tcp:8050"},
		{"a.ports.io", TCP, 8000, true, 8, "allowed by .ports.io:tcp:8000-8100"},
		{"a.ports.io", TCP, 8049, true, 8, "allowed by .ports.io:tcp:8000-8100"},
		{"a.ports.io", TCP, 8051, true, 8, "allowed by .ports.io:tcp:8000-8100"},
		{"a.ports.io", TCP, 8100, true, 8, "allowed by .ports.io:tcp:8000-8100"},
		{"a.ports.io", TCP, 8101, false, 0, "no rule allows a.ports.io on tcp/8101"},
		{"a.ports.io", TCP, 7999, false, 0, "no rule allows a.ports.io on tcp/7999"},
		// Wildcards only match on label boundaries.
		{"notexample.com", HTTPS, 443, false, 0, "no rule allows notexample.com on https/443"},
		{"com", HTTPS, 443, false, 0, "no rule allows com on https/443"},
		{"deep.org", HTTPS, 443, false, 16, "denied by .deep.org:https:443"},
		{"b.deep.org", HTTPS, 443, false, 16, "denied by .deep.org:https:443"},
		{"a.b.deep.org", HTTPS, 443, true, 15, "allowed by .a.b.deep.org:https:443"},
		{"z.a.b.deep.org", HTTPS, 443, true, 15, "allowed by .a.b.deep.org:https:443"},
		// Protos are exact.
		{"github.com", SSH, 22, true, 14, "allowed by github.com:ssh:22"},
		{"github.com", TCP, 22, false, 0, "no rule allows github.com on tcp/22"},
		{"github.com", HTTPS, 443, false, 0, "no rule allows github.com on https/443"},
		{"github.com", "udp", 22, false, 0, "no rule allows github.com on udp/22"},
		// Normalisation of the host.
		{"EXAMPLE.com.", HTTPS, 443, true, 1, "allowed by example.com:https:443"},
		{"Api.Example.COM", HTTPS, 443, true, 3, "allowed by .api.example.com:https:443"},
		// IP hosts: longest prefix, deny at equal length, no name rules.
		{"10.1.2.3", TCP, 5432, true, 12, "allowed by 10.1.2.3:tcp:5432"},
		{"10.1.2.4", TCP, 5432, false, 11, "denied by 10.1.0.0/16:tcp:5432"},
		{"10.2.0.1", TCP, 5432, true, 10, "allowed by 10.0.0.0/8:tcp:5432"},
		{"10.2.0.1", TCP, 5433, false, 0, "no rule allows 10.2.0.1 on tcp/5433"},
		{"198.51.100.8", HTTPS, 443, true, 13, "allowed by 0.0.0.0/0:https:443"},
		{"203.0.113.4", HTTPS, 443, false, 17, "denied by 203.0.113.4:https:443"},
		{"203.0.113.5", HTTPS, 443, true, 18, "allowed by 203.0.113.0/24:https:443"},
		{"198.51.100.8", HTTP, 80, false, 0, "no rule allows 198.51.100.8 on http/80"},
		// IP rules never match names.
		{"db.internal.example", TCP, 5432, false, 0, "no rule allows db.internal.example on tcp/5432"},
		// The restricted floor under broad IP rules.
		{"169.254.169.254", HTTPS, 443, false, 13, "169.254.169.254 is link-local (cloud metadata): 0.0.0.0/0 is too broad to open it (write a rule for 169.254.0.0/16 or narrower, or add it to firewall.private_destinations)"},
		{"127.0.0.1", HTTPS, 443, false, 13, "127.0.0.1 is loopback: 0.0.0.0/0 is too broad to open it (write a rule for 127.0.0.0/8 or narrower, or add it to firewall.private_destinations)"},
		{"172.30.0.1", HTTPS, 443, true, 13, "allowed by 0.0.0.0/0:https:443"},
		{"172.30.0.2", HTTPS, 443, false, 13, "172.30.0.2 is private (RFC 1918): 0.0.0.0/0 is too broad to open it (write a rule for 172.16.0.0/12 or narrower, or add it to firewall.private_destinations)"},
		// Invalid hosts.
		{"", HTTPS, 443, false, 0, "empty host: nothing to allow"},
		{".", HTTPS, 443, false, 0, "empty host: nothing to allow"},
		{"exa mple.com", HTTPS, 443, false, 0, `invalid host "exa mple.com": not a domain name or IPv4 address`},
		{"example.com:443", HTTPS, 443, false, 0, `invalid host "example.com:443": not a domain name or IPv4 address`},
		{".example.com", HTTPS, 443, false, 0, `invalid host ".example.com": not a domain name or IPv4 address`},
		{"10.0.0.256", TCP, 5432, false, 0, `invalid host "10.0.0.256": not a domain name or IPv4 address`},
		{"[2001:db8::1]", HTTPS, 443, false, 0, "IPv6 destination [2001:db8::1] refused: agents have no IPv6 egress"},
		{"::ffff:10.1.2.3", TCP, 5432, false, 0, "IPv6 destination ::ffff:10.1.2.3 refused: agents have no IPv6 egress"},
	}
	for _, c := range cases {
		d := p.Decide(c.host, c.proto, c.port)
		var id uint32
		if d.Rule != nil {
			id = d.Rule.ID
		}
		if d.Allow != c.allow || id != c.id || d.Reason != c.reason {
			t.Errorf("Decide(%q, %s, %d) = {%v, rule %d, %q}\n want {%v, rule %d, %q}", c.host, c.proto, c.port, d.Allow, id, d.Reason, c.allow, c.id, c.reason)
		}
	}
}

func TestDecideIsOrderIndependent(t *testing.T) {
	base := precedencePolicy()
	es := base.Entries()
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		rng.Shuffle(len(es), func(i, j int) { es[i], es[j] = es[j], es[i] })
		p := Compile(es, []netip.Prefix{netip.MustParsePrefix("172.30.0.1/32")})
		for _, h := range []string{"example.com", "dup.test.com", "x.api.example.com", "10.1.2.4", "a.ports.io"} {
			for _, pp := range []struct {
				proto Proto
				port  uint16
			}{{HTTPS, 443}, {HTTP, 80}, {TCP, 5432}, {TCP, 8050}} {
				if a, b := base.Decide(h, pp.proto, pp.port), p.Decide(h, pp.proto, pp.port); a.Allow != b.Allow || a.Reason != b.Reason {
					t.Fatalf("%s %v: %+v vs %+v", h, pp, a, b)
				}
			}
		}
	}
}

func TestNilAndEmptyPolicyDeny(t *testing.T) {
	var p *Policy
	if d := p.Decide("example.com", HTTPS, 443); d.Allow || d.Reason != "no rule allows example.com on https/443" {
		t.Fatalf("nil: %+v", d)
	}
	if _, ok := p.Resolvable("example.com"); ok || p.Len() != 0 {
		t.Fatal("nil policy resolvable")
	}
	e := Compile(nil, nil)
	if d := e.Decide("198.51.100.8", HTTPS, 443); d.Allow {
		t.Fatal("empty policy allowed")
	}
}

func TestCompileSkipsInvalidEntries(t *testing.T) {
	p := Compile([]Entry{{Rule: Rule{Dst: "bad name"}, ID: 1}, {Rule: Rule{Dst: "Good.example.com."}, ID: 2}}, nil)
	if p.Len() != 1 || p.Entries()[0].Dst != "good.example.com" {
		t.Fatalf("entries: %+v", p.Entries())
	}
}

func TestResolvable(t *testing.T) {
	p := Compile(entries(
		Rule{Dst: "example.com"},                                                    // 1
		Rule{Dst: ".example.com", Action: Deny},                                     // 2
		Rule{Dst: ".example.com", Proto: HTTP},                                      // 3
		Rule{Dst: ".blocked.example.com", Action: Deny},                             // 4
		Rule{Dst: ".blocked.example.com", Proto: HTTP, Action: Deny},                // 5
		Rule{Dst: ".evil.com", Action: Deny},                                        // 6
		Rule{Dst: "full.io", Proto: TCP, Port: PortRange{8000, 8100}, Action: Deny}, // 7
		Rule{Dst: "full.io", Proto: TCP, Port: PortRange{8000, 8010}},               // 8
		Rule{Dst: "part.io", Proto: TCP, Port: PortRange{1, 1000}, Action: Deny},    // 9
		Rule{Dst: ".part.io", Proto: TCP, Port: PortRange{500, 2000}},               // 10
		Rule{Dst: "shadow.io", Proto: TCP, Port: PortRange{1, 65535}, Action: Deny}, // 11
		Rule{Dst: ".shadow.io", Proto: TCP, Port: Port(22)},                         // 12
		Rule{Dst: "two.io"},                                   // 13
		Rule{Dst: "two.io", Port: PortRange{400, 500}},        // 14
		Rule{Dst: "10.0.0.0/8", Proto: TCP, Port: Port(5432)}, // 15
	), nil)
	cases := []struct {
		name string
		ids  []uint32
		ok   bool
	}{
		{"example.com", []uint32{1, 3}, true},
		{"Example.COM.", []uint32{1, 3}, true},
		{"www.example.com", []uint32{3}, true},
		{"x.blocked.example.com", nil, false}, // both protos shadowed by the deeper denies
		{"blocked.example.com", nil, false},
		{"x.evil.com", nil, false},
		{"full.io", nil, false},
		{"part.io", []uint32{10}, true}, // 1001-2000 stay open
		{"x.part.io", []uint32{10}, true},
		{"shadow.io", nil, false},
		{"a.shadow.io", []uint32{12}, true},
		{"two.io", []uint32{13, 14}, true}, // both allow 443: both listed
		{"unknown.com", nil, false},
		{"10.1.2.3", nil, false},
		{"bad name.com", nil, false},
		{"", nil, false},
	}
	for _, c := range cases {
		ids, ok := p.Resolvable(c.name)
		if ok != c.ok || !slices.Equal(ids, c.ids) {
			t.Errorf("Resolvable(%q) = %v, %v; want %v, %v", c.name, ids, ok, c.ids, c.ok)
		}
	}
}

// boundaryPorts are the ports where a decision can change: the edges of
// every rule's range, so checking them is checking every port.
func boundaryPorts(p *Policy) []uint16 {
	set := map[uint16]bool{1: true, 65535: true}
	for _, e := range p.entries {
		for _, v := range []int{int(e.Port.Lo) - 1, int(e.Port.Lo), int(e.Port.Hi), int(e.Port.Hi) + 1} {
			if v >= 1 && v <= 65535 {
				set[uint16(v)] = true
			}
		}
	}
	out := make([]uint16, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	return out
}

// TestResolvableAgreesWithDecide checks Resolvable against brute force over
// random rule sets: ok iff Decide allows some (proto, port), and every rule
// Decide allows by is among the ids, and every id allows something.
func TestResolvableAgreesWithDecide(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 9))
	dsts := []string{"example.com", ".example.com", ".a.example.com", "b.a.example.com", ".b.a.example.com", "a.example.com", ".other.org"}
	names := []string{"example.com", "a.example.com", "b.a.example.com", "c.b.a.example.com", "z.example.com", "x.a.example.com", "other.org", "y.other.org", "nothing.net"}
	protos := []Proto{HTTPS, HTTP, TCP, SSH}
	for round := range 300 {
		var rules []Rule
		for range 1 + rng.IntN(8) {
			lo := uint16(1 + rng.IntN(20))
			rules = append(rules, Rule{
				Dst:    dsts[rng.IntN(len(dsts))],
				Proto:  protos[rng.IntN(len(protos))],
				Port:   PortRange{lo, lo + uint16(rng.IntN(10))},
				Action: []Action{Allow, Deny}[rng.IntN(2)],
			})
		}
		p := Compile(entries(rules...), nil)
		ports := boundaryPorts(p)
		for _, name := range names {
			ids, ok := p.Resolvable(name)
			allowedBy := map[uint32]bool{}
			for _, proto := range protos {
				for _, port := range ports {
					if d := p.Decide(name, proto, port); d.Allow {
						allowedBy[d.Rule.ID] = true
					}
				}
			}
			if ok != (len(allowedBy) > 0) {
				t.Fatalf("round %d %q: Resolvable ok=%v, Decide allows by %v; rules %+v", round, name, ok, allowedBy, rules)
			}
			for id := range allowedBy {
				if !slices.Contains(ids, id) {
					t.Fatalf("round %d %q: Decide allows by %d, ids %v; rules %+v", round, name, id, ids, rules)
				}
			}
			// Every listed id is an allow rule applicable at the deciding
			// level for some port: a Decide with the co-equal rules
			// reordered would pick it.
			for _, id := range ids {
				r := p.entries[slices.IndexFunc(p.entries, func(e Entry) bool { return e.ID == id })]
				if r.Action != Allow {
					t.Fatalf("round %d %q: deny rule %d listed", round, name, id)
				}
				found := false
				for port := int(r.Port.Lo); port <= int(r.Port.Hi) && !found; port++ {
					d := p.Decide(name, r.Proto, uint16(port))
					found = d.Allow && d.Rule.Dst == r.Dst
				}
				if !found {
					t.Fatalf("round %d %q: id %d (%s) allows nothing; rules %+v", round, name, id, r.key(), rules)
				}
			}
		}
	}
}

func TestRestricted(t *testing.T) {
	cases := []struct {
		ip         string
		restricted bool
		class      string
	}{
		{"169.254.169.254", true, "link-local (cloud metadata)"},
		{"::ffff:10.0.0.1", true, "private (RFC 1918) in IPv4-mapped IPv6"},
		{"::ffff:198.51.100.8", true, "IPv4-mapped IPv6"},
		{"64:ff9b::a00:1", true, "NAT64 (embeds IPv4)"},
		{"64:ff9b:1::1", true, "local NAT64 (embeds IPv4)"},
		{"100.64.1.1", true, "shared address space (CGNAT)"},
		// The two boundary rows below name the first address past a range
		// (CGNAT, RFC 1918): classification only, nothing is dialled.
		{"100.128.0.1", false, ""},
		{"198.51.100.8", false, ""},
		{"2001:db8:4700::1", false, ""},
		{"0.0.0.0", true, "unspecified"},
		{"0.1.2.3", true, "this network (0.0.0.0/8)"},
		{"127.0.0.53", true, "loopback"},
		{"10.255.255.255", true, "private (RFC 1918)"},
		{"172.16.0.1", true, "private (RFC 1918)"},
		{"172.31.255.255", true, "private (RFC 1918)"},
		{"172.32.0.1", false, ""},
		{"192.168.1.1", true, "private (RFC 1918)"},
		{"224.0.0.1", true, "multicast"},
		{"240.0.0.1", true, "reserved (240.0.0.0/4)"},
		{"255.255.255.255", true, "broadcast"},
		{"::", true, "unspecified"},
		{"::1", true, "loopback"},
		{"::10.0.0.1", true, "IPv4-compatible IPv6"},
		{"fe80::1", true, "link-local"},
		{"fe80::1%eth0", true, "link-local"},
		{"fd00::1", true, "unique local (IPv6 ULA)"},
		{"ff02::1", true, "multicast"},
		{"2002:a00:1::", true, "6to4 (embeds IPv4)"},
		{"2001:0:4136:e378::1", true, "Teredo (embeds IPv4)"},
		{"2001:db8:4860::8888", false, ""},
	}
	for _, c := range cases {
		class, r := Restricted(netip.MustParseAddr(c.ip))
		if r != c.restricted || class != c.class {
			t.Errorf("Restricted(%s) = %q, %v; want %q, %v", c.ip, class, r, c.class, c.restricted)
		}
	}
	if _, r := Restricted(netip.Addr{}); !r {
		t.Error("the zero Addr is not restricted")
	}
}

func TestAnswerAllowed(t *testing.T) {
	p := Compile(nil, []netip.Prefix{netip.MustParsePrefix("172.30.0.1/32")})
	cases := []struct {
		ip     string
		ok     bool
		reason string
	}{
		{"198.51.100.8", true, ""},
		{"2001:db8:4700::1", true, ""},
		{"172.30.0.1", true, "private destination 172.30.0.1/32"},
		{"::ffff:172.30.0.1", true, "private destination 172.30.0.1/32"},
		{"172.30.0.2", false, "172.30.0.2 is private (RFC 1918): answers pointing there are dropped (add it to firewall.private_destinations to allow it)"},
		{"169.254.169.254", false, "169.254.169.254 is link-local (cloud metadata): answers pointing there are dropped (add it to firewall.private_destinations to allow it)"},
		{"::ffff:10.0.0.1", false, "::ffff:10.0.0.1 is private (RFC 1918) in IPv4-mapped IPv6: answers pointing there are dropped (add it to firewall.private_destinations to allow it)"},
		{"64:ff9b::a00:1", false, "64:ff9b::a00:1 is NAT64 (embeds IPv4): answers pointing there are dropped (add it to firewall.private_destinations to allow it)"},
		{"100.64.1.1", false, "100.64.1.1 is shared address space (CGNAT): answers pointing there are dropped (add it to firewall.private_destinations to allow it)"},
	}
	for _, c := range cases {
		ok, reason := p.AnswerAllowed(netip.MustParseAddr(c.ip))
		if ok != c.ok || reason != c.reason {
			t.Errorf("AnswerAllowed(%s) = %v, %q; want %v, %q", c.ip, ok, reason, c.ok, c.reason)
		}
	}
	var nilPolicy *Policy
	if ok, _ := nilPolicy.AnswerAllowed(netip.MustParseAddr("10.0.0.1")); ok {
		t.Error("nil policy opened 10.0.0.1")
	}
}

func TestDocJSONRoundTripAndCompile(t *testing.T) {
	doc := Doc{
		Generation: 42,
		Rules: []Entry{
			{Rule{Dst: "example.com", Proto: HTTPS, Port: Port(443), Action: Allow}, 1},
			{Rule{Dst: ".example.com", Proto: HTTP, Port: PortRange{8000, 8100}, Action: Deny}, 2},
			{Rule{Dst: "10.0.0.0/8", Proto: TCP, Port: Port(5432), Action: Allow}, 3},
		},
		PrivateDestinations: []string{"172.30.0.1/32", "192.168.5.5"},
	}
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"generation":42`, `{"dst":"example.com","proto":"https","port":443,"action":"allow","id":1}`, `"port":"8000-8100"`, `"private_destinations":["172.30.0.1/32","192.168.5.5"]`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("JSON lacks %s: %s", want, out)
		}
	}
	var back Doc
	if err := json.Unmarshal(out, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, doc) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", back, doc)
	}
	p, err := back.Compile()
	if err != nil {
		t.Fatal(err)
	}
	if p.Generation() != 42 || p.Len() != 3 {
		t.Fatalf("generation %d len %d", p.Generation(), p.Len())
	}
	if ok, _ := p.AnswerAllowed(netip.MustParseAddr("192.168.5.5")); !ok {
		t.Error("a bare address in private_destinations did not open it")
	}
	if d := p.Decide("example.com", HTTPS, 443); !d.Allow || d.Rule.ID != 1 {
		t.Errorf("decide: %+v", d)
	}

	bad := Doc{Rules: []Entry{{Rule{Dst: "ok.example.com"}, 1}, {Rule{Dst: "bad name"}, 2}, {Rule{Dst: "other.example.com"}, 1}},
		PrivateDestinations: []string{"nope"}}
	_, err = bad.Compile()
	if err == nil {
		t.Fatal("bad doc compiled")
	}
	for _, want := range []string{
		`rules[1]: dst "bad name"`,
		`rules[2]: id "1": also the id of ok.example.com:https:443`,
		`private_destinations[0] "nope": not an IP address or CIDR`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

func TestPolicyConcurrentUse(t *testing.T) {
	p := precedencePolicy()
	done := make(chan bool)
	for range 4 {
		go func() {
			for range 2000 {
				if d := p.Decide("v1.api.example.com", HTTPS, 443); !d.Allow {
					t.Error(d.Reason)
				}
				if _, ok := p.Resolvable("www.example.com"); !ok {
					t.Error("not resolvable")
				}
				p.AnswerAllowed(netip.MustParseAddr("10.0.0.1"))
			}
			done <- true
		}()
	}
	for range 4 {
		<-done
	}
}
