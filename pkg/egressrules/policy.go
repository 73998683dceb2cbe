package egressrules

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Doc is the policy as the control plane pushes it to the DNS sibling and
// the egress proxy.
type Doc struct {
	Generation          uint64   `json:"generation"`
	Rules               []Entry  `json:"rules"`
	PrivateDestinations []string `json:"private_destinations,omitempty"`
	// Agents maps an agent's IPv4 address on the agent network to its
	// project, as the control plane learnt both from Docker (the address
	// Docker gave the container, the dev.clawker.project label clawker run
	// set): the siblings decide a client's connections and queries by the
	// rules that apply to its project (Policy.ForSource). An address not
	// listed gets the global rules only.
	Agents map[string]string `json:"agents,omitempty"`
	// Proxies are the egress proxy's addresses on the agent network. The
	// proxy resolves for the agents of every project, having decided each
	// connection by its client's project already, so the DNS sibling
	// answers its queries by every project's rules (Policy.ResolvableFrom).
	Proxies []string `json:"proxies,omitempty"`
}

// Compile validates the doc (every bad rule field, every bad private
// destination and every id given to two rules is reported) and compiles it.
func (d Doc) Compile() (*Policy, error) {
	var errs []error
	rules := make([]Rule, len(d.Rules))
	for i, e := range d.Rules {
		rules[i] = e.Rule
	}
	if _, err := Validate(rules); err != nil {
		errs = append(errs, err)
	}
	ruleWithID := make(map[uint32]string, len(d.Rules))
	for i, e := range d.Rules {
		if e.ID == 0 {
			continue
		}
		key := e.Rule.Key()
		if other, dup := ruleWithID[e.ID]; dup && other != key {
			errs = append(errs, &FieldError{Index: i, Field: "id", Value: strconv.FormatUint(uint64(e.ID), 10),
				Msg: "also the id of " + other + " (every rule needs its own id)"})
		}
		ruleWithID[e.ID] = key
	}
	private := make([]netip.Prefix, 0, len(d.PrivateDestinations))
	for i, s := range d.PrivateDestinations {
		p, err := parsePrefixOrAddr(s)
		if err != nil {
			errs = append(errs, &FieldError{Index: -1, Field: fmt.Sprintf("private_destinations[%d]", i), Value: s,
				Msg: "not an IP address or CIDR (write 172.30.0.1 or 172.30.0.0/16)"})
			continue
		}
		private = append(private, p)
	}
	agents, agentErrs := parseAgents(d.Agents)
	errs = append(errs, agentErrs...)
	proxies, proxyErrs := parseProxies(d.Proxies)
	errs = append(errs, proxyErrs...)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	p := Compile(d.Rules, private)
	p.generation = d.Generation
	p.scope.agents, p.scope.proxies = agents, proxies
	return p, nil
}

