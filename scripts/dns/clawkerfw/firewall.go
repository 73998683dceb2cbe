// Package clawkerfw is the CoreDNS plugin of clawker-dns: it decides every
// agent query on the queried name against an egressrules.Policy, filters the
// answers (no AAAA, no private/metadata A records, no ECH), and reports each
// surviving A record to the control plane BEFORE the client sees it, so the
// datapath knows the IP by the time the agent connects (Cilium's lesson).
//
// It sits above `cache` in the chain so a cached answer is filtered and
// reported exactly like a fresh one.
package clawkerfw

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// HealthName is answered (class CH, type TXT) with the policy generation and
// rule count, without consulting the policy or the upstream.
const HealthName = "health.clawker-dns."

// DefaultReportTimeout bounds how long an answer is held for the Reporter.
const DefaultReportTimeout = time.Second

// Answer is one A record that is about to reach an agent.
type Answer struct {
	Name    string     // the QUERIED name, lower case, no trailing dot (not a CNAME target)
	IP      netip.Addr // IPv4
	RuleIDs []uint32   // the rules that made Name resolvable; shared between the answers of one reply, read only
	TTL     uint32     // as the client will see it (the remaining TTL for a cached answer)
}

// Reporter tells the control plane which IPs an agent is about to learn. The
// reply is held until Report returns; an error turns it into SERVFAIL.
type Reporter interface {
	Report(ctx context.Context, answers []Answer) error
}

// ReporterFunc adapts a function to Reporter.
type ReporterFunc func(ctx context.Context, answers []Answer) error

// Report implements Reporter.
func (f ReporterFunc) Report(ctx context.Context, answers []Answer) error { return f(ctx, answers) }

// AcceptAll is the Reporter for standalone use (--no-report): it tells no one.
var AcceptAll Reporter = ReporterFunc(func(context.Context, []Answer) error { return nil })

// Firewall is the state shared by every server block and reload that names
// it: the policy, the Reporter and the counters. Create it with New, set
// Reporter (and ReportTimeout) before the server starts, Register it, then
// swap policies at any time with SetPolicy.
type Firewall struct {
	// Reporter receives every surviving A record before the reply is written.
	// Must be set before the server starts; it is not read under a lock.
	Reporter Reporter
	// ReportTimeout bounds one Report call (default DefaultReportTimeout).
	ReportTimeout time.Duration
	// OnBlocked, when set, is told about every name answered NXDOMAIN
	// because no rule allows it (for `clawker firewall denied`). It must
	// not block: it runs on the query's path.
	OnBlocked func(name string, client net.Addr)
	// QueryLog, when set before the server starts, gets one line per
	// decided query (health probes excepted); nil costs nothing.
	QueryLog *QueryLog

	policy atomic.Pointer[egressrules.Policy]
	m      counters
	seen   seenSet
}

// New returns a Firewall with no policy (everything REFUSED) and no Reporter.
func New() *Firewall { return &Firewall{ReportTimeout: DefaultReportTimeout} }

// SetPolicy swaps the policy in place; the next query uses it. A nil policy
// puts the firewall back to refusing everything.
func (f *Firewall) SetPolicy(p *egressrules.Policy) { f.policy.Store(p) }

// SetDoc compiles doc and swaps it in; a doc that does not compile leaves
// the policy in force untouched.
func (f *Firewall) SetDoc(doc egressrules.Doc) error {
	p, err := doc.Compile()
	if err != nil {
		return fmt.Errorf("compile policy generation %d: %w", doc.Generation, err)
	}
	f.SetPolicy(p)
	return nil
}

// Policy returns the policy in force, or nil.
func (f *Firewall) Policy() *egressrules.Policy { return f.policy.Load() }

func (f *Firewall) reportTimeout() time.Duration {
	if f.ReportTimeout > 0 {
		return f.ReportTimeout
	}
	return DefaultReportTimeout
}

