// Package firewall serialises every mutation of the egress firewall: its
// mailbox is the action queue. Orders from the AdminService (enable,
// disable, bypass, route sync), from agent registrations (enforce) and from
// Docker's container events (enforce on start, release on stop) are run one
// at a time against the eBPF owner, in arrival order; a request's answer is
// sent when its order completed. It supervises the members of the stack,
// dns and proxy, and owns four steps of the ordered drain.
package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/actors/firewall/dns"
	"github.com/clawker/clawker-cp/actors/firewall/proxy"
	"github.com/clawker/clawker-cp/actors/firewall/stack"
	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/actors/request"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// Config wires the firewall actor.
type Config struct {
	// Enable is settings' firewall.enable.
	Enable    bool
	Tree      *supervise.Tree
	Intensity supervise.Intensity

	// The rest matters only with Enable.

	EBPF     *actor.PID // the eBPF owner
	Overseer *actor.PID // container events come from its bus
	// Network is the agent network, read once where the tree is built
	// (ResolveNetwork): a Docker inspect does not belong in Started.
	Network   AgentNetwork
	ProxyPort uint16
	// AgentPort and HydraPublicPort are the two ports of the CP agents
	// reach (control_plane.agent_port, hydra_public_port); every other
	// port of the CP is refused to them.
	AgentPort, HydraPublicPort uint16
	// AgentToAgent is settings' firewall.agent_to_agent.
	AgentToAgent string
	// StackWait bounds the wait for the stack's members at start-up.
	StackWait time.Duration
	// StackDial checks that a member answers; nil means a TCP connect.
	StackDial func(ctx context.Context, addr string) error
	// OpTimeout bounds one order to the eBPF owner.
	OpTimeout time.Duration
	Log       *zap.Logger

	// RulesDir is the egress rule store's directory (settings'
	// Paths.FirewallDir); empty refuses every rule request.
	RulesDir string
	// Publish, when set, receives the whole store after every change and
	// once at start; it is called from the mailbox and must not block.
	Publish func(egressrules.Doc)
	// PrivateDestinations is settings' firewall.private_destinations,
	// copied into every published Doc.
	PrivateDestinations []string
	// InspectCA, when set, receives the firewall CA (inspectca.go)
	// instead of Stack.Server; for tests.
	InspectCA func(certPEM, keyPEM []byte)
	// Stack, when set, makes the firewall run the DNS and proxy siblings
	// itself (the CP image carries their binaries); nil adopts whatever
	// answers at the stack's addresses.
	Stack *StackConfig
}

// Actor is the firewall.
type Actor struct {
	cfg         Config
	addrs       stack.Addrs
	queueClosed bool
	rules       rulesState     // rules.go
	inspect     inspectCAState // inspectca.go
	routes      routeState     // routes.go
	agents      agentsState    // agents.go
	dns, proxy  *actor.PID
	ready       bool
	stackSrv    *http.Server // the siblings' policy and answers service

	queue []*queued // orders waiting for the one in flight
	busy  bool

	timers map[string]*bypassTimer // by container id
}

type bypassTimer struct {
	until time.Time
	t     *time.Timer
}

// queued is one order: what to ask the eBPF owner, and how to turn its
// answer into the reply for the requester (nil sender: an internal order).
type queued struct {
	sender *actor.PID
	order  interface{}
	reply  func(res interface{}, err error) interface{}
}

// bypassExpired is sent by a bypass timer: the programs already let the
// bypass lapse on their own, this only tidies the map entry.
type bypassExpired struct {
	containerID string
	until       time.Time
}

// New returns a producer of fresh firewall actors.
func New(cfg Config) actor.Producer {
	return func() actor.Actor { return &Actor{cfg: cfg, timers: map[string]*bypassTimer{}} }
}