func parsePrefixOrAddr(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Decision is the verdict on one connection or name.
type Decision struct {
	Allow bool
	// Rule is the rule that decided, nil when none applied. It points into
	// the Policy: do not modify it.
	Rule   *Entry
	Reason string
	// Paths is non-nil when the deciding allow rule has path rules: the
	// connection is to be inspected and every request decided by it.
	Paths *PathPolicy
}

// compiledRule is a rule as a bucket holds it, with its reasons prebuilt so
// that Decide does not format strings on the allow path.
type compiledRule struct {
	proto  Proto
	port   PortRange
	deny   bool
	entry  *Entry
	reason string
	paths  *PathPolicy // allow rules with path rules only
}

// bucket holds the rules that share one dst (a name, a wildcard suffix or
// a prefix): they all have the same specificity.
type bucket struct {
	rules  []compiledRule
	prefix netip.Prefix // IP buckets only
	// resolvable/ids: the precomputed Resolvable answer for a name whose
	// most specific matching bucket is this one (see resolvableOf).
	resolvable bool
	ids        []uint32
}

// decide applies the bucket's rules; ok is false when none applies. Of
// several applicable allow rules (overlapping port ranges), the first with
// path rules decides: a broader plain rule must not switch inspection off.
func (b *bucket) decide(proto Proto, port uint16) (d Decision, ok bool) {
	var allow *compiledRule
	for i := range b.rules {
		r := &b.rules[i]
		if r.proto != proto || !r.port.Contains(port) {
			continue
		}
		if r.deny {
			return Decision{Allow: false, Rule: r.entry, Reason: r.reason}, true
		}
		if allow == nil || (allow.paths == nil && r.paths != nil) {
			allow = r
		}
	}
	if allow == nil {
		return Decision{}, false
	}
	return Decision{Allow: true, Rule: allow.entry, Reason: allow.reason, Paths: allow.paths}, true
}

// Policy is a compiled, immutable rule set, safe for concurrent use. The
// Policy Compile returns is the global view: the rules without projects.
// For(project) is the view of one project's agents.
type Policy struct {
	generation uint64
	entries    []Entry                  // the rules of this view
	exact      map[string]*bucket       // exact name -> its rules
	wild       map[string]*bucket       // ".example.com" is stored under "example.com"
	ip         map[netip.Prefix]*bucket // masked prefix (an address is a /32)
	ipBits     []int                    // prefix lengths present in ip, longest first
	private    []netip.Prefix
	scope      *scope // shared by the global view and every project's
}

// Compile builds a Policy from entries (as Store.List returns them) and the
// private destinations that open restricted addresses. Entries are
// canonicalised; an invalid entry is left out (Doc.Compile reports them).
// The policy's generation is 0. It is the global view: rules with projects
// are kept for For.
func Compile(entries []Entry, private []netip.Prefix) *Policy {
	sc := &scope{projects: map[string]bool{}}
	p := compileView(entries, private, "", sc)
	sc.global = p
	return p
}

// compileView compiles the entries that apply to project's agents (the
// global ones for ""); the scoped entries of a global compile are kept in
// sc.scoped.
func compileView(entries []Entry, private []netip.Prefix, project string, sc *scope) *Policy {
	p := &Policy{
		scope: sc,
		exact: make(map[string]*bucket),
		wild:  make(map[string]*bucket),
		ip:    make(map[netip.Prefix]*bucket),
	}
	for _, pfx := range private {
		if pfx.IsValid() {
			p.private = append(p.private, pfx.Masked())
		}
	}
	p.entries = make([]Entry, 0, len(entries))
	for _, e := range entries {
		c := e.Rule
		if project == "" { // a project's view is built from canonical entries
			var err error
			if c, err = e.Rule.Canonical(); err != nil {
				continue
			}
		}
		if project == "" && len(c.Projects) > 0 {
			sc.scoped = append(sc.scoped, Entry{Rule: c, ID: e.ID})
			for _, name := range c.Projects {
				sc.projects[name] = true
			}
		}
		if !c.AppliesTo(project) {
			continue
		}
		p.entries = append(p.entries, Entry{Rule: c, ID: e.ID})
	}
	// Sorted entries make a bucket's first applicable allow rule, and so
	// every Decision.Rule, independent of the input order.
	slices.SortStableFunc(p.entries, func(a, b Entry) int {
		return cmp.Or(compareRules(a.Rule, b.Rule), cmp.Compare(a.ID, b.ID))
	})

	bitsSeen := map[int]bool{}
	for i := range p.entries {
		e := &p.entries[i]
		verb := "allowed by "
		if e.Action == Deny {
			verb = "denied by "
		}
		cr := compiledRule{proto: e.Proto, port: e.Port, deny: e.Action == Deny, entry: e, reason: verb + e.key()}
		if !cr.deny {
			cr.paths = compilePaths(e.PathRules, e.PathDefault)
		}
		var b *bucket
		switch {
		case e.IsIP():
			pfx, _ := parsePrefixOrAddr(e.Dst)
			if b = p.ip[pfx]; b == nil {
				b = &bucket{prefix: pfx}
				p.ip[pfx] = b
			}
			if !bitsSeen[pfx.Bits()] {
				bitsSeen[pfx.Bits()] = true
				p.ipBits = append(p.ipBits, pfx.Bits())
			}
		case e.IsWildcard():
			if b = p.wild[e.Dst[1:]]; b == nil {
				b = &bucket{}
				p.wild[e.Dst[1:]] = b
			}
		default:
			if b = p.exact[e.Dst]; b == nil {
				b = &bucket{}
				p.exact[e.Dst] = b
			}
		}
		b.rules = append(b.rules, cr)
	}
	slices.SortFunc(p.ipBits, func(a, b int) int { return cmp.Compare(b, a) })

	for name, b := range p.exact {
		b.ids, b.resolvable = resolvableOf(append([]*bucket{b}, p.wildChain(name)...))
	}
	for suffix, b := range p.wild {
		b.ids, b.resolvable = resolvableOf(p.wildChain(suffix))
	}
	return p
}

// wildChain lists the wildcard buckets matching name, most specific first.
func (p *Policy) wildChain(name string) []*bucket {
	var chain []*bucket
	for s := name; ; {
		if b := p.wild[s]; b != nil {
			chain = append(chain, b)
		}
		i := strings.IndexByte(s, '.')
		if i < 0 {
			return chain
		}
		s = s[i+1:]
	}
}

// Len is the number of rules compiled in.
func (p *Policy) Len() int {
	if p == nil {
		return 0
	}
	return len(p.entries)
}

// Generation is the Doc generation the policy was compiled from.
func (p *Policy) Generation() uint64 {
	if p == nil {
		return 0
	}
	return p.generation
}

// Entries returns a copy of the compiled (canonical, sorted) entries.
func (p *Policy) Entries() []Entry {
	if p == nil {
		return nil
	}
	return slices.Clone(p.entries)
}

// normalHost lower-cases host and trims one trailing dot, allocating only
// when host has upper-case letters.
func normalHost(host string) string {
	return strings.ToLower(strings.TrimSuffix(host, "."))
}

// looksNumeric reports a host made of digits and dots only: the only names
// worth handing to netip.ParseAddr, whose errors allocate.
func looksNumeric(h string) bool {
	for i := 0; i < len(h); i++ {
		if c := h[i]; c != '.' && (c < '0' || c > '9') {
			return false
		}
	}
	return h != ""
}

// Decide judges a connection to host (a name or an IPv4 literal) on proto
// and port by the precedence in the package comment. A nil Policy denies
// everything.
func (p *Policy) Decide(host string, proto Proto, port uint16) Decision {
	h := normalHost(host)
	if h == "" {
		return Decision{Reason: "empty host: nothing to allow"}
	}
	if looksNumeric(h) {
		if ip, err := netip.ParseAddr(h); err == nil {
			return p.decideIP(ip, h, proto, port)
		}
	}
	if strings.IndexByte(h, ':') >= 0 {
		if ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")); err == nil && ip.Is6() {
			return Decision{Reason: "IPv6 destination " + h + " refused: agents have no IPv6 egress"}
		}
	}
	if !validHost(h) {
		return Decision{Reason: "invalid host " + strconv.Quote(host) + ": not a domain name or IPv4 address"}
	}
	if p != nil {
		if b := p.exact[h]; b != nil {
			if d, ok := b.decide(proto, port); ok {
				return d
			}
		}
		for s := h; ; {
			if b := p.wild[s]; b != nil {
				if d, ok := b.decide(proto, port); ok {
					return d
				}
			}
			i := strings.IndexByte(s, '.')
			if i < 0 {
				break
			}
			s = s[i+1:]
		}
	}
	return noRule(h, proto, port)
}

