// Package ebpf is the single owner of every BPF object clawker creates: it
// loads the egress programs (pkg/egress), re-adopts what an earlier control
// plane pinned, attaches the programs to agent cgroups, keeps each agent's
// enrollment, and at the last drain step, ebpf_flush, detaches every link
// and removes every pin.
//
// It acts only on orders from the firewall actor, whose mailbox serialises
// them; it never decides policy itself. Every call into the kernel is a
// map update or a link syscall (microseconds to a millisecond), so it runs
// inline in the mailbox.
//
// Enforcement is per container cgroup: the programs are attached to the
// container's own cgroup, never to a parent shared with containers clawker
// does not manage. A restarted container has a new cgroup (and id), so
// Enforce re-derives it every time and retires the old one.
//
// Per agent it also fills in what only the container tells: its own
// address and its project (Config.AgentOf), kept in the peer table the
// programs consult for agent_to_agent: project. And whenever enforcement
// resumes (Enforce, a bypass that ends, a re-enable) it cuts the sockets
// the agent connected while unfiltered (egress.Manager.Cut).
package ebpf

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	cebpf "github.com/cilium/ebpf"
	"github.com/moby/moby/client"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/bpf"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/egress"
)

// Programs is what the actor needs of a loaded egress generation;
// *egress.Manager implements it.
type Programs interface {
	AttachCgroup(path string) error
	DetachCgroupID(cgid uint64) error
	Attached() []uint64
	Enroll(cgid uint64, cfg egress.Config) error
	Unenroll(cgid uint64) error
	Enrolled() ([]egress.Enrollment, error)
	Bypass(cgid uint64, until time.Time) error
	Disable(cgid uint64) error
	Enable(cgid uint64) error
	SyncRoutes(routes []egress.Route) error
	SyncIPRules(entries []egress.IPRuleEntry) error
	Routes() ([]egress.Route, error)
	SetIdentity(ip netip.Addr, id uint32) error
	DeleteIdentity(ip netip.Addr) error
	Reconfigure(cgid uint64, cfg egress.Config) error
	SetPeer(ip netip.Addr, project uint32) error
	DeletePeer(ip netip.Addr) error
	Cut(cgid uint64, path string, initPid int) (egress.CutResult, error)
	Reused() []string
	Migrated() []egress.Migration
	Close() error
	FlushAll() error
}

// Config wires the eBPF owner.
type Config struct {
	// Enable is settings' firewall.enable: without it nothing is loaded.
	Enable bool
	// PinDir is where the pins live (egress.DefaultPinDir in production).
	PinDir string
	// Open loads the programs and adopts the pins under PinDir.
	Open func() (Programs, error)
	// CgroupOf resolves a container's cgroup v2 directory and id.
	CgroupOf func(containerID string) (path string, id uint64, err error)
	// FlushPins removes what an earlier generation pinned under PinDir,
	// for a CP that did not load programs itself (firewall disabled).
	FlushPins func() error
	// Events turns the programs' decision events on for every cgroup
	// enforced from now on (monitoring.otlp_endpoint set), at EventRate
	// per second each; off, the programs pay nothing for them.
	Events    bool
	EventRate uint32
	// EventsDenied, with Events off, has the programs emit the events of
	// refusals alone (for `clawker firewall denied`); allowed connects
	// still pay nothing.
	EventsDenied bool
	// OpenEvents opens the events ring buffer for the netlogger's reader.
	OpenEvents func() (*cebpf.Map, error)
	// AgentOf tells a container's project and its addresses; nil leaves
	// Config.Self and Config.ProjectID as the order has them.
	AgentOf func(containerID string) (Agent, error)
	Log     *zap.Logger
}

// Agent is what AgentOf tells of a container.
type Agent struct {
	Project string       // dev.clawker.project
	IPs     []netip.Addr // on every network it is attached to
	// Pid is its init process in the host's pid namespace (State.Pid):
	// how a containerized CP enters its network namespace for a cut.
	Pid int
}

