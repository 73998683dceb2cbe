package clawkerfw

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// fuzzWriter keeps every reply written to the client.
type fuzzWriter struct {
	test.ResponseWriter
	msgs []*dns.Msg
}

func (w *fuzzWriter) WriteMsg(m *dns.Msg) error {
	w.msgs = append(w.msgs, m)
	return nil
}

// accepted is miekg/dns's default MsgAcceptFunc, which the server runs
// before any plugin: other messages never reach ServeDNS.
func accepted(r *dns.Msg) bool {
	if r.Response || (r.Opcode != dns.OpcodeQuery && r.Opcode != dns.OpcodeNotify) {
		return false
	}
	return len(r.Question) == 1 && len(r.Answer) <= 1 && len(r.Ns) <= 1 && len(r.Extra) <= 2
}

// FuzzServeDNS runs the plugin on a query and an upstream answer, both
// unpacked from fuzz bytes (the answer is what forward or cache hand up;
// a hostile or spoofed upstream chooses every byte of it). failReport
// makes the control plane refuse the report. Properties:
//   - no panic, in ServeDNS or in packing its reply for the wire;
//   - exactly one reply is written to the client, unless the chain below
//     wrote none (then the server answers the error);
//   - a name the policy does not resolve, a class other than IN, the
//     health probe and AAAA are answered here: the query never goes
//     upstream;
//   - the reply carries no AAAA, A records only in answer to an A query,
//     each one allowed by the rebinding floor and reported before the
//     reply was written (none at all when the report failed), and no
//     SVCB/HTTPS record with ech or address hints;
//   - the upstream's message is not modified (with cache below, its
//     records are the cache's).
func FuzzServeDNS(f *testing.F) {
	pack := func(m *dns.Msg) []byte {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	q := func(name string, qtype uint16) *dns.Msg {
		m := new(dns.Msg).SetQuestion(name, qtype)
		m.SetEdns0(1232, false)
		return m
	}
	reply := func(r *dns.Msg, rrs ...string) []byte {
		m := new(dns.Msg).SetReply(r)
		for _, s := range rrs {
			rr, err := dns.NewRR(s)
			if err != nil {
				f.Fatal(err)
			}
			m.Answer = append(m.Answer, rr)
		}
		return pack(m)
	}
	qa := q("allowed.test.", dns.TypeA)
	f.Add(pack(qa), reply(qa, "allowed.test. 60 IN A 203.0.113.10", "allowed.test. 60 IN A 10.0.0.5", "allowed.test. 60 IN AAAA 2001:db8::1"), false)
	f.Add(pack(qa), reply(qa, "allowed.test. 60 IN A 203.0.113.10"), true)
	qc := q("a.wild.test.", dns.TypeA)
	f.Add(pack(qc), reply(qc, "a.wild.test. 60 IN CNAME edge.cdn.test.", "edge.cdn.test. 60 IN A 169.254.169.254"), false)
	qh := q("https.wild.test.", dns.TypeHTTPS)
	f.Add(pack(qh), reply(qh, `https.wild.test. 60 IN HTTPS 1 . alpn="h2" ech="AEX+DQBBWQAgACBmb28tYmFyLWJhei1xdXV4LWZvby1iYXItYmF6AAQAAQABABJwdWJsaWMuZXhhbXBsZS5jb20AAA==" ipv4hint="203.0.113.30"`,
		`https.wild.test. 60 IN SVCB 1 svc.wild.test. port="8443" ipv6hint="2001:db8::30"`), false)
	qm := q("allowed.test.", dns.TypeMX)
	f.Add(pack(qm), reply(qm, "allowed.test. 60 IN MX 10 mail.allowed.test."), false)
	f.Add(pack(q("bad.wild.test.", dns.TypeA)), []byte{}, false)
	f.Add(pack(q("unlisted.test.", dns.TypeA)), []byte{}, false)
	f.Add(pack(q("allowed.test.", dns.TypeAAAA)), []byte{}, false)
	hq := q(HealthName, dns.TypeTXT)
	hq.Question[0].Qclass = dns.ClassCHAOS
	f.Add(pack(hq), []byte{}, false)

	fw := New()
	if err := fw.SetDoc(egressrules.Doc{Generation: 1, Rules: []egressrules.Entry{
		{Rule: egressrules.Rule{Dst: "allowed.test"}, ID: 1},
		{Rule: egressrules.Rule{Dst: ".wild.test"}, ID: 2},
		{Rule: egressrules.Rule{Dst: "bad.wild.test", Action: egressrules.Deny}, ID: 3},
		{Rule: egressrules.Rule{Dst: "192.0.2.0/24", Proto: egressrules.TCP, Port: egressrules.Port(5432)}, ID: 4},
	}, PrivateDestinations: []string{"172.30.0.0/16"}}); err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, query, answer []byte, failReport bool) {
		r := new(dns.Msg)
		if r.Unpack(query) != nil || !accepted(r) {
			return
		}
		var reported []Answer
		fw.Reporter = ReporterFunc(func(_ context.Context, a []Answer) error {
			if failReport {
				return errors.New("control plane refuses")
			}
			reported = append(reported, a...)
			return nil
		})
		var upstream *dns.Msg
		var before string
		forwarded := false
		h := &handler{fw: fw, next: plugin.HandlerFunc(func(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
			forwarded = true
			m := new(dns.Msg)
			if m.Unpack(answer) != nil {
				return dns.RcodeServerFailure, errors.New("upstream answer does not unpack")
			}
			upstream, before = m, m.String()
			w.WriteMsg(m)
			return dns.RcodeSuccess, nil
		})}
		w := &fuzzWriter{}
		h.ServeDNS(context.Background(), w, r)

		question := r.Question[0]
		name := canonical(question.Name)
		_, resolvable := fw.Policy().Resolvable(name)
		if forwarded && (!resolvable || question.Qclass != dns.ClassINET || question.Qtype == dns.TypeAAAA) {
			t.Fatalf("query %v went upstream", question)
		}
		if upstream != nil && upstream.String() != before {
			t.Fatalf("the upstream's message was modified:\n%s\nbecame\n%s", before, upstream.String())
		}
		if len(w.msgs) == 0 {
			if !forwarded || upstream != nil {
				t.Fatalf("no reply to %v (forwarded %v)", question, forwarded)
			}
			return
		}
		if len(w.msgs) != 1 {
			t.Fatalf("%d replies to one query", len(w.msgs))
		}
		out := w.msgs[0]
		out.Pack() // the server packs it; an error is answered, a panic is not
		seen := map[netip.Addr]bool{}
		for _, a := range reported {
			seen[a.IP] = true
		}
		for _, rr := range append(append(append([]dns.RR{}, out.Answer...), out.Ns...), out.Extra...) {
			switch v := rr.(type) {
			case *dns.AAAA:
				t.Fatalf("AAAA in the reply: %v", v)
			case *dns.A:
				ip, ok := netip.AddrFromSlice(v.A)
				if !ok {
					t.Fatalf("A record without an address: %v", v)
				}
				ip = ip.Unmap()
				if question.Qtype != dns.TypeA {
					t.Fatalf("A record in the reply to a %s query: %v", dns.TypeToString[question.Qtype], v)
				}
				if allowed, why := fw.Policy().AnswerAllowed(ip); !allowed {
					t.Fatalf("A record past the rebinding floor: %v (%s)", v, why)
				}
				if !seen[ip] {
					t.Fatalf("A record %v reached the client unreported", v)
				}
			case *dns.HTTPS:
				checkSVCB(t, &v.SVCB)
			case *dns.SVCB:
				checkSVCB(t, v)
			}
		}
	})
}

func checkSVCB(t *testing.T, s *dns.SVCB) {
	t.Helper()
	for _, kv := range s.Value {
		switch kv.Key() {
		case dns.SVCB_ECHCONFIG, dns.SVCB_IPV4HINT, dns.SVCB_IPV6HINT:
			t.Fatalf("%s kept %s", s, kv.Key())
		}
	}
}
