package clawkerfw_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	"github.com/miekg/dns"

	"github.com/clawker/clawker-cp/pkg/egressrules"
	"github.com/clawker/clawker-cp/scripts/dns/clawkerfw"
	"github.com/clawker/clawker-cp/scripts/dns/internal/dnstestenv"
)

func TestMain(m *testing.M) {
	// The chain of the binary (main.Directives).
	dnsserver.Directives = []string{"bind", "errors", "clawkerfw", "cache", "forward"}
	os.Exit(m.Run())
}

// The upstream's zone. 203.0.113.0/24 is TEST-NET-3: only ever a DNS answer
// here, never dialled.
var zone = []string{
	"allowed.test. 60 IN A 203.0.113.10",
	"allowed.test. 60 IN AAAA 2001:db8::10",
	"allowed.test. 60 IN TXT \"hello\"",
	"private.test. 60 IN A 10.0.0.5",
	"mixed.test. 60 IN A 203.0.113.11",
	"mixed.test. 60 IN A 10.0.0.6",
	"mixed.test. 60 IN A 169.254.169.254",
	"cname.test. 60 IN CNAME edge.cdn.test.",
	"edge.cdn.test. 60 IN A 203.0.113.20",
	`https.test. 60 IN HTTPS 1 . alpn="h2" ech="AEX+DQBBWQAgACBmb28tYmFyLWJhei1xdXV4LWZvby1iYXItYmF6AAQAAQABABJwdWJsaWMuZXhhbXBsZS5jb20AAA==" ipv4hint="203.0.113.30" ipv6hint="2001:db8::30"`,
	`https.test. 60 IN SVCB 1 svc.https.test. port="8443" ech="AEX+DQBBWQAgACBmb28tYmFyLWJhei1xdXV4LWZvby1iYXItYmF6AAQAAQABABJwdWJsaWMuZXhhbXBsZS5jb20AAA=="`,
	"+extra https.test. 60 IN A 203.0.113.30",
	"+extra https.test. 60 IN AAAA 2001:db8::30",
	"a.wild.test. 60 IN A 203.0.113.40",
	"bad.wild.test. 60 IN A 203.0.113.41",
	"unlisted.test. 60 IN A 203.0.113.50",
}

func allow(id uint32, dst string) egressrules.Entry {
	return egressrules.Entry{Rule: egressrules.Rule{Dst: dst}, ID: id} // https/443 allow by default
}

func deny(id uint32, dst string) egressrules.Entry {
	return egressrules.Entry{Rule: egressrules.Rule{Dst: dst, Action: egressrules.Deny}, ID: id}
}

func baseDoc(gen uint64) egressrules.Doc {
	return egressrules.Doc{Generation: gen, Rules: []egressrules.Entry{
		allow(1, "allowed.test"), allow(2, "private.test"), allow(3, "mixed.test"),
		allow(4, "cname.test"), allow(5, "https.test"), allow(6, ".wild.test"), deny(7, "bad.wild.test"),
	}}
}

// reporter is the fake control plane: it records every call and, when gate
// is set, holds each call until the test closes gate.
type reporter struct {
	mu      sync.Mutex
	calls   [][]clawkerfw.Answer
	entered chan []clawkerfw.Answer
	gate    chan struct{}
	fail    atomic.Bool
}