// Production returns the Config hooks backed by pkg/egress. noMount is set
// in a container, where mounting bpffs would give pins that die with it;
// hostProc is where the host's /proc is mounted there (egress.Options).
func Production(enable bool, pinDir string, noMount bool, hostProc string, log *zap.Logger) Config {
	return Config{
		Enable: enable,
		PinDir: pinDir,
		Open: func() (Programs, error) {
			m, err := egress.OpenWith(pinDir, egress.Options{NoMount: noMount, HostProc: hostProc})
			if err != nil {
				return nil, err
			}
			return m, nil
		},
		CgroupOf:  egress.ContainerCgroup,
		FlushPins: func() error { return egress.FlushPins(pinDir) },
		// The pinned map is the loaded one: the ring the programs write.
		OpenEvents: func() (*cebpf.Map, error) {
			return cebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", bpf.EgressMapEvents), nil)
		},
		AgentOf: dockerAgentOf(),
		Log:     log,
	}
}

// dockerAgentOf inspects the container with a Docker client of its own,
// made on first use (by the lookups of enforceAsync, off the mailbox).
func dockerAgentOf() func(string) (Agent, error) {
	newClient := dockerx.LazyClient()
	return func(id string) (Agent, error) {
		c, err := newClient()
		if err != nil {
			return Agent{}, err
		}
		in, err := dockerx.Call(context.Background(), 10*time.Second, func(ctx context.Context) (client.ContainerInspectResult, error) {
			return c.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
		})
		if err != nil {
			return Agent{}, err
		}
		var a Agent
		if cfg := in.Container.Config; cfg != nil {
			a.Project = cfg.Labels[dockerx.LabelProject]
		}
		if st := in.Container.State; st != nil {
			a.Pid = st.Pid
		}
		a.IPs = dockerx.NetworkAddrs(in.Container.NetworkSettings)
		return a, nil
	}
}

// The orders. Each is answered with the result type named beside it.

// Enforce attaches the programs to the container's current cgroup and
// enrolls it with Config. Already enforced on the same cgroup: nothing
// changes (a bypass or disable in force stays). Answered with *Enforced.
type Enforce struct {
	ContainerID string
	Config      egress.Config
}

// Enforced answers Enforce.
type Enforced struct {
	CgroupID uint64
	// Retired is the container's previous cgroup, removed because the
	// container restarted (0 if none).
	Retired uint64
	Err     error
}

// Release stops enforcing a container that stopped or was removed: its
// enrollment and links go. Answered with *Done.
type Release struct{ ContainerID string }

// SetBypass lets the container through until Until (zero ends a bypass).
// Answered with *Done.
type SetBypass struct {
	ContainerID string
	Until       time.Time
}

// SetDisabled disables (a bypass without expiry) or re-enables a container;
// re-enabling also ends a bypass. Answered with *Done.
type SetDisabled struct {
	ContainerID string
	Disabled    bool
}

// SyncRoutes swaps the route set. Answered with *Done.
type SyncRoutes struct{ Routes []egress.Route }

// SyncIPRules swaps the IP and CIDR rule trie (egress.Manager.SyncIPRules):
// one map update of a prebuilt table, so it stays on the mailbox.
// Answered with *Done.
type SyncIPRules struct{ Entries []egress.IPRuleEntry }

// SetIdentities records DNS-learned addresses in the kernel's IP ->
// identity table (Set) and forgets expired ones (Delete). Answered with
// *Done once the map holds them.
type SetIdentities struct {
	Set    map[netip.Addr]uint32
	Delete []netip.Addr
}

// OpenEvents asks for the events ring buffer; answered with *EventsRing.
type OpenEvents struct{}

// EventsRing answers OpenEvents; the receiver owns (and closes) Map.
type EventsRing struct {
	Map *cebpf.Map
	Err error
}

// Done answers Release, SetBypass, SetDisabled, SyncRoutes and
// SetIdentities.
type Done struct{ Err error }

// GetState asks for what the programs enforce; answered with *State.
type GetState struct{}

// State answers GetState.
type State struct {
	Loaded bool
	// Agents maps container id to its enrollment, sorted by container id.
	Agents []AgentState
	Routes int
	Err    error
}

// AgentState is one enforced container.
type AgentState struct {
	ContainerID string
	Enrollment  egress.Enrollment
}