// Receive handles the actor's messages.
func (a *Actor) Receive(ctx actor.Context) {
	// A message that published rules (start, add, remove, reload) also
	// orders their IP and CIDR part into the kernel, once it is handled.
	defer a.flushIPRules(ctx)
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.startInspectCA() // before the rules' first publish, which may need it
		a.startRules()
		a.start(ctx)
	case *actor.Stopping, *actor.Restarting:
		a.cancelTimers()
		a.closeStack()
	case *supervise.Ready:
		a.childReady(ctx, m)
	case *supervise.DrainStep:
		a.drainStep(ctx, m)

	case *Enforce:
		a.enqueue(ctx, ctx.Sender(), a.enforceOrder(m.ContainerID), func(res interface{}, err error) interface{} {
			r, _ := res.(*ebpf.Enforced)
			if err == nil && r != nil {
				err = r.Err
			}
			if err != nil {
				return &EnforceResult{Err: a.mapErr(err)}
			}
			a.refreshAgents(ctx)
			return &EnforceResult{CgroupID: r.CgroupID}
		})
	case *Enable:
		a.stopTimer(m.ContainerID)
		a.enqueue(ctx, ctx.Sender(), &ebpf.SetDisabled{ContainerID: m.ContainerID, Disabled: false}, a.result(time.Time{}))
	case *Disable:
		a.stopTimer(m.ContainerID)
		a.enqueue(ctx, ctx.Sender(), &ebpf.SetDisabled{ContainerID: m.ContainerID, Disabled: true}, a.result(time.Time{}))
	case *Bypass:
		a.bypass(ctx, m)
	case *SyncRoutes:
		a.syncAdminRoutes(ctx, m)
	case *GetStatus:
		a.status(ctx)
	case *Reenforce:
		a.reenforce(ctx)
	case *AddRules:
		a.addRules(ctx, m)
	case *RemoveRule:
		a.removeRule(ctx, m)
	case *ListRules:
		a.listRules(ctx)
	case *GetDenied:
		a.denied(ctx, m)
	case *ReloadRules:
		a.reloadRules(ctx)
	case *RotateCA:
		a.rotateCA(ctx)
	case *StackUp:
		a.stackUp(ctx, m)
	case *StackDown:
		a.stackDown(ctx, m)

	case *bypassExpired:
		if t, ok := a.timers[m.containerID]; ok && t.until.Equal(m.until) {
			delete(a.timers, m.containerID)
			a.enqueue(ctx, nil, &ebpf.SetBypass{ContainerID: m.containerID}, nil)
		}
	case *overseer.ContainerStarted:
		if m.Purpose == dockerx.PurposeAgent {
			a.enqueue(ctx, nil, a.enforceOrder(m.ID), a.agentsChanged(ctx))
		}
	case *overseer.ContainerStopped:
		a.release(ctx, m.Container)
	case *overseer.ContainerDestroyed:
		a.release(ctx, m.Container)
	}
}

func (a *Actor) start(ctx actor.Context) {
	if !a.cfg.Enable {
		a.dns = a.spawn(ctx, dns.Spec(dns.Config{}))
		return
	}
	if err := a.cfg.Network.Err; err != nil {
		supervise.ReportReady(ctx, fmt.Errorf("firewall.enable is true but the agent network cannot be read (%w); "+
			"the control plane must run beside its agents (`clawker controlplane up` creates the network), "+
			"or set firewall.enable: false in settings.yaml to run without egress enforcement", err))
		return
	}
	var err error
	a.addrs, err = stack.AddrsFor(a.cfg.Network.Subnet, a.cfg.Network.Gateway, a.cfg.ProxyPort)
	if err != nil {
		supervise.ReportReady(ctx, err)
		return
	}
	if a.cfg.Stack != nil {
		// Before the siblings start: they fetch their policy here first.
		if err := a.listenStack(); err != nil {
			supervise.ReportReady(ctx, err)
			return
		}
	}
	// The stack starts DNS first: the proxy resolves through it.
	mem := a.member("DNS server", a.addrs.DNS)
	if a.cfg.Stack != nil {
		mem.Managed = a.managedDNS()
	}
	a.dns = a.spawn(ctx, dns.Spec(dns.Config{Member: mem, EBPF: a.cfg.EBPF, OpTimeout: a.cfg.OpTimeout, Log: a.cfg.Log.With(zap.String("member", cpapi.MemberDNS))}))
}