// --- registry -----------------------------------------------------------------

// The Corefile names a Firewall (`clawkerfw NAME`) instead of configuring one,
// because the Reporter and the policy watcher are Go objects the main wires
// before CoreDNS parses the Corefile; a reload finds the same state again.
var (
	regMu    sync.Mutex
	registry = map[string]*Firewall{}
)

// Register makes f the Firewall of every `clawkerfw NAME` directive.
func Register(name string, f *Firewall) {
	regMu.Lock()
	defer regMu.Unlock()
	registry[name] = f
}

// Unregister drops a name (tests start many servers in one process).
func Unregister(name string) {
	regMu.Lock()
	defer regMu.Unlock()
	delete(registry, name)
}

func lookup(name string) *Firewall {
	regMu.Lock()
	defer regMu.Unlock()
	return registry[name]
}

// --- metrics ------------------------------------------------------------------

// Metrics is a snapshot of the counters since start.
type Metrics struct {
	Queries        uint64 // every query the plugin saw, health included
	Health         uint64 // health probes answered
	Refused        uint64 // refused: no policy yet, or a class other than IN
	NXDomain       uint64 // names the policy does not resolve (no upstream query)
	AAAAEmpty      uint64 // AAAA of allowed names answered empty (no upstream query)
	Forwarded      uint64 // queries passed down to cache/forward
	Filtered       uint64 // A records dropped by the rebinding floor
	EmptyAfter     uint64 // A replies left with no A record after filtering
	ECHStripped    uint64 // HTTPS/SVCB records that lost ech (or address hints)
	Reported       uint64 // A records reported
	ReportFailures uint64 // replies turned into SERVFAIL because Report failed
	QueryLogLost   uint64 // query-log lines dropped because the writer lagged
}

// String renders the snapshot as one log-friendly line.
func (m Metrics) String() string {
	return fmt.Sprintf("queries=%d health=%d refused=%d nxdomain=%d aaaa_empty=%d forwarded=%d "+
		"filtered=%d empty_after_filter=%d ech_stripped=%d reported=%d report_failures=%d query_log_lost=%d",
		m.Queries, m.Health, m.Refused, m.NXDomain, m.AAAAEmpty, m.Forwarded,
		m.Filtered, m.EmptyAfter, m.ECHStripped, m.Reported, m.ReportFailures, m.QueryLogLost)
}

type counters struct {
	queries, health, refused, nxdomain, aaaaEmpty, forwarded,
	filtered, emptyAfter, echStripped, reported, reportFailures atomic.Uint64
}

// Metrics returns the counters.
func (f *Firewall) Metrics() Metrics {
	c := &f.m
	var lost uint64
	if f.QueryLog != nil {
		lost = f.QueryLog.Dropped()
	}
	return Metrics{
		Queries: c.queries.Load(), Health: c.health.Load(), Refused: c.refused.Load(),
		NXDomain: c.nxdomain.Load(), AAAAEmpty: c.aaaaEmpty.Load(), Forwarded: c.forwarded.Load(),
		Filtered: c.filtered.Load(), EmptyAfter: c.emptyAfter.Load(), ECHStripped: c.echStripped.Load(),
		Reported: c.reported.Load(), ReportFailures: c.reportFailures.Load(), QueryLogLost: lost,
	}
}

// --- log once -----------------------------------------------------------------

// seenSet remembers which (name, ip) drops were logged, so an agent retrying
// in a loop does not flood the log. It is bounded: when full it starts over,
// which at worst logs a drop again.
type seenSet struct {
	mu sync.Mutex
	m  map[string]struct{}
}

const seenMax = 4096

// first reports whether key is new (and remembers it).
func (s *seenSet) first(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[key]; ok {
		return false
	}
	if s.m == nil || len(s.m) >= seenMax {
		s.m = make(map[string]struct{}, 64)
	}
	s.m[key] = struct{}{}
	return true
}