// ErrNotLoaded answers orders when no programs are loaded (firewall
// disabled, or the programs became unavailable).
var ErrNotLoaded = errors.New("no eBPF programs loaded")

// ErrNotEnforced answers an order about a container that is not enforced.
var ErrNotEnforced = errors.New("container is not enforced")

// Actor is the eBPF owner.
type Actor struct {
	cfg   Config
	progs Programs
	// cgroups maps an enforced container to its cgroup id: the one fact
	// the BPF maps do not hold. Rebuilt after a CP restart by the Enforce
	// orders that follow Docker's initial listing.
	cgroups map[string]uint64
	paths   map[string]string     // container -> cgroup path, for Cut
	pids    map[string]int        // container -> its init's host pid, for Cut
	peers   map[string]netip.Addr // container -> its address in peer_project
	// projects numbers the projects for peer_project: FNV-1a of the name,
	// probed on a collision, so a restarted CP mostly finds the same ids.
	projects  map[string]uint32
	projectOf map[uint32]string
	flushed   bool
}

// New returns a producer of fresh eBPF owners.
func New(cfg Config) actor.Producer {
	return func() actor.Actor {
		return &Actor{cfg: cfg, cgroups: map[string]uint64{}, paths: map[string]string{}, pids: map[string]int{}, peers: map[string]netip.Addr{},
			projects: map[string]uint32{}, projectOf: map[uint32]string{}}
	}
}

// Receive handles the actor's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		supervise.ReportReady(ctx, a.start())
	case *actor.Restarting, *actor.Stopping:
		// Close keeps every pin: enforcement goes on without us.
		if a.progs != nil {
			_ = a.progs.Close()
			a.progs = nil
		}
	case *Enforce:
		a.enforceAsync(ctx, m)
	case *Release:
		ctx.Respond(&Done{Err: a.release(m.ContainerID)})
	case *SetBypass:
		ctx.Respond(&Done{Err: a.onContainer(m.ContainerID, func(cgid uint64) error {
			if err := a.progs.Bypass(cgid, m.Until); err != nil {
				return err
			}
			if !time.Now().Before(m.Until) {
				a.cut(m.ContainerID, cgid, "bypass ended")
			}
			return nil
		})})
	case *SetDisabled:
		ctx.Respond(&Done{Err: a.onContainer(m.ContainerID, func(cgid uint64) error {
			if m.Disabled {
				return a.progs.Disable(cgid)
			}
			if err := a.progs.Enable(cgid); err != nil {
				return err
			}
			a.cut(m.ContainerID, cgid, "enabled")
			return nil
		})})
	case *SyncRoutes:
		err := ErrNotLoaded
		if a.progs != nil {
			err = a.progs.SyncRoutes(m.Routes)
		}
		ctx.Respond(&Done{Err: err})
	case *SyncIPRules:
		err := ErrNotLoaded
		if a.progs != nil {
			err = a.progs.SyncIPRules(m.Entries)
		}
		ctx.Respond(&Done{Err: err})
	case *SetIdentities:
		ctx.Respond(&Done{Err: a.setIdentities(m)})
	case *GetState:
		ctx.Respond(a.state())
	case *OpenEvents:
		ctx.Respond(a.openEvents())
	case *supervise.DrainStep:
		// Only ebpf_flush: the middleware answers any other step.
		outcome, detail := a.flush()
		supervise.AnswerStep(ctx, m.Step, outcome, detail)
	}
}

// setIdentities writes the IP -> identity entries of DNS answers. Each
// entry is one map update of microseconds: this stays on the mailbox.
func (a *Actor) setIdentities(m *SetIdentities) error {
	if a.progs == nil {
		return ErrNotLoaded
	}
	var errs []error
	for ip, id := range m.Set {
		if err := a.progs.SetIdentity(ip, id); err != nil {
			errs = append(errs, fmt.Errorf("identity of %s: %w", ip, err))
		}
	}
	for _, ip := range m.Delete {
		if err := a.progs.DeleteIdentity(ip); err != nil {
			errs = append(errs, fmt.Errorf("forgetting %s: %w", ip, err))
		}
	}
	return errors.Join(errs...)
}

