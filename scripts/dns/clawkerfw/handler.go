package clawkerfw

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/plugin"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"github.com/miekg/dns"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

var log = clog.NewWithPlugin(pluginName)

const pluginName = "clawkerfw"

// handler is one chain's view of a Firewall: the state is shared, next is
// per server block (and per reload).
type handler struct {
	fw   *Firewall
	next plugin.Handler
}

// Name implements plugin.Handler.
func (h *handler) Name() string { return pluginName }

// ServeDNS implements plugin.Handler. Every reply it lets through has been
// shaped and, for A records, reported; nothing from below reaches the client
// unseen because the chain below writes into a holdWriter.
func (h *handler) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	fw := h.fw
	fw.m.queries.Add(1)
	q := r.Question[0] // the server drops queries without a question
	var start time.Time
	if fw.QueryLog != nil {
		start = time.Now()
	}

	if q.Qclass == dns.ClassCHAOS && q.Qtype == dns.TypeTXT && strings.EqualFold(q.Name, HealthName) {
		fw.m.health.Add(1)
		return h.health(w, r)
	}
	pol := fw.policy.Load()
	if pol == nil {
		// Fail closed until the control plane has pushed a policy.
		fw.m.refused.Add(1)
		if fw.QueryLog != nil {
			fw.logQuery(start, clientAddr(w.RemoteAddr()), canonical(q.Name), q.Qtype, dns.RcodeRefused, VerdictRefusedNoPolicy, nil, nil)
		}
		return reply(w, r, dns.RcodeRefused, dns.ExtendedErrorCodeNotReady, "clawker-dns: no egress policy loaded yet")
	}
	if q.Qclass != dns.ClassINET {
		// CH/HS lookups (version.bind, ...) have no business upstream.
		fw.m.refused.Add(1)
		if fw.QueryLog != nil {
			fw.logQuery(start, clientAddr(w.RemoteAddr()), canonical(q.Name), q.Qtype, dns.RcodeRefused, VerdictRefusedClass, nil, nil)
		}
		return reply(w, r, dns.RcodeRefused, dns.ExtendedErrorCodeProhibited, "clawker-dns: only class IN is served")
	}
	// The rules that apply to the querying agent's project (every
	// project's for the proxy).
	name, client := canonical(q.Name), clientAddr(w.RemoteAddr())
	ids, ok := pol.ResolvableFrom(client, name)
	if !ok {
		// Answered here, authoritatively and without an SOA (so nothing
		// caches the denial past a policy change), and never sent upstream:
		// the query itself could carry data out.
		fw.m.nxdomain.Add(1)
		if fw.OnBlocked != nil {
			fw.OnBlocked(name, w.RemoteAddr())
		}
		fw.logQuery(start, client, name, q.Qtype, dns.RcodeNameError, VerdictNXDomainUnlisted, nil, nil)
		return reply(w, r, dns.RcodeNameError, dns.ExtendedErrorCodeBlocked, "clawker-dns: "+name+" is not in the egress policy")
	}
	if q.Qtype == dns.TypeAAAA {
		// The datapath is IPv4 only: an AAAA answer would be an unreported,
		// unenforced address. Empty NOERROR makes clients fall back to A.
		fw.m.aaaaEmpty.Add(1)
		fw.logQuery(start, client, name, q.Qtype, dns.RcodeSuccess, VerdictAAAAEmpty, ids, nil)
		return reply(w, r, dns.RcodeSuccess, 0, "")
	}

	fw.m.forwarded.Add(1)
	hw := &holdWriter{ResponseWriter: w}
	rcode, err := plugin.NextOrFailure(h.Name(), h.next, ctx, hw, r)
	if hw.msg == nil {
		// Nothing was written below (forward failed, ...): the server writes
		// the error reply, the errors plugin logs err.
		fw.logQuery(start, client, name, q.Qtype, dns.RcodeServerFailure, VerdictServfailUpstream, ids, nil)
		return rcode, err
	}
	out, answers, floored := h.shape(hw.msg, r, pol, name, ids)
	if len(answers) > 0 {
		rctx, cancel := context.WithTimeout(ctx, fw.reportTimeout())
		rerr := fw.Reporter.Report(rctx, answers)
		cancel()
		if rerr != nil {
			// Fail closed: an IP the control plane has not confirmed must not
			// reach the agent (its connect would race the datapath update).
			fw.m.reportFailures.Add(1)
			fw.logQuery(start, client, name, q.Qtype, dns.RcodeServerFailure, VerdictServfailReport, ids, answers)
			if reportLog.allow() {
				log.Errorf("report of %d answer(s) for %s failed, answering SERVFAIL: %v", len(answers), name, rerr)
			}
			return reply(w, r, dns.RcodeServerFailure, dns.ExtendedErrorCodeOther, "clawker-dns: the control plane did not confirm the answer")
		}
		fw.m.reported.Add(uint64(len(answers)))
	}
	if fw.QueryLog != nil {
		verdict := VerdictAllowed
		if floored {
			verdict = VerdictRefusedAnswerFloor
		}
		fw.logQuery(start, client, name, q.Qtype, out.Rcode, verdict, ids, answers)
	}
	if werr := w.WriteMsg(out); werr != nil {
		return dns.RcodeServerFailure, plugin.Error(pluginName, werr)
	}
	if !plugin.ClientWrite(rcode) {
		rcode = dns.RcodeSuccess // we wrote: the server must not write again
	}
	return rcode, err
}