func (r *reporter) Report(ctx context.Context, answers []clawkerfw.Answer) error {
	r.mu.Lock()
	r.calls = append(r.calls, slices.Clone(answers))
	entered, gate := r.entered, r.gate
	r.mu.Unlock()
	if entered != nil {
		entered <- answers
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if r.fail.Load() {
		return errors.New("control plane unreachable")
	}
	return nil
}

func (r *reporter) Calls() [][]clawkerfw.Answer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

type world struct {
	up       *dnstestenv.Upstream
	fw       *clawkerfw.Firewall
	rep      *reporter
	udp, tcp string
}

var seq atomic.Int64

// newWorld starts the fake upstream and the real server (errors, clawkerfw,
// cache, forward) on loopback. doc nil: no policy.
func newWorld(t testing.TB, doc *egressrules.Doc, configure ...func(*clawkerfw.Firewall)) *world {
	t.Helper()
	w := &world{up: dnstestenv.NewUpstream(t, zone...), fw: clawkerfw.New(), rep: &reporter{}}
	w.fw.Reporter = w.rep
	for _, c := range configure {
		c(w.fw)
	}
	if doc != nil {
		if err := w.fw.SetDoc(*doc); err != nil {
			t.Fatal(err)
		}
	}
	name := fmt.Sprintf("t%d", seq.Add(1))
	clawkerfw.Register(name, w.fw)
	t.Cleanup(func() { clawkerfw.Unregister(name) })
	w.udp, w.tcp = dnstestenv.StartCoreDNS(t, fmt.Sprintf(`.:0 {
	bind 127.0.0.1
	errors
	clawkerfw %s
	cache 30
	forward . %s
}`, name, w.up.Addr))
	return w
}

func (w *world) ask(t testing.TB, net, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m, err := ask(net, w.addr(net), name, qtype, dns.ClassINET)
	if err != nil {
		t.Fatalf("%s %s %s: %v", net, name, dns.TypeToString[qtype], err)
	}
	return m
}

func (w *world) addr(net string) string {
	if net == "tcp" {
		return w.tcp
	}
	return w.udp
}

func ask(net, addr, name string, qtype, class uint16) (*dns.Msg, error) {
	c := &dns.Client{Net: net, Timeout: 5 * time.Second}
	q := new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype)
	q.Question[0].Qclass = class
	q.SetEdns0(1232, false)
	m, _, err := c.Exchange(q, addr)
	return m, err
}

func aRecords(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

func ede(m *dns.Msg) (uint16, string, bool) {
	if opt := m.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if e, ok := o.(*dns.EDNS0_EDE); ok {
				return e.InfoCode, e.ExtraText, true
			}
		}
	}
	return 0, "", false
}

func wantRcode(t testing.TB, m *dns.Msg, rcode int) {
	t.Helper()
	if m.Rcode != rcode {
		t.Fatalf("rcode %s, want %s\n%s", dns.RcodeToString[m.Rcode], dns.RcodeToString[rcode], m)
	}
}

func TestAllowedAReportedBeforeTheClientSeesIt(t *testing.T) {
	for _, net := range []string{"udp", "tcp"} {
		t.Run(net, func(t *testing.T) {
			w := newWorld(t, ptr(baseDoc(1)))
			w.rep.entered = make(chan []clawkerfw.Answer, 1)
			w.rep.gate = make(chan struct{})
			got := make(chan *dns.Msg, 1)
			go func() {
				m, err := ask(net, w.addr(net), "Allowed.Test", dns.TypeA, dns.ClassINET)
				if err != nil {
					t.Error(err)
				}
				got <- m
			}()
			var answers []clawkerfw.Answer
			select {
			case answers = <-w.rep.entered:
			case <-time.After(5 * time.Second):
				t.Fatal("no report")
			}
			want := []clawkerfw.Answer{{Name: "allowed.test", IP: netip.MustParseAddr("203.0.113.10"), RuleIDs: []uint32{1}, TTL: 30}} // the cache caps it at 30
			if !equalAnswers(answers, want) {
				t.Fatalf("reported %+v, want %+v", answers, want)
			}
			select {
			case m := <-got:
				t.Fatalf("the client had the reply while the report was still held: %v", m)
			case <-time.After(200 * time.Millisecond):
			}
			close(w.rep.gate)
			m := <-got
			if m == nil {
				t.FailNow()
			}
			wantRcode(t, m, dns.RcodeSuccess)
			if a := aRecords(m); !slices.Equal(a, []string{"203.0.113.10"}) {
				t.Fatalf("A %v", a)
			}
		})
	}
}

func TestCachedAnswerIsReportedAgain(t *testing.T) {
	w := newWorld(t, ptr(baseDoc(1)))
	for i := 0; i < 3; i++ {
		m := w.ask(t, "udp", "allowed.test", dns.TypeA)
		if a := aRecords(m); !slices.Equal(a, []string{"203.0.113.10"}) {
			t.Fatalf("query %d: A %v", i, a)
		}
	}
	if n := w.up.Count("allowed.test", dns.TypeA); n != 1 {
		t.Fatalf("upstream asked %d times, want 1 (cache)", n)
	}
	calls := w.rep.Calls()
	if len(calls) != 3 {
		t.Fatalf("%d reports, want 3 (plugin above cache)", len(calls))
	}
	for _, c := range calls {
		if len(c) != 1 || c[0].IP != netip.MustParseAddr("203.0.113.10") || c[0].TTL > 60 || c[0].TTL == 0 {
			t.Fatalf("report %+v", c)
		}
	}
	if m := w.fw.Metrics(); m.Reported != 3 || m.Forwarded != 3 || m.Queries != 3 {
		t.Fatalf("metrics %s", m)
	}
}