func (a *Actor) start() error {
	log := a.cfg.Log
	if !a.cfg.Enable {
		if _, err := os.Stat(a.cfg.PinDir); err == nil {
			log.Warn("eBPF state of an earlier control plane is still pinned; the firewall is disabled, so it is left as it is until this control plane drains",
				zap.String("event", "ebpf_stale_pins"), zap.String("pin_dir", a.cfg.PinDir))
		}
		log.Info("firewall disabled: no eBPF programs loaded", zap.String("event", "ebpf_disabled"))
		return nil
	}
	progs, err := a.cfg.Open()
	if err != nil {
		return fmt.Errorf("loading the eBPF egress programs (pin dir %s): %w", a.cfg.PinDir, err)
	}
	a.progs = progs
	enrolled, err := progs.Enrolled()
	if err != nil {
		return fmt.Errorf("reading the pinned enrollments: %w", err)
	}
	// An enrollment whose cgroup lost its links belongs to a cgroup that is
	// gone (Open unpins the links of removed cgroups): retire it.
	attached := map[uint64]bool{}
	for _, id := range progs.Attached() {
		attached[id] = true
	}
	retired := 0
	for _, e := range enrolled {
		if !attached[e.CgroupID] {
			if err := progs.Unenroll(e.CgroupID); err != nil {
				return fmt.Errorf("retiring the enrollment of removed cgroup %d: %w", e.CgroupID, err)
			}
			retired++
		}
	}
	for _, mg := range progs.Migrated() {
		log.Warn("pinned map of an earlier build migrated", zap.String("event", "ebpf_map_migrated"), zap.String("map", mg.Map),
			zap.String("reason", mg.Reason), zap.Int("copied", mg.Copied), zap.Bool("fresh", mg.Fresh))
	}
	log.Info("eBPF egress programs loaded", zap.String("event", "ebpf_loaded"), zap.String("pin_dir", a.cfg.PinDir),
		zap.Strings("reused_maps", progs.Reused()), zap.Int("adopted_cgroups", len(attached)),
		zap.Int("adopted_enrollments", len(enrolled)-retired), zap.Int("retired_enrollments", retired))
	return nil
}

func (a *Actor) openEvents() *EventsRing {
	if a.progs == nil || a.cfg.OpenEvents == nil {
		return &EventsRing{Err: ErrNotLoaded}
	}
	m, err := a.cfg.OpenEvents()
	return &EventsRing{Map: m, Err: err}
}

// looked is what enforceAsync found out about a container off the
// mailbox: its cgroup (a walk of the cgroup tree) and, with AgentOf, its
// address and project (a Docker inspect).
type looked struct {
	path     string
	cgid     uint64
	cgErr    error
	agent    Agent
	agentErr error
}

// lookupTimeout bounds the off-mailbox lookups of one Enforce.
const lookupTimeout = 15 * time.Second

// enforceAsync runs the cgroup walk and the Docker inspect of an Enforce
// off the mailbox (each can take far longer than a map update), then
// carries out the map and link changes on it. The firewall sends one
// order at a time, so no other order of its overtakes this one.
func (a *Actor) enforceAsync(ctx actor.Context, m *Enforce) {
	if a.progs == nil {
		ctx.Respond(&Enforced{Err: ErrNotLoaded})
		return
	}
	sender := ctx.Sender()
	f := actor.NewFuture(ctx.ActorSystem(), lookupTimeout)
	cgroupOf, agentOf := a.cfg.CgroupOf, a.cfg.AgentOf
	go func() {
		var l looked
		l.path, l.cgid, l.cgErr = cgroupOf(m.ContainerID)
		if l.cgErr == nil && agentOf != nil {
			l.agent, l.agentErr = agentOf(m.ContainerID)
		}
		ctx.ActorSystem().Root.Send(f.PID(), &l)
	}()
	ctx.ReenterAfter(f, func(res any, err error) {
		l, ok := res.(*looked)
		if err != nil || !ok {
			ctx.Send(sender, &Enforced{Err: fmt.Errorf("looking up container %s: %v", short(m.ContainerID), err)})
			return
		}
		ctx.Send(sender, a.enforce(m, l))
	})
}