// logQuery hands one decided query to the query log, if any. It runs on
// the reply path: a copy into a bounded channel, nothing else.
func (fw *Firewall) logQuery(start time.Time, client netip.Addr, name string, qtype uint16, rcode int, verdict string, ids []uint32, answers []Answer) {
	if fw.QueryLog == nil {
		return
	}
	now := time.Now()
	fw.QueryLog.add(queryEntry{
		time: now, client: client, name: name, qtype: qtype,
		rcode: rcode, verdict: verdict, ruleIDs: ids, answers: answers, duration: now.Sub(start),
	})
}

// shape returns the reply the client may see, the A records to report, and
// whether the answer floor left an A reply without any.
// resp is never modified: with cache below, its records may be the cache's.
func (h *handler) shape(resp, r *dns.Msg, p *egressrules.Policy, name string, ids []uint32) (*dns.Msg, []Answer, bool) {
	fw := h.fw
	qtype := r.Question[0].Qtype
	out := *resp // shallow: every section that changes gets a new slice
	var (
		answers []Answer
		hadA    bool
		dropped bool
	)
	keepA := func(rr *dns.A) bool {
		hadA = true
		ip, ok := netip.AddrFromSlice(rr.A)
		if !ok {
			return false
		}
		ip = ip.Unmap()
		if allowed, why := p.AnswerAllowed(ip); !allowed {
			fw.m.filtered.Add(1)
			dropped = true
			if fw.seen.first(name + "|" + ip.String()) {
				log.Warningf("dropped an A record of %s: %s", name, why)
			}
			return false
		}
		answers = append(answers, Answer{Name: name, IP: ip, RuleIDs: ids, TTL: rr.Hdr.Ttl})
		return true
	}
	section := func(rrs []dns.RR, reportable bool) []dns.RR {
		var res []dns.RR // nil until the first change
		for i, rr := range rrs {
			keep := rr
			switch v := rr.(type) {
			case *dns.AAAA:
				keep = nil // IPv4-only datapath, see ServeDNS
			case *dns.A:
				// A records reach the client only in answers to A queries,
				// where they are checked and reported; elsewhere (glue of
				// SRV/MX/NS) they would be unreported, so the client has to
				// ask for them by name.
				if !reportable || qtype != dns.TypeA || !keepA(v) {
					keep = nil
				}
			case *dns.HTTPS:
				if s := stripSVCB(&v.SVCB); s != nil {
					fw.m.echStripped.Add(1)
					keep = &dns.HTTPS{SVCB: *s}
				}
			case *dns.SVCB:
				if s := stripSVCB(v); s != nil {
					fw.m.echStripped.Add(1)
					keep = s
				}
			}
			if keep != rr && res == nil {
				res = make([]dns.RR, i, len(rrs))
				copy(res, rrs[:i])
			}
			if res != nil && keep != nil {
				res = append(res, keep)
			}
		}
		if res == nil {
			return rrs
		}
		return res
	}
	out.Answer = section(resp.Answer, true)
	out.Ns = section(resp.Ns, false)
	out.Extra = section(resp.Extra, true)

	floored := qtype == dns.TypeA && hadA && len(answers) == 0 && dropped
	if floored {
		fw.m.emptyAfter.Add(1)
		if fw.seen.first("empty|" + name) {
			log.Warningf("%s: every A record pointed into a denied range, answering NOERROR without A", name)
		}
		addEDE(&out, r, dns.ExtendedErrorCodeFiltered, "clawker-dns: the answers pointed into private or metadata ranges")
	}
	return &out, answers, floored
}