func (a *Actor) member(name string, addr netip.AddrPort) stack.Member {
	return stack.Member{Name: name, Addr: addr, Wait: a.cfg.StackWait, Dial: a.cfg.StackDial}
}

// Members lists the stack's members and their addresses, for the health
// probes; empty with the firewall disabled.
func Members(subnet netip.Prefix, gw netip.Addr, proxyPort uint16) ([]stack.Member, error) {
	addrs, err := stack.AddrsFor(subnet, gw, proxyPort)
	if err != nil {
		return nil, err
	}
	return []stack.Member{{Name: "DNS server", Addr: addrs.DNS}, {Name: "egress proxy", Addr: addrs.Proxy}}, nil
}

func (a *Actor) spawn(ctx actor.Context, s supervise.Spec) *actor.PID {
	pid, err := ctx.SpawnNamed(a.cfg.Tree.SpecProps(s, a.cfg.Intensity), s.Name)
	if err != nil {
		supervise.ReportReady(ctx, fmt.Errorf("spawning firewall/%s: %w", s.Name, err))
	}
	return pid
}

func (a *Actor) childReady(ctx actor.Context, m *supervise.Ready) {
	if a.ready {
		return // a child came back after a restart; it reports its own state
	}
	if m.Err != nil {
		supervise.ReportReady(ctx, fmt.Errorf("firewall/%s: %w", m.Name, m.Err))
		return
	}
	switch m.Name {
	case cpapi.MemberDNS:
		if a.proxy == nil { // a dns restarted before the proxy came up reports Ready twice
			mem := stack.Member{}
			if a.cfg.Enable {
				mem = a.member("egress proxy", a.addrs.Proxy)
				if a.cfg.Stack != nil {
					mem.Managed = a.managedProxy()
				}
			}
			a.proxy = a.spawn(ctx, proxy.Spec(mem))
		}
	case cpapi.MemberProxy:
		a.ready = true
		if a.cfg.Enable {
			// From here on every agent container that starts is enforced;
			// the Docker feed, started after us, replays the running ones.
			ctx.Send(a.cfg.Overseer, &overseer.Subscribe{Subscriber: ctx.Self()})
			// After a restart of ours the worldview already holds running
			// agents whose events we will not see again.
			a.reenforce(ctx)
			a.cfg.Log.Info("firewall enforcing", zap.String("event", "firewall_ready"),
				zap.String("subnet", a.addrs.Subnet.String()), zap.String("proxy", a.addrs.Proxy.String()), zap.String("dns", a.addrs.DNS.String()))
		}
		supervise.ReportReady(ctx, nil)
	}
}

// agentConfig is what the programs enforce on every agent.
func (a *Actor) agentConfig() egress.Config {
	cfg := egress.Config{Proxy: a.addrs.Proxy, DNS: a.addrs.DNS, Subnet: a.addrs.Subnet, Gateway: a.addrs.Gateway,
		AgentToAgent: egress.AgentToAgent(a.cfg.AgentToAgent)}
	if a.cfg.AgentPort != 0 || a.cfg.HydraPublicPort != 0 {
		// The CP sits at the gateway's .202; one run on the host is
		// reached at the gateway itself.
		b := a.addrs.Gateway.As4()
		b[3] = 202
		cfg.CP = netip.AddrFrom4(b)
		if a.cfg.Stack != nil && a.cfg.Stack.HostProcess {
			cfg.CP = a.addrs.Gateway
		}
		cfg.CPPorts = [2]uint16{a.cfg.AgentPort, a.cfg.HydraPublicPort}
	}
	return cfg
}

func (a *Actor) enforceOrder(containerID string) *ebpf.Enforce {
	return &ebpf.Enforce{ContainerID: containerID, Config: a.agentConfig()}
}