func (a *Actor) enforce(m *Enforce, l *looked) *Enforced {
	if a.progs == nil {
		// Flushed or closed while the lookup ran.
		return &Enforced{Err: ErrNotLoaded}
	}
	// The events flag is the CP's (settings), not the order's.
	cfg := m.Config
	cfg.Events, cfg.EventRate, cfg.EventsDenied = a.cfg.Events, a.cfg.EventRate, a.cfg.EventsDenied
	path, cgid, err := l.path, l.cgid, l.cgErr
	if err != nil {
		return &Enforced{Err: fmt.Errorf("cgroup of container %s: %w", short(m.ContainerID), err)}
	}
	res := &Enforced{CgroupID: cgid}
	if old, ok := a.cgroups[m.ContainerID]; ok && old != cgid {
		// The container restarted: its old cgroup is gone or going.
		a.retire(old)
		res.Retired = old
	}
	if a.cfg.AgentOf != nil {
		ag, err := l.agent, l.agentErr
		if err != nil {
			res.Err = fmt.Errorf("inspecting container %s: %w", short(m.ContainerID), err)
			return res
		}
		cfg.Self = agentAddr(ag.IPs, cfg.Subnet)
		if ag.Project != "" {
			cfg.ProjectID = a.projectID(ag.Project)
		}
	}
	// Order matters: enroll before attaching, so the first packet the
	// programs see from this cgroup already finds its config. A cgroup
	// enrolled already (adopted from an earlier CP) keeps its bypass or
	// disable, and gets this config if it differs: other events settings,
	// or an older build's that lacks the fields this one added.
	if e, ok := a.enrollment(cgid); !ok {
		if err := a.progs.Enroll(cgid, cfg); err != nil {
			res.Err = err
			return res
		}
	} else if e.Config != cfg.Canonical() {
		if err := a.progs.Reconfigure(cgid, cfg); err != nil {
			res.Err = err
			return res
		}
	}
	if cfg.Self.IsValid() {
		if old, ok := a.peers[m.ContainerID]; ok && old != cfg.Self {
			_ = a.progs.DeletePeer(old)
		}
		if err := a.progs.SetPeer(cfg.Self, cfg.ProjectID); err != nil {
			res.Err = err
			return res
		}
		a.peers[m.ContainerID] = cfg.Self
	}
	if err := a.progs.AttachCgroup(path); err != nil {
		res.Err = err
		return res
	}
	a.cgroups[m.ContainerID] = cgid
	a.paths[m.ContainerID] = path
	a.pids[m.ContainerID] = l.agent.Pid
	// What an earlier generation let through (a bypass that ended while no
	// CP ran) goes now.
	a.cut(m.ContainerID, cgid, "enforced")
	return res
}

func (a *Actor) enrollment(cgid uint64) (egress.Enrollment, bool) {
	es, err := a.progs.Enrolled()
	if err != nil {
		return egress.Enrollment{}, false
	}
	for _, e := range es {
		if e.CgroupID == cgid {
			return e, true
		}
	}
	return egress.Enrollment{}, false
}

// agentAddr is the container's IPv4 address inside subnet (the agent
// network), or the zero Addr.
func agentAddr(ips []netip.Addr, subnet netip.Prefix) netip.Addr {
	for _, ip := range ips {
		if ip = ip.Unmap(); ip.Is4() && (!subnet.IsValid() || subnet.Contains(ip)) {
			return ip
		}
	}
	return netip.Addr{}
}

// projectID numbers a project (never 0).
func (a *Actor) projectID(project string) uint32 {
	if id, ok := a.projects[project]; ok {
		return id
	}
	h := fnv.New32a()
	h.Write([]byte(project))
	id := h.Sum32()
	for id == 0 || a.projectOf[id] != "" {
		id++
	}
	a.projects[project], a.projectOf[id] = id, project
	return id
}