func TestUnlistedAndDeniedNamesNXDOMAINWithoutUpstream(t *testing.T) {
	w := newWorld(t, ptr(baseDoc(1)))
	for _, name := range []string{"unlisted.test", "bad.wild.test", "edge.cdn.test", "10.0.0.5.in-addr.arpa"} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT} {
			for _, net := range []string{"udp", "tcp"} {
				m := w.ask(t, net, name, qt)
				wantRcode(t, m, dns.RcodeNameError)
				if !m.Authoritative || len(m.Answer) != 0 {
					t.Fatalf("%s: %v", name, m)
				}
				if code, text, ok := ede(m); !ok || code != dns.ExtendedErrorCodeBlocked || !strings.Contains(text, name) {
					t.Fatalf("%s: EDE %d %q %v", name, code, text, ok)
				}
			}
		}
	}
	// The wildcard itself works, so the deny above is the deny rule.
	if a := aRecords(w.ask(t, "udp", "a.wild.test", dns.TypeA)); !slices.Equal(a, []string{"203.0.113.40"}) {
		t.Fatalf("a.wild.test A %v", a)
	}
	if n := w.up.Total(); n != 1 {
		t.Fatalf("upstream got %d queries, want 1 (a.wild.test only)", n)
	}
	if m := w.fw.Metrics(); m.NXDomain != 24 {
		t.Fatalf("metrics %s", m)
	}
}

func TestAAAAIsEmptyWithoutUpstream(t *testing.T) {
	w := newWorld(t, ptr(baseDoc(1)))
	m := w.ask(t, "udp", "allowed.test", dns.TypeAAAA)
	wantRcode(t, m, dns.RcodeSuccess)
	if len(m.Answer) != 0 {
		t.Fatalf("answer %v", m.Answer)
	}
	if n := w.up.Total(); n != 0 {
		t.Fatalf("upstream got %d queries", n)
	}
	if len(w.rep.Calls()) != 0 {
		t.Fatal("reported an empty answer")
	}
}

func TestOtherTypesAreForwarded(t *testing.T) {
	w := newWorld(t, ptr(baseDoc(1)))
	m := w.ask(t, "udp", "allowed.test", dns.TypeTXT)
	wantRcode(t, m, dns.RcodeSuccess)
	if len(m.Answer) != 1 || m.Answer[0].(*dns.TXT).Txt[0] != "hello" {
		t.Fatalf("TXT %v", m.Answer)
	}
	if len(w.rep.Calls()) != 0 {
		t.Fatal("a TXT answer was reported")
	}
}

func TestHTTPSLosesECHHintsAndAddresses(t *testing.T) {
	w := newWorld(t, ptr(baseDoc(1)))
	for i := 0; i < 2; i++ { // fresh, then from the cache
		m := w.ask(t, "udp", "https.test", dns.TypeHTTPS)
		wantRcode(t, m, dns.RcodeSuccess)
		if len(m.Answer) != 1 {
			t.Fatalf("answer %v", m.Answer)
		}
		h := m.Answer[0].(*dns.HTTPS)
		var keys []string
		for _, kv := range h.Value {
			keys = append(keys, kv.Key().String())
		}
		if !slices.Equal(keys, []string{"alpn"}) {
			t.Fatalf("SvcParams %v, want only alpn: %s", keys, h)
		}
		for _, rr := range m.Extra {
			switch rr.(type) {
			case *dns.A, *dns.AAAA:
				t.Fatalf("address record in additional: %s", rr)
			}
		}
	}
	if n := w.up.Count("https.test", dns.TypeHTTPS); n != 1 {
		t.Fatalf("upstream asked %d times", n)
	}
	m := w.ask(t, "tcp", "https.test", dns.TypeSVCB)
	if len(m.Answer) != 1 {
		t.Fatalf("SVCB answer %v", m.Answer)
	}
	if s := m.Answer[0].(*dns.SVCB); len(s.Value) != 1 || s.Value[0].Key() != dns.SVCB_PORT || s.Target != "svc.https.test." {
		t.Fatalf("SVCB %s", s)
	}
	if m := w.fw.Metrics(); m.ECHStripped != 3 {
		t.Fatalf("metrics %s", m)
	}
}