func noRule(h string, proto Proto, port uint16) Decision {
	return Decision{Reason: "no rule allows " + h + " on " + string(proto) + "/" + strconv.Itoa(int(port))}
}

func (p *Policy) decideIP(ip netip.Addr, h string, proto Proto, port uint16) Decision {
	if p == nil {
		return noRule(h, proto, port)
	}
	for _, bits := range p.ipBits {
		pfx, err := ip.Prefix(bits)
		if err != nil {
			continue
		}
		b := p.ip[pfx]
		if b == nil {
			continue
		}
		d, ok := b.decide(proto, port)
		if !ok {
			continue
		}
		if d.Allow {
			if reason, refused := p.ipFloor(ip, b.prefix); refused {
				return Decision{Allow: false, Rule: d.Rule, Reason: reason}
			}
		}
		return d
	}
	return noRule(h, proto, port)
}

// ipFloor refuses a restricted address allowed by a rule broader than the
// restricted block holding it (0.0.0.0/0 must not open 169.254.169.254),
// unless a private destination holds the address.
func (p *Policy) ipFloor(ip netip.Addr, rule netip.Prefix) (string, bool) {
	blk, restricted := restrictedBlockOf(ip)
	if !restricted {
		return "", false
	}
	if rule.Bits() >= blk.prefix.Bits() && blk.prefix.Contains(rule.Addr()) {
		return "", false
	}
	if p.privateHolds(ip) {
		return "", false
	}
	return ip.String() + " is " + blk.class + ": " + rule.String() + " is too broad to open it " +
		"(write a rule for " + blk.prefix.String() + " or narrower, or add it to firewall.private_destinations)", true
}