// reenforce enforces every agent container the overseer knows to be
// running: after a restart of the firewall or of the eBPF owner (whose
// container-to-cgroup table starts empty), nothing else would.
func (a *Actor) reenforce(ctx actor.Context) {
	if !a.cfg.Enable || !a.ready {
		return
	}
	request.Reenter(ctx, a.cfg.Overseer, &overseer.GetState{}, a.cfg.OpTimeout, func(st *overseer.State, err error) {
		if err != nil {
			a.cfg.Log.Warn("cannot read the worldview to re-enforce agents", zap.String("event", "firewall_reenforce_failed"), zap.Error(err))
			return
		}
		for _, c := range st.Containers {
			if c.Purpose == dockerx.PurposeAgent && c.State == cpapi.ContainerRunning {
				a.enqueue(ctx, nil, a.enforceOrder(c.ID), a.agentsChanged(ctx))
			}
		}
	})
}

func (a *Actor) release(ctx actor.Context, c overseer.Container) {
	if c.Purpose != dockerx.PurposeAgent {
		return
	}
	a.stopTimer(c.ID)
	a.enqueue(ctx, nil, &ebpf.Release{ContainerID: c.ID}, a.agentsChanged(ctx))
}

func (a *Actor) bypass(ctx actor.Context, m *Bypass) {
	d := m.Duration
	if d == 0 {
		d = DefaultBypass
	}
	if d < time.Second || d > egress.MaxBypass {
		a.answer(ctx, ctx.Sender(), &Result{Err: fmt.Errorf("%w, got %s", ErrBadDuration, d)})
		return
	}
	until := time.Now().Add(d)
	id := m.ContainerID
	a.enqueue(ctx, ctx.Sender(), &ebpf.SetBypass{ContainerID: id, Until: until}, func(res interface{}, err error) interface{} {
		r := a.result(until)(res, err).(*Result)
		if r.Err == nil {
			a.stopTimer(id)
			self, sys := ctx.Self(), ctx.ActorSystem()
			a.timers[id] = &bypassTimer{until: until, t: time.AfterFunc(time.Until(until), func() {
				sys.Root.Send(self, &bypassExpired{containerID: id, until: until})
			})}
		}
		return r
	})
}

func (a *Actor) result(until time.Time) func(res interface{}, err error) interface{} {
	return func(res interface{}, err error) interface{} {
		d, _ := res.(*ebpf.Done)
		if err == nil && d != nil {
			err = d.Err
		}
		if err != nil {
			return &Result{Err: a.mapErr(err)}
		}
		return &Result{Until: until}
	}
}

func (a *Actor) mapErr(err error) error {
	switch {
	case errors.Is(err, ebpf.ErrNotEnforced):
		return fmt.Errorf("%w: %v", ErrUnknownContainer, err)
	case errors.Is(err, ebpf.ErrNotLoaded):
		a.cfg.Log.Error("the eBPF owner has no programs loaded", zap.String("event", "ebpf_unavailable"), zap.Error(err))
	}
	return err
}

// enqueue accepts an order unless the queue is closed, and runs it when
// every order before it has finished.
func (a *Actor) enqueue(ctx actor.Context, sender *actor.PID, order interface{}, reply func(interface{}, error) interface{}) {
	if !a.cfg.Enable {
		a.answer(ctx, sender, errorReply(order, ErrFirewallDisabled))
		return
	}
	if a.queueClosed {
		a.answer(ctx, sender, errorReply(order, ErrQueueClosed))
		return
	}
	a.queue = append(a.queue, &queued{sender: sender, order: order, reply: reply})
	a.pump(ctx)
}

func errorReply(order interface{}, err error) interface{} {
	if _, ok := order.(*ebpf.Enforce); ok {
		return &EnforceResult{Err: err}
	}
	return &Result{Err: err}
}

func (a *Actor) answer(ctx actor.Context, to *actor.PID, msg interface{}) {
	if to != nil {
		ctx.Send(to, msg)
	}
}

