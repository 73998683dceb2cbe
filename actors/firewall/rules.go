package firewall

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// The egress rules. The store is a file under Config.RulesDir; its
// mutations run here, on the mailbox, so two batches never interleave
// (the store's own file lock guards against other processes). Store I/O
// takes a few milliseconds, which the mailbox can afford. After every
// change the whole store is handed to Config.Publish as a Doc whose
// generation only grows, so a consumer can drop a stale Doc.
//
// Rules are stored whatever firewall.enable says: they are configuration,
// and can be prepared before the firewall is switched on.

// rulesState is the actor's part that owns the store.
type rulesState struct {
	store *egressrules.Store // nil without Config.RulesDir
	gen   uint64             // generation of the last Doc published
	count int                // rules at the last successful read
	// kernel holds the IP and CIDR rules of the last publish until they
	// are ordered into the kernel (flushIPRules, after the message that
	// published them); nil when nothing is pending.
	kernel *egressrules.Doc
}

// errNoRuleStore answers every rule request of a firewall started without
// Config.RulesDir.
var errNoRuleStore = fmt.Errorf("%w: not configured (this control plane runs without a rules directory)", ErrRuleStore)

// startRules opens the store and publishes what it holds. The generation
// starts at the boot instant in nanoseconds, so the Docs of a restarted
// actor or control plane never go backwards.
func (a *Actor) startRules() {
	a.rules.gen = uint64(time.Now().UnixNano())
	if a.cfg.RulesDir == "" {
		return
	}
	a.rules.store = egressrules.OpenStore(a.cfg.RulesDir)
	entries, err := a.rules.store.List()
	if err != nil {
		// Nothing is published: the stack keeps refusing every
		// destination (fail closed) until a reload or a change succeeds.
		a.rulesLog().Error("cannot read the egress rule store", zap.String("event", "egress_rules_load_failed"),
			zap.String("dir", a.cfg.RulesDir), zap.Error(err))
		return
	}
	a.publish(entries)
	a.rulesLog().Info("egress rules loaded", zap.String("event", "egress_rules_loaded"),
		zap.Int("rules", len(entries)), zap.Uint64("generation", a.rules.gen))
}

func (a *Actor) addRules(ctx actor.Context, m *AddRules) {
	gen := a.rules.gen
	a.answerApplied(ctx, ctx.Sender(), a.doAddRules(m), gen)
}

// appliedWait bounds how long a rule change waits for the siblings to
// apply it before it is answered anyway.
const appliedWait = 2 * time.Second

// answerApplied answers a rule change once both running siblings applied
// the policy it published (if it published one): a connection opened
// after the answer is decided by the new rules. The wait runs off the
// mailbox; the next order may start meanwhile.
func (a *Actor) answerApplied(ctx actor.Context, to *actor.PID, res *RulesResult, genBefore uint64) {
	gen := a.rules.gen
	if res.Err != nil || gen == genBefore || a.cfg.Stack == nil || to == nil {
		a.answer(ctx, to, res)
		return
	}
	srv, sys, log := a.cfg.Stack.Server, ctx.ActorSystem(), a.rulesLog()
	go func() {
		wctx, cancel := context.WithTimeout(context.Background(), appliedWait)
		defer cancel()
		start := time.Now()
		if err := srv.WaitApplied(wctx, gen); err != nil {
			// Answered anyway: the change is stored and published; a
			// sibling that is this slow is reported by its health check.
			log.Warn("a firewall sibling has not applied the new rules yet", zap.String("event", "egress_rules_apply_slow"),
				zap.Uint64("generation", gen), zap.Error(err))
		} else {
			log.Debug("egress rules applied by the stack", zap.String("event", "egress_rules_applied"),
				zap.Uint64("generation", gen), zap.Duration("took", time.Since(start)))
		}
		sys.Root.Send(to, res)
	}()
}