func TestCNAMEChainDecidedOnTheQueriedName(t *testing.T) {
	w := newWorld(t, ptr(baseDoc(1)))
	m := w.ask(t, "udp", "cname.test", dns.TypeA)
	wantRcode(t, m, dns.RcodeSuccess)
	if a := aRecords(m); !slices.Equal(a, []string{"203.0.113.20"}) {
		t.Fatalf("A %v\n%s", a, m)
	}
	want := []clawkerfw.Answer{{Name: "cname.test", IP: netip.MustParseAddr("203.0.113.20"), RuleIDs: []uint32{4}, TTL: 30}}
	if c := w.rep.Calls(); len(c) != 1 || !equalAnswers(c[0], want) {
		t.Fatalf("reports %+v", c)
	}
}

func TestPrivateAnswersDroppedUnlessAllowed(t *testing.T) {
	w := newWorld(t, ptr(baseDoc(1)))

	m := w.ask(t, "udp", "private.test", dns.TypeA)
	wantRcode(t, m, dns.RcodeSuccess)
	if a := aRecords(m); len(a) != 0 {
		t.Fatalf("private A reached the client: %v", a)
	}
	if code, _, ok := ede(m); !ok || code != dns.ExtendedErrorCodeFiltered {
		t.Fatalf("EDE %d %v", code, ok)
	}
	m = w.ask(t, "udp", "mixed.test", dns.TypeA)
	if a := aRecords(m); !slices.Equal(a, []string{"203.0.113.11"}) {
		t.Fatalf("mixed.test A %v", a)
	}
	calls := w.rep.Calls()
	if len(calls) != 1 || len(calls[0]) != 1 || calls[0][0].IP != netip.MustParseAddr("203.0.113.11") {
		t.Fatalf("reports %+v", calls)
	}
	if mt := w.fw.Metrics(); mt.Filtered != 3 || mt.EmptyAfter != 1 {
		t.Fatalf("metrics %s", mt)
	}

	// Allowing the private destination takes effect on the next query, even
	// though the answer now comes from the cache.
	doc := baseDoc(2)
	doc.PrivateDestinations = []string{"10.0.0.5/32"}
	if err := w.fw.SetDoc(doc); err != nil {
		t.Fatal(err)
	}
	m = w.ask(t, "udp", "private.test", dns.TypeA)
	if a := aRecords(m); !slices.Equal(a, []string{"10.0.0.5"}) {
		t.Fatalf("allowed private A %v", a)
	}
	if n := w.up.Count("private.test", dns.TypeA); n != 1 {
		t.Fatalf("upstream asked %d times", n)
	}
	// Only that address: the rest of the floor stays.
	if a := aRecords(w.ask(t, "udp", "mixed.test", dns.TypeA)); !slices.Equal(a, []string{"203.0.113.11"}) {
		t.Fatalf("mixed.test A %v", a)
	}
}

func TestReportFailureIsSERVFAIL(t *testing.T) {
	w := newWorld(t, ptr(baseDoc(1)), func(fw *clawkerfw.Firewall) { fw.ReportTimeout = 100 * time.Millisecond })
	w.rep.fail.Store(true)
	for _, net := range []string{"udp", "tcp"} {
		m := w.ask(t, net, "allowed.test", dns.TypeA)
		wantRcode(t, m, dns.RcodeServerFailure)
		if len(m.Answer) != 0 {
			t.Fatalf("answer %v", m.Answer)
		}
	}
	// A Reporter that does not answer in time fails the same way.
	w.rep.fail.Store(false)
	w.rep.mu.Lock()
	w.rep.gate = make(chan struct{})
	w.rep.mu.Unlock()
	start := time.Now()
	wantRcode(t, w.ask(t, "udp", "allowed.test", dns.TypeA), dns.RcodeServerFailure)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("SERVFAIL after %s", d)
	}
	close(w.rep.gate)
	wantRcode(t, w.ask(t, "udp", "allowed.test", dns.TypeA), dns.RcodeSuccess)
	_ = start
	if m := w.fw.Metrics(); m.ReportFailures != 3 {
		t.Fatalf("metrics %s", m)
	}
}