func (p *Policy) privateHolds(ip netip.Addr) bool {
	_, ok := p.privateHolding(ip)
	return ok
}

func (p *Policy) privateHolding(ip netip.Addr) (netip.Prefix, bool) {
	if p == nil {
		return netip.Prefix{}, false
	}
	ip = ip.WithZone("")
	for _, pfx := range p.private {
		if pfx.Contains(ip) || (ip.Is4In6() && pfx.Contains(ip.Unmap())) {
			return pfx, true
		}
	}
	return netip.Prefix{}, false
}

// Resolvable tells the DNS sibling whether to resolve name: ok iff Decide
// would allow the name on some proto and port. ids are the allow rules that
// would decide so, sorted and deduplicated; when several allow rules of the
// same dst cover a port, all of them are listed. The slice is shared: do not
// modify its elements. IP literals and invalid names are not resolvable.
func (p *Policy) Resolvable(name string) (ids []uint32, ok bool) {
	if p == nil {
		return nil, false
	}
	h := normalHost(name)
	if !validHost(h) {
		return nil, false
	}
	if b := p.exact[h]; b != nil {
		return b.ids, b.resolvable
	}
	for s := h; ; {
		if b := p.wild[s]; b != nil {
			return b.ids, b.resolvable
		}
		i := strings.IndexByte(s, '.')
		if i < 0 {
			return nil, false
		}
		s = s[i+1:]
	}
}

// AnswerAllowed is the DNS-rebinding floor: an answer pointing at a
// restricted address (see Restricted) is refused, with a reason, unless a
// private destination holds it. The reason of an allowed answer is empty,
// or names the private destination that opened it.
func (p *Policy) AnswerAllowed(ip netip.Addr) (bool, string) {
	class, restricted := Restricted(ip)
	if !restricted {
		return true, ""
	}
	if pfx, ok := p.privateHolding(ip); ok {
		return true, "private destination " + pfx.String()
	}
	return false, ip.String() + " is " + class + ": answers pointing there are dropped " +
		"(add it to firewall.private_destinations to allow it)"
}

// span is an inclusive port interval; int so that hi+1 cannot overflow.
type span struct{ lo, hi int }

// subtractSpan removes s from the sorted, disjoint set.
func subtractSpan(set []span, s span) []span {
	out := make([]span, 0, len(set)+1)
	for _, x := range set {
		if x.hi < s.lo || x.lo > s.hi {
			out = append(out, x)
			continue
		}
		if x.lo < s.lo {
			out = append(out, span{x.lo, s.lo - 1})
		}
		if x.hi > s.hi {
			out = append(out, span{s.hi + 1, x.hi})
		}
	}
	return out
}

func intersectSpan(set []span, s span) []span {
	var out []span
	for _, x := range set {
		lo, hi := max(x.lo, s.lo), min(x.hi, s.hi)
		if lo <= hi {
			out = append(out, span{lo, hi})
		}
	}
	return out
}

var allProtos = []Proto{HTTPS, HTTP, TCP, SSH}

// resolvableOf answers Resolvable for a name whose matching buckets are
// chain, most specific first. Per proto it walks the chain with the set of
// ports no more specific bucket has decided yet: an allow rule counts when
// some of its ports are in that set and not denied by its own bucket. Done
// once per bucket at compile time, so Resolvable is a few map lookups.
func resolvableOf(chain []*bucket) ([]uint32, bool) {
	var ids []uint32
	ok := false
	for _, proto := range allProtos {
		open := []span{{1, 65535}}
		for _, b := range chain {
			if len(open) == 0 {
				break
			}
			var denied []span
			for _, r := range b.rules {
				if r.proto == proto && r.deny {
					denied = append(denied, span{int(r.port.Lo), int(r.port.Hi)})
				}
			}
			for _, r := range b.rules {
				if r.proto != proto || r.deny {
					continue
				}
				allowed := intersectSpan(open, span{int(r.port.Lo), int(r.port.Hi)})
				for _, d := range denied {
					allowed = subtractSpan(allowed, d)
				}
				if len(allowed) > 0 {
					ok = true
					ids = append(ids, r.entry.ID)
				}
			}
			for _, r := range b.rules {
				if r.proto == proto {
					open = subtractSpan(open, span{int(r.port.Lo), int(r.port.Hi)})
				}
			}
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	return ids[:len(ids):len(ids)], ok
}