func (a *Actor) doAddRules(m *AddRules) *RulesResult {
	if err := a.rulesMutable(); err != nil {
		return &RulesResult{Err: err}
	}
	// Validate first: a batch with one bad rule stores nothing, and the
	// error names every bad field at once.
	rules, err := egressrules.Validate(m.Rules)
	if err != nil {
		return &RulesResult{Err: err}
	}
	if err := egressrules.CheckRoutable(rules); err != nil {
		return &RulesResult{Err: err}
	}
	// The rules as given: the store tells an omitted path_default (keep
	// the stored one) from a written one, which Validate's form does not.
	statuses, entries, err := a.rules.store.Add(m.Rules)
	if err != nil {
		return &RulesResult{Err: storeErr(err)}
	}
	changed := 0
	for _, st := range statuses {
		if st != egressrules.Unchanged {
			changed++
		}
	}
	if changed > 0 {
		a.publish(entries)
	}
	a.rulesLog().Info("egress rules added", zap.String("event", "egress_rules_added"),
		zap.Int("asked", len(rules)), zap.Int("changed", changed), zap.Int("rules", len(entries)))
	return &RulesResult{Statuses: statuses, Rules: entries}
}

func (a *Actor) removeRule(ctx actor.Context, m *RemoveRule) {
	gen := a.rules.gen
	a.answerApplied(ctx, ctx.Sender(), a.doRemoveRule(m), gen)
}

func (a *Actor) doRemoveRule(m *RemoveRule) *RulesResult {
	if err := a.rulesMutable(); err != nil {
		return &RulesResult{Err: err}
	}
	if m.All {
		n, entries, err := a.rules.store.RemoveAll()
		if err != nil {
			return &RulesResult{Err: storeErr(err)}
		}
		if n > 0 {
			a.publish(entries)
		}
		a.rulesLog().Info("egress rules removed", zap.String("event", "egress_rules_removed"),
			zap.Bool("all", true), zap.Int("removed", n), zap.Int("rules", len(entries)))
		return &RulesResult{Statuses: []egressrules.Status{egressrules.Removed}, Removed: n, Rules: entries}
	}
	rule, err := m.Rule.Canonical()
	if err != nil {
		return &RulesResult{Err: err}
	}
	if m.Path != "" {
		return a.removePath(rule, m.Path)
	}
	st, entries, err := a.rules.store.Remove(rule)
	if err != nil {
		return &RulesResult{Err: storeErr(err)}
	}
	n := 0
	if st == egressrules.Removed {
		n = 1
		a.publish(entries)
	}
	a.rulesLog().Info("egress rule removed", zap.String("event", "egress_rules_removed"),
		zap.String("rule", rule.Key()), zap.String("status", string(st)), zap.Int("rules", len(entries)))
	return &RulesResult{Statuses: []egressrules.Status{st}, Removed: n, Rules: entries}
}

// removePath removes one path rule of rule; no rule is removed.
func (a *Actor) removePath(rule egressrules.Rule, path string) *RulesResult {
	st, entries, err := a.rules.store.RemovePath(rule, path)
	if err != nil {
		return &RulesResult{Err: storeErr(err)}
	}
	if st == egressrules.PathRemoved {
		a.publish(entries)
	}
	a.rulesLog().Info("egress path rule removed", zap.String("event", "egress_rules_path_removed"),
		zap.String("rule", rule.Key()), zap.String("path", path), zap.String("status", string(st)), zap.Int("rules", len(entries)))
	return &RulesResult{Statuses: []egressrules.Status{st}, Rules: entries}
}

// listRules is a read: it is answered after the queue closed too.
func (a *Actor) listRules(ctx actor.Context) {
	res := &RulesResult{}
	if a.rules.store == nil {
		res.Err = errNoRuleStore
	} else if res.Rules, res.Err = a.rules.store.List(); res.Err != nil {
		res.Err = storeErr(res.Err)
	}
	a.answer(ctx, ctx.Sender(), res)
}

func (a *Actor) reloadRules(ctx actor.Context) {
	gen := a.rules.gen
	res := &RulesResult{}
	if res.Err = a.rulesMutable(); res.Err == nil {
		if res.Rules, res.Err = a.rules.store.List(); res.Err != nil {
			res.Err = storeErr(res.Err)
		} else {
			a.publish(res.Rules)
			a.rulesLog().Info("egress rules reloaded", zap.String("event", "egress_rules_reloaded"),
				zap.Int("rules", len(res.Rules)), zap.Uint64("generation", a.rules.gen))
		}
	}
	a.answerApplied(ctx, ctx.Sender(), res, gen)
}