// stripSVCB returns a copy of s without ech (so the TLS SNI stays visible
// to the proxy) and without the address hints (addresses the client could
// dial without an A lookup, so unreported and unfiltered), or nil when s has
// none of them.
func stripSVCB(s *dns.SVCB) *dns.SVCB {
	strip := func(kv dns.SVCBKeyValue) bool {
		switch kv.Key() {
		case dns.SVCB_ECHCONFIG, dns.SVCB_IPV4HINT, dns.SVCB_IPV6HINT:
			return true
		}
		return false
	}
	n := 0
	for _, kv := range s.Value {
		if strip(kv) {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	c := *s
	c.Value = make([]dns.SVCBKeyValue, 0, len(s.Value)-n)
	for _, kv := range s.Value {
		if !strip(kv) {
			c.Value = append(c.Value, kv)
		}
	}
	return &c
}

func (h *handler) health(w dns.ResponseWriter, r *dns.Msg) (int, error) {
	p := h.fw.policy.Load() // nil: generation 0, no rules
	gen, rules := p.Generation(), p.Len()
	m := new(dns.Msg).SetReply(r)
	m.Authoritative = true
	m.Answer = []dns.RR{&dns.TXT{
		Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassCHAOS},
		Txt: []string{fmt.Sprintf("generation=%d", gen), fmt.Sprintf("rules=%d", rules)},
	}}
	if err := w.WriteMsg(m); err != nil {
		return dns.RcodeServerFailure, plugin.Error(pluginName, err)
	}
	return dns.RcodeSuccess, nil
}

// reply writes an answer made here. With EDNS, an Extended DNS Error says
// why (dig shows it), when text is set. It returns RcodeSuccess because the
// reply is written (CoreDNS's protocol: otherwise the server writes again).
func reply(w dns.ResponseWriter, r *dns.Msg, rcode int, ede uint16, text string) (int, error) {
	m := new(dns.Msg).SetRcode(r, rcode)
	m.Authoritative = rcode == dns.RcodeNameError || rcode == dns.RcodeSuccess
	m.RecursionAvailable = true
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(1232, opt.Do())
		if text != "" {
			addEDE(m, r, ede, text)
		}
	}
	if err := w.WriteMsg(m); err != nil {
		return dns.RcodeServerFailure, plugin.Error(pluginName, err)
	}
	return dns.RcodeSuccess, nil
}

// addEDE adds an Extended DNS Error to m's OPT record; with no OPT in m, it
// adds one if the request r had one. Slices and the OPT are copied first:
// they may be shared with the cache.
func addEDE(m *dns.Msg, r *dns.Msg, code uint16, text string) {
	e := &dns.EDNS0_EDE{InfoCode: code, ExtraText: text}
	for i, rr := range m.Extra {
		opt, ok := rr.(*dns.OPT)
		if !ok {
			continue
		}
		c := *opt
		c.Option = append(append([]dns.EDNS0(nil), opt.Option...), e)
		extra := append([]dns.RR(nil), m.Extra...)
		extra[i] = &c
		m.Extra = extra
		return
	}
	if ropt := r.IsEdns0(); ropt != nil {
		m.Extra = append(append([]dns.RR(nil), m.Extra...), &dns.OPT{
			Hdr:    dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: 1232},
			Option: []dns.EDNS0{e},
		})
	}
}

// canonical is the form names take in the policy and in reports.
func canonical(qname string) string {
	return strings.TrimSuffix(strings.ToLower(qname), ".")
}

// holdWriter keeps what the chain below writes instead of sending it, so the
// reply can be shaped and reported first.
type holdWriter struct {
	dns.ResponseWriter
	msg *dns.Msg
}

func (hw *holdWriter) WriteMsg(m *dns.Msg) error {
	hw.msg = m
	return nil
}

func (hw *holdWriter) Write(b []byte) (int, error) {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return 0, err
	}
	hw.msg = m
	return len(b), nil
}

// limiter lets one line through per interval (a dead control plane would
// otherwise log every query).
type limiter struct{ last atomic.Int64 }

var reportLog limiter

func (l *limiter) allow() bool {
	now := time.Now().UnixNano()
	last := l.last.Load()
	return now-last >= int64(time.Second) && l.last.CompareAndSwap(last, now)
}