func (a *Actor) pump(ctx actor.Context) {
	if a.busy || len(a.queue) == 0 {
		return
	}
	q := a.queue[0]
	a.queue = a.queue[1:]
	a.busy = true
	done := func(res any, err error) {
		a.busy = false
		a.logOrder(q.order, res, err)
		if q.reply != nil {
			a.answer(ctx, q.sender, q.reply(res, err))
		}
		a.pump(ctx)
	}
	// The eBPF owner answers Enforce with *ebpf.Enforced and every other
	// order with *ebpf.Done; any other answer is an error, so a reply
	// function given err == nil holds the answer of its order's type.
	if _, ok := q.order.(*ebpf.Enforce); ok {
		request.Reenter(ctx, a.cfg.EBPF, q.order, a.cfg.OpTimeout, func(r *ebpf.Enforced, err error) { done(r, err) })
		return
	}
	request.Reenter(ctx, a.cfg.EBPF, q.order, a.cfg.OpTimeout, func(r *ebpf.Done, err error) { done(r, err) })
}

// logOrder logs the outcome of every order, so enforcement changes can be
// audited from the CP's log alone.
func (a *Actor) logOrder(order, res interface{}, err error) {
	if err == nil {
		switch r := res.(type) {
		case *ebpf.Enforced:
			err = r.Err
		case *ebpf.Done:
			err = r.Err
		}
	}
	log := a.cfg.Log
	var event string
	fields := []zap.Field{}
	switch o := order.(type) {
	case *ebpf.Enforce:
		event = "agent_enforced"
		fields = append(fields, zap.String("container_id", o.ContainerID))
		if r, ok := res.(*ebpf.Enforced); ok && err == nil {
			fields = append(fields, zap.Uint64("cgroup_id", r.CgroupID))
			if r.Retired != 0 {
				fields = append(fields, zap.Uint64("retired_cgroup_id", r.Retired))
			}
		}
	case *ebpf.Release:
		event = "agent_released"
		fields = append(fields, zap.String("container_id", o.ContainerID))
	case *ebpf.SetDisabled:
		event = "firewall_enabled"
		if o.Disabled {
			event = "firewall_disabled"
		}
		fields = append(fields, zap.String("container_id", o.ContainerID))
	case *ebpf.SetBypass:
		event = "firewall_bypass"
		if o.Until.IsZero() {
			event = "firewall_bypass_tidied"
		} else {
			fields = append(fields, zap.Time("until", o.Until))
		}
		fields = append(fields, zap.String("container_id", o.ContainerID))
	case *ebpf.SyncRoutes:
		event = "firewall_routes_synced"
		fields = append(fields, zap.Int("routes", len(o.Routes)))
	case *ebpf.SyncIPRules:
		event = "firewall_ip_rules_synced"
		fields = append(fields, zap.Int("entries", len(o.Entries)))
	}
	if err != nil {
		log.Warn("firewall order failed", append(fields, zap.String("event", event+"_failed"), zap.Error(err))...)
		return
	}
	log.Info("firewall order done", append(fields, zap.String("event", event))...)
}

func (a *Actor) status(ctx actor.Context) {
	sender := ctx.Sender()
	if !a.cfg.Enable {
		a.answer(ctx, sender, a.fillStatus(&Status{}))
		return
	}
	request.Reenter(ctx, a.cfg.EBPF, &ebpf.GetState{}, a.cfg.OpTimeout, func(st *ebpf.State, err error) {
		out := &Status{Enabled: true, AgentToAgent: a.cfg.AgentToAgent}
		if err == nil {
			err = st.Err
		}
		if err != nil {
			a.answer(ctx, sender, &StatusError{Err: err})
			return
		}
		out.Routes = st.Routes
		for _, ag := range st.Agents {
			out.Agents = append(out.Agents, AgentEnforcement{
				ContainerID: ag.ContainerID, CgroupID: ag.Enrollment.CgroupID,
				Disabled: ag.Enrollment.Disabled, BypassUntil: ag.Enrollment.BypassUntil,
			})
		}
		a.withStack(ctx, a.fillStatus(out), func(st *Status) { a.answer(ctx, sender, st) })
	})
}

