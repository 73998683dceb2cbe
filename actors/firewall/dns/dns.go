// Package dns owns the DNS sibling (<net>.201) and what its answers teach
// the kernel. With the stack binaries present the control plane builds its
// image, runs its container, probes it with a real query and recreates it
// when it dies; without them it adopts a DNS server that already answers at
// the stack's fixed address, and fails start-up when none does (a green
// /healthz must mean agents resolve through the filter).
//
// The sibling reports every A record it is about to hand an agent; this
// actor records (IP -> rule ids, expiry) and has the eBPF owner write the
// kernel's IP -> identity entry BEFORE the report is answered, so the
// connect that follows the answer is routed by it. An IP shared by two
// allowed names (a CDN) keeps both ids; entries expire TTL + Grace after
// the last answer that named them and are collected every GCInterval (the
// dns_gc_stop drain step stops that).
package dns

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/scheduler"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/actors/firewall/stack"
	"github.com/clawker/clawker-cp/actors/request"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/stackapi"
)

// Config is the DNS owner's wiring beyond the member itself.
type Config struct {
	Member stack.Member
	// EBPF is the eBPF owner, the single writer of BPF state; nil when the
	// firewall is disabled.
	EBPF      *actor.PID
	OpTimeout time.Duration
	// Grace is added to every TTL before an entry expires: an agent may
	// connect a little after its cached answer's TTL ran out.
	Grace      time.Duration
	GCInterval time.Duration
	Log        *zap.Logger
	// Now is the clock; nil means time.Now (tests move it).
	Now func() time.Time
}

// ReportAnswers is the DNS sibling's report of one reply's A records;
// answered with *AnswersDone once the kernel knows every address.
type ReportAnswers struct{ Answers []stackapi.Answer }

// AnswersDone answers ReportAnswers.
type AnswersDone struct{ Err error }

// GetIdentities asks for the table; answered with *Identities.
type GetIdentities struct{}

// Identities is the IP -> identity table as the kernel has it.
type Identities struct {
	Entries map[netip.Addr]IdentityEntry
}

// IdentityEntry is one address.
type IdentityEntry struct {
	Kernel uint32               // the id written to the kernel map
	Rules  map[uint32]time.Time // every rule id with its expiry
}

type gcTick struct{}

// Actor is the DNS sibling's owner.
type Actor struct {
	cfg      Config
	owner    stack.Owner
	table    map[netip.Addr]*entry
	live     liveRules // forget.go
	cancelGC scheduler.CancelFunc
}

type entry struct {
	kernel uint32
	rules  map[uint32]time.Time
}

// New returns a producer of fresh DNS actors. A zero Member (firewall
// disabled) checks nothing.
func New(cfg Config) actor.Producer {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Grace == 0 {
		cfg.Grace = 30 * time.Second
	}
	if cfg.GCInterval == 0 {
		cfg.GCInterval = 5 * time.Second
	}
	if cfg.OpTimeout == 0 {
		cfg.OpTimeout = 2 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	return func() actor.Actor {
		return &Actor{cfg: cfg, owner: stack.Owner{M: cfg.Member}, table: map[netip.Addr]*entry{}}
	}
}

// Receive handles the actor's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.owner.Receive(ctx)
		if a.cfg.EBPF != nil {
			a.cancelGC = scheduler.NewTimerScheduler(ctx).SendRepeatedly(a.cfg.GCInterval, a.cfg.GCInterval, ctx.Self(), &gcTick{})
		}
	case *actor.Stopping, *actor.Restarting:
		a.stopGC()
		a.owner.Receive(ctx)
	case *ReportAnswers:
		a.report(ctx, m)
	case *GetIdentities:
		ctx.Respond(a.snapshot())
	case *ForgetRules:
		a.forget(ctx, m)
	case *gcTick:
		a.gc(ctx)
	case *supervise.DrainStep:
		switch m.Step {
		case cpapi.StepStackStop:
			a.owner.StopStep(ctx, m, "no DNS container running")
		case cpapi.StepDNSGCStop:
			if a.cancelGC == nil {
				supervise.AnswerStep(ctx, m.Step, supervise.OutcomeNothing, "no DNS cache GC running")
				return
			}
			a.stopGC()
			supervise.AnswerStep(ctx, m.Step, supervise.OutcomeDone, fmt.Sprintf("DNS identity GC stopped (%d addresses known)", len(a.table)))
		}
	default:
		a.owner.Receive(ctx)
	}
}

func (a *Actor) stopGC() {
	if a.cancelGC != nil {
		a.cancelGC()
		a.cancelGC = nil
	}
}

