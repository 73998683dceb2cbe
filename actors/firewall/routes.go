package firewall

import (
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/actors/firewall/dns"
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// The kernel's route table: (identity, port, tcp) -> a dedicated listener
// of the proxy. Its main part comes from the rules: on every publish the
// routes of the new policy (egressrules.Policy.Routes, the assignment the
// proxy opens its listeners by) replace the old ones, through the action
// queue like every order. FirewallSyncRoutes sets extra routes by hand
// (tests of the kernel programs); they are kept across rule changes, and
// where one has the key of a rule's route, the rule's wins.

// routeState is the actor's part that owns the route table.
type routeState struct {
	rules []egress.Route // of the last published rules
	admin []egress.Route // the last FirewallSyncRoutes the kernel took
}

// ruleRoutes are the kernel routes of p, of the rules of every scope (a
// scoped rule's listener decides by the client's project); rules that need a listener and
// cannot have one are logged (their connections reach the catch-all, which
// refuses them).
func (a *Actor) ruleRoutes(p *egressrules.Policy) []egress.Route {
	proxyPort := a.addrs.Proxy.Port()
	rs := p.Routes(proxyPort, ProxyHealthPort(proxyPort))
	if rs.Unrouted != nil {
		a.rulesLog().Warn("some tcp, ssh or https-off-443 rules have no proxy listener; their connections are refused",
			zap.String("event", "firewall_routes_unavailable"), zap.Error(rs.Unrouted))
	}
	out := make([]egress.Route, 0, len(rs.Kernel))
	for _, k := range rs.Kernel {
		out = append(out, egress.Route{Identity: k.Identity, Port: k.Port, Proto: egress.TCP, ListenerPort: k.Listen})
	}
	return out
}

// mergedRoutes is the table to install: the rules' routes, then the hand
// routes whose key no rule route has.
func mergedRoutes(rules, admin []egress.Route) []egress.Route {
	type key struct {
		id    uint32
		port  uint16
		proto egress.Proto
	}
	out := append(make([]egress.Route, 0, len(rules)+len(admin)), rules...)
	seen := make(map[key]bool, len(rules))
	for _, r := range rules {
		seen[key{r.Identity, r.Port, r.Proto}] = true
	}
	for _, r := range admin {
		if !seen[key{r.Identity, r.Port, r.Proto}] {
			out = append(out, r)
		}
	}
	return out
}

// syncRuleRoutes orders the routes of a newly published policy into the
// kernel (called where its IP rules are), and has the DNS owner drop the
// ids of removed rules from the addresses it knows: routes are installed
// under a name's lowest live id, which must be what its addresses carry.
func (a *Actor) syncRuleRoutes(ctx actor.Context, p *egressrules.Policy) {
	a.routes.rules = a.ruleRoutes(p)
	a.enqueue(ctx, nil, &ebpf.SyncRoutes{Routes: mergedRoutes(a.routes.rules, a.routes.admin)}, nil)
	if a.dns != nil && p != nil {
		live := map[uint32]bool{}
		// The scoped rules are live too: a project's agents' answers carry
		// their ids, and the routes of a name only a project allows are
		// installed under them.
		for _, e := range append(p.Entries(), p.ScopedEntries()...) {
			live[e.ID] = true
		}
		ctx.Send(a.dns, &dns.ForgetRules{Live: live})
	}
}

// syncAdminRoutes is FirewallSyncRoutes: the hand routes are replaced,
// beside the rules' own; they are kept only once the kernel took them, so
// a refused set does not break the next rule change's sync.
func (a *Actor) syncAdminRoutes(ctx actor.Context, m *SyncRoutes) {
	reply := a.result(time.Time{})
	a.enqueue(ctx, ctx.Sender(), &ebpf.SyncRoutes{Routes: mergedRoutes(a.routes.rules, m.Routes)}, func(res interface{}, err error) interface{} {
		r := reply(res, err).(*Result)
		if r.Err == nil {
			a.routes.admin = m.Routes
		}
		return r
	})
}