// rulesMutable refuses a rule mutation once the drain closed the queue,
// as every other mutation.
func (a *Actor) rulesMutable() error {
	if a.queueClosed {
		return ErrQueueClosed
	}
	if a.rules.store == nil {
		return errNoRuleStore
	}
	return nil
}

// publish hands the whole store to Config.Publish under the next
// generation.
func (a *Actor) publish(entries []egressrules.Entry) {
	a.rules.count = len(entries)
	doc := egressrules.Doc{
		Rules:               append([]egressrules.Entry(nil), entries...),
		PrivateDestinations: append([]string(nil), a.cfg.PrivateDestinations...),
	}
	a.agentsDoc(&doc)
	a.rules.kernel = &doc
	a.ensureInspectCA(&doc) // before the stack hears of rules that inspect
	if a.cfg.Publish == nil {
		return
	}
	a.rules.gen++
	doc.Generation = a.rules.gen
	a.cfg.Publish(doc)
}

// flushIPRules orders the IP and CIDR rules of the last publish into the
// kernel (the eBPF owner's trie), through the action queue like every
// order. Rules the kernel cannot hold are logged and left out: those
// destinations then go on to the proxy, which refuses IP-literal hosts no
// rule it can see allows (fail closed).
func (a *Actor) flushIPRules(ctx actor.Context) {
	doc := a.rules.kernel
	if doc == nil || !a.cfg.Enable || a.queueClosed {
		return
	}
	a.rules.kernel = nil
	var entries []egress.IPRuleEntry
	p, err := doc.Compile()
	if err == nil {
		var ke []egressrules.KernelIPEntry
		if ke, err = p.KernelIPEntries(); err == nil {
			entries = kernelEntries(ke)
		}
	}
	if err != nil {
		a.rulesLog().Error("the IP and CIDR rules cannot be put into the kernel; their destinations are refused",
			zap.String("event", "firewall_ip_rules_unavailable"), zap.Error(err))
	}
	a.enqueue(ctx, nil, &ebpf.SyncIPRules{Entries: entries}, nil)
	a.syncRuleRoutes(ctx, p)
}

func kernelEntries(ke []egressrules.KernelIPEntry) []egress.IPRuleEntry {
	out := make([]egress.IPRuleEntry, 0, len(ke))
	for _, e := range ke {
		ie := egress.IPRuleEntry{Prefix: e.Prefix}
		for _, r := range e.Rules {
			ie.Rules = append(ie.Rules, egress.IPRule{ID: r.ID, Prefix: r.Prefix, PortLo: r.Port.Lo, PortHi: r.Port.Hi, Allow: r.Allow})
		}
		out = append(out, ie)
	}
	return out
}

// fillStatus adds the rule count and the agent network to a status. The
// count is the one every load and change keeps: the rules the siblings
// were last given, with no store read on a status (a hand edit counts
// once `firewall reload` publishes it).
func (a *Actor) fillStatus(st *Status) *Status {
	st.Rules = a.rules.count
	if a.cfg.Enable && a.addrs.Subnet.IsValid() {
		st.Network, st.Subnet = dockerx.NetworkName, a.addrs.Subnet.String()
		if a.cfg.Stack != nil {
			st.Network = a.cfg.Stack.NetworkName
		}
	}
	return st
}

// storeErr marks a store failure as ErrRuleStore, unless it is the
// store's verdict on a malformed rule of the request. A bad rule in a
// hand-edited file is a store failure: the file is what needs fixing.
func storeErr(err error) error {
	var fe *egressrules.FieldError
	var file *egressrules.FileError
	if errors.As(err, &fe) && !errors.As(err, &file) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrRuleStore, err)
}

// rulesLog is Config.Log, or a logger that drops everything: a firewall
// built for tests may have none.
func (a *Actor) rulesLog() *zap.Logger {
	if a.cfg.Log == nil {
		return zap.NewNop()
	}
	return a.cfg.Log
}