// withStack asks both members how they are (each answers from what its
// last health check saw, within a second) and adds them to st.
func (a *Actor) withStack(ctx actor.Context, st *Status, done func(*Status)) {
	members := []*actor.PID{a.dns, a.proxy}
	var next func(i int)
	next = func(i int) {
		if i == len(members) {
			done(st)
			return
		}
		if members[i] == nil {
			next(i + 1)
			return
		}
		request.Reenter(ctx, members[i], &stack.GetMemberStatus{}, a.cfg.OpTimeout, func(m *stack.MemberStatus, err error) {
			if err != nil {
				st.Stack = append(st.Stack, StackMember{Name: members[i].Id, Error: fmt.Sprintf("did not answer: %v", err)})
			} else {
				st.Stack = append(st.Stack, StackMember{Name: m.Name, Address: m.Addr, ContainerID: m.ContainerID, Healthy: m.Healthy, Error: m.Error})
			}
			next(i + 1)
		})
	}
	next(0)
}

func (a *Actor) stopTimer(id string) {
	if t, ok := a.timers[id]; ok {
		t.t.Stop()
		delete(a.timers, id)
	}
}

func (a *Actor) cancelTimers() int {
	n := len(a.timers)
	for id := range a.timers {
		a.stopTimer(id)
	}
	return n
}

func (a *Actor) drainStep(ctx actor.Context, m *supervise.DrainStep) {
	switch m.Step {
	case cpapi.StepFirewallQueueClose:
		// From here on the mailbox refuses mutations; drain steps still run.
		a.queueClosed = true
		supervise.AnswerStep(ctx, m.Step, supervise.OutcomeDone, "action queue closed to new mutations")
	case cpapi.StepBypassTimersCancel:
		if n := a.cancelTimers(); n > 0 {
			supervise.AnswerStep(ctx, m.Step, supervise.OutcomeDone, fmt.Sprintf("cancelled %d bypass timers (each bypass still ends on time: the programs check the expiry)", n))
			return
		}
		supervise.AnswerStep(ctx, m.Step, supervise.OutcomeNothing, "no bypass timers armed")
	case cpapi.StepStackStop:
		// Reverse of start order: the proxy goes before the DNS it uses.
		a.forward(ctx, m, a.proxy, a.dns)
	case cpapi.StepDNSGCStop:
		a.forward(ctx, m, a.dns)
	}
}

// forward runs a step on each child in turn, within the step's deadline,
// and answers with the combined outcome, without blocking the mailbox
// while the children work.
func (a *Actor) forward(ctx actor.Context, m *supervise.DrainStep, children ...*actor.PID) {
	var results []*supervise.StepDone
	var next func(i int)
	next = func(i int) {
		if i == len(children) {
			outcome, detail := combine(results)
			supervise.AnswerStep(ctx, m.Step, outcome, detail)
			return
		}
		if children[i] == nil {
			results = append(results, &supervise.StepDone{Outcome: supervise.OutcomeFailed, Detail: "child not started"})
			next(i + 1)
			return
		}
		// Each child gets an even share of what is left of the step's
		// deadline, so a stalled one leaves time for the next and the
		// answer reaches the root in time.
		share := max(m.Left()/time.Duration(len(children)-i), time.Millisecond)
		request.Reenter(ctx, children[i], &supervise.DrainStep{Step: m.Step, Deadline: time.Now().Add(share)}, share, func(d *supervise.StepDone, err error) {
			if err != nil {
				d = &supervise.StepDone{Outcome: supervise.OutcomeFailed, Detail: fmt.Sprintf("%s: %v", children[i].Id, err)}
			}
			results = append(results, d)
			next(i + 1)
		})
	}
	next(0)
}

// combine folds the children's answers: any failure fails the step, any work
// done makes it done, otherwise there was nothing to do.
func combine(rs []*supervise.StepDone) (string, string) {
	outcome := supervise.OutcomeNothing
	detail := ""
	for _, r := range rs {
		switch {
		case r.Outcome == supervise.OutcomeFailed || r.Outcome == supervise.OutcomeTimeout:
			outcome = supervise.OutcomeFailed
		case r.Outcome == supervise.OutcomeDone && outcome == supervise.OutcomeNothing:
			outcome = supervise.OutcomeDone
		}
		if detail != "" {
			detail += "; "
		}
		detail += r.Detail
	}
	return outcome, detail
}