// cut destroys the sockets the container connected while unfiltered. A
// failure is logged: the backstop still drops what they send.
func (a *Actor) cut(containerID string, cgid uint64, why string) {
	path := a.paths[containerID]
	if path == "" {
		return
	}
	res, err := a.progs.Cut(cgid, path, a.pids[containerID])
	log := a.cfg.Log.With(zap.String("event", "ebpf_cut"), zap.String("container", short(containerID)), zap.String("why", why),
		zap.Int("destroyed", res.Destroyed), zap.Int("seen", res.Seen), zap.Int("netns", res.Netns), zap.Duration("took", res.Took))
	switch {
	case err != nil:
		log.Warn("cutting the sockets connected while unfiltered failed; the backstop still drops their packets", zap.Error(err))
	case res.Destroyed > 0:
		log.Info("cut the sockets connected while unfiltered")
	}
}

func (a *Actor) retire(cgid uint64) {
	if err := a.progs.DetachCgroupID(cgid); err != nil {
		a.cfg.Log.Warn("detaching a retired cgroup failed", zap.String("event", "ebpf_retire_failed"), zap.Uint64("cgroup_id", cgid), zap.Error(err))
	}
	if err := a.progs.Unenroll(cgid); err != nil {
		a.cfg.Log.Warn("unenrolling a retired cgroup failed", zap.String("event", "ebpf_retire_failed"), zap.Uint64("cgroup_id", cgid), zap.Error(err))
	}
}

func (a *Actor) release(containerID string) error {
	if a.progs == nil {
		return ErrNotLoaded
	}
	cgid, ok := a.cgroups[containerID]
	if !ok {
		return nil // never enforced by this generation: nothing to release
	}
	delete(a.cgroups, containerID)
	delete(a.paths, containerID)
	delete(a.pids, containerID)
	var peerErr error
	if ip, ok := a.peers[containerID]; ok {
		delete(a.peers, containerID)
		peerErr = a.progs.DeletePeer(ip)
	}
	return errors.Join(a.progs.DetachCgroupID(cgid), a.progs.Unenroll(cgid), peerErr)
}

func (a *Actor) onContainer(containerID string, f func(cgid uint64) error) error {
	if a.progs == nil {
		return ErrNotLoaded
	}
	cgid, ok := a.cgroups[containerID]
	if !ok {
		return fmt.Errorf("container %s: %w", short(containerID), ErrNotEnforced)
	}
	return f(cgid)
}

func (a *Actor) state() *State {
	st := &State{Loaded: a.progs != nil}
	if a.progs == nil {
		return st
	}
	enrolled, err := a.progs.Enrolled()
	if err != nil {
		st.Err = err
		return st
	}
	byID := map[uint64]egress.Enrollment{}
	for _, e := range enrolled {
		byID[e.CgroupID] = e
	}
	for c, cgid := range a.cgroups {
		if e, ok := byID[cgid]; ok {
			st.Agents = append(st.Agents, AgentState{ContainerID: c, Enrollment: e})
		}
	}
	sort.Slice(st.Agents, func(i, j int) bool { return st.Agents[i].ContainerID < st.Agents[j].ContainerID })
	routes, err := a.progs.Routes()
	st.Routes, st.Err = len(routes), err
	return st
}

// flush is the ebpf_flush step: it lifts enforcement everywhere clawker
// put it, including pins of an earlier generation this one did not load.
func (a *Actor) flush() (string, string) {
	if a.flushed {
		return supervise.OutcomeNothing, "already flushed"
	}
	if a.progs != nil {
		n := len(a.progs.Attached())
		err := a.progs.FlushAll()
		a.progs = nil
		a.flushed = true
		if err != nil {
			return supervise.OutcomeFailed, fmt.Sprintf("flushing %s: %v", a.cfg.PinDir, err)
		}
		return supervise.OutcomeDone, fmt.Sprintf("detached the programs from %d cgroups, removed the pins under %s", n, a.cfg.PinDir)
	}
	if _, err := os.Stat(a.cfg.PinDir); errors.Is(err, os.ErrNotExist) {
		return supervise.OutcomeNothing, "no BPF programs loaded, nothing pinned"
	}
	a.flushed = true
	if err := a.cfg.FlushPins(); err != nil {
		return supervise.OutcomeFailed, fmt.Sprintf("flushing the pins of an earlier control plane under %s: %v", a.cfg.PinDir, err)
	}
	return supervise.OutcomeDone, "removed the pins of an earlier control plane under " + a.cfg.PinDir
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