func TestNoPolicyRefusesAllButHealth(t *testing.T) {
	w := newWorld(t, nil)
	for _, net := range []string{"udp", "tcp"} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeHTTPS} {
			m := w.ask(t, net, "allowed.test", qt)
			wantRcode(t, m, dns.RcodeRefused)
		}
	}
	if n := w.up.Total(); n != 0 {
		t.Fatalf("upstream got %d queries", n)
	}
	if h := health(t, w, "udp"); !slices.Equal(h, []string{"generation=0", "rules=0"}) {
		t.Fatalf("health %v", h)
	}
	// The first policy opens it.
	if err := w.fw.SetDoc(baseDoc(1)); err != nil {
		t.Fatal(err)
	}
	wantRcode(t, w.ask(t, "udp", "allowed.test", dns.TypeA), dns.RcodeSuccess)
}

func TestPolicySwapTakesEffectOnTheNextQuery(t *testing.T) {
	w := newWorld(t, ptr(baseDoc(1)))
	if a := aRecords(w.ask(t, "udp", "allowed.test", dns.TypeA)); len(a) != 1 {
		t.Fatalf("A %v", a)
	}
	if err := w.fw.SetDoc(egressrules.Doc{Generation: 2, Rules: []egressrules.Entry{allow(9, "unlisted.test")}}); err != nil {
		t.Fatal(err)
	}
	// allowed.test is still in the cache: the policy must win over it.
	wantRcode(t, w.ask(t, "udp", "allowed.test", dns.TypeA), dns.RcodeNameError)
	m := w.ask(t, "tcp", "unlisted.test", dns.TypeA)
	if a := aRecords(m); !slices.Equal(a, []string{"203.0.113.50"}) {
		t.Fatalf("A %v", a)
	}
	calls := w.rep.Calls()
	if last := calls[len(calls)-1]; last[0].RuleIDs[0] != 9 {
		t.Fatalf("report %+v", last)
	}
	if h := health(t, w, "tcp"); !slices.Equal(h, []string{"generation=2", "rules=1"}) {
		t.Fatalf("health %v", h)
	}
}

func TestHealth(t *testing.T) {
	w := newWorld(t, ptr(baseDoc(42)))
	for _, net := range []string{"udp", "tcp"} {
		if h := health(t, w, net); !slices.Equal(h, []string{"generation=42", "rules=7"}) {
			t.Fatalf("%s health %v", net, h)
		}
	}
	// Other CH names are refused, not forwarded.
	m, err := ask("udp", w.udp, "version.bind", dns.TypeTXT, dns.ClassCHAOS)
	if err != nil {
		t.Fatal(err)
	}
	wantRcode(t, m, dns.RcodeRefused)
	if n := w.up.Total(); n != 0 {
		t.Fatalf("upstream got %d queries", n)
	}
	if m := w.fw.Metrics(); m.Health != 2 {
		t.Fatalf("metrics %s", m)
	}
}

func health(t testing.TB, w *world, net string) []string {
	t.Helper()
	m, err := ask(net, w.addr(net), clawkerfw.HealthName, dns.TypeTXT, dns.ClassCHAOS)
	if err != nil {
		t.Fatal(err)
	}
	wantRcode(t, m, dns.RcodeSuccess)
	if len(m.Answer) != 1 {
		t.Fatalf("health answer %v", m.Answer)
	}
	return m.Answer[0].(*dns.TXT).Txt
}

func equalAnswers(a, b []clawkerfw.Answer) bool {
	return slices.EqualFunc(a, b, func(x, y clawkerfw.Answer) bool {
		return x.Name == y.Name && x.IP == y.IP && x.TTL == y.TTL && slices.Equal(x.RuleIDs, y.RuleIDs)
	})
}

func ptr[T any](v T) *T { return &v }