// kernelID is the identity written for a set of rule ids: the lowest, so
// the choice is stable while that rule's entry lives. The kernel map holds
// one id per address: the routes of ssh/tcp rules are installed under each
// name's lowest id (egressrules.Policy.Routes), and an address two names
// share carries the lower of their ids, so only that name's routes apply
// there. Removed rules' ids are dropped at once (ForgetRules).
func kernelID(rules map[uint32]time.Time) uint32 {
	var min uint32
	for id := range rules {
		if min == 0 || id < min {
			min = id
		}
	}
	return min
}

func (a *Actor) report(ctx actor.Context, m *ReportAnswers) {
	sender := ctx.Sender()
	if a.cfg.EBPF == nil {
		ctx.Respond(&AnswersDone{Err: fmt.Errorf("the firewall is disabled")})
		return
	}
	now := a.cfg.Now()
	set := map[netip.Addr]uint32{}
	for _, ans := range m.Answers {
		ids := a.withoutRemoved(ans.RuleIDs)
		if !ans.IP.Is4() || len(ids) == 0 {
			continue
		}
		e := a.table[ans.IP]
		if e == nil {
			e = &entry{rules: map[uint32]time.Time{}}
			a.table[ans.IP] = e
		}
		exp := now.Add(time.Duration(ans.TTL)*time.Second + a.cfg.Grace)
		for _, id := range ids {
			if exp.After(e.rules[id]) {
				e.rules[id] = exp
			}
		}
		if k := kernelID(e.rules); k != e.kernel {
			set[ans.IP] = k
		}
	}
	if len(set) == 0 {
		// Every address is already known with the same identity: the
		// kernel needs nothing, the reply may leave at once.
		ctx.Respond(&AnswersDone{})
		return
	}
	request.Reenter(ctx, a.cfg.EBPF, &ebpf.SetIdentities{Set: set}, a.cfg.OpTimeout, func(d *ebpf.Done, err error) {
		if err == nil {
			err = d.Err
		}
		if err == nil {
			for ip, k := range set {
				if e := a.table[ip]; e != nil {
					e.kernel = k
				}
			}
		} else {
			a.cfg.Log.Warn("cannot record DNS answers in the kernel", zap.String("event", "dns_identity_failed"), zap.Int("addresses", len(set)), zap.Error(err))
		}
		ctx.Send(sender, &AnswersDone{Err: err})
	})
}

// gc drops expired rule ids, rewrites addresses whose kernel id changed
// and forgets those with none left.
func (a *Actor) gc(ctx actor.Context) {
	now := a.cfg.Now()
	a.dropRules(ctx, func(_ uint32, exp time.Time) bool { return !now.Before(exp) },
		"DNS identity GC failed", "dns_gc_failed", "DNS identity GC", "dns_gc")
}

// dropRules removes from every address the rule ids drop picks, forgets
// the addresses left with none and rewrites, in one SetIdentities, those
// whose kernel identity changed. The four strings name the log lines of a
// failed and of a done write.
func (a *Actor) dropRules(ctx actor.Context, drop func(id uint32, exp time.Time) bool, failMsg, failEvent, doneMsg, doneEvent string) {
	set := map[netip.Addr]uint32{}
	var del []netip.Addr
	for ip, e := range a.table {
		for id, exp := range e.rules {
			if drop(id, exp) {
				delete(e.rules, id)
			}
		}
		switch k := kernelID(e.rules); {
		case k == 0:
			del = append(del, ip)
			delete(a.table, ip)
		case k != e.kernel:
			set[ip] = k
			e.kernel = k
		}
	}
	if len(set) == 0 && len(del) == 0 {
		return
	}
	request.Reenter(ctx, a.cfg.EBPF, &ebpf.SetIdentities{Set: set, Delete: del}, a.cfg.OpTimeout, func(d *ebpf.Done, err error) {
		if err == nil {
			err = d.Err
		}
		if err != nil {
			a.cfg.Log.Warn(failMsg, zap.String("event", failEvent), zap.Error(err))
			return
		}
		a.cfg.Log.Debug(doneMsg, zap.String("event", doneEvent), zap.Int("forgotten", len(del)), zap.Int("rewritten", len(set)))
	})
}

func (a *Actor) snapshot() *Identities {
	out := &Identities{Entries: make(map[netip.Addr]IdentityEntry, len(a.table))}
	for ip, e := range a.table {
		rules := make(map[uint32]time.Time, len(e.rules))
		for id, exp := range e.rules {
			rules[id] = exp
		}
		out.Entries[ip] = IdentityEntry{Kernel: e.kernel, Rules: rules}
	}
	return out
}

// Spec is how the firewall spawns the DNS member; it does the DNS side of
// stack_stop and dns_gc_stop.
func Spec(cfg Config) supervise.Spec {
	return supervise.Spec{Name: cpapi.MemberDNS, Producer: New(cfg), Steps: []string{cpapi.StepStackStop, cpapi.StepDNSGCStop}}
}
