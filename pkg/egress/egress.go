// Package egress loads, attaches, pins, updates and flushes clawker's cgroup
// egress programs (bpf/egress.c).
//
// Lifetime: Open loads the programs and re-adopts whatever an earlier
// process pinned under the pin dir (maps whose schema still matches, links,
// which are switched to the freshly loaded programs in place; maps of
// another layout are migrated, see migrate.go). AttachCgroup
// attaches every program to a cgroup with multi-attach links and pins them.
// Close releases this process's file descriptors and keeps the pins, so
// enforcement continues without a control plane; FlushAll detaches every
// link clawker made and removes every pin.
//
// Ownership: clawker only ever detaches links it pinned under its pin dir;
// programs other owners attached to the same cgroups are left alone.
//
// Layout under the pin dir:
//
//	maps/<name>           cgroup_cfg, ip_identity, routes, events, stats, ratelimit, sk_dns, peer_project
//	maps/<name>-new       a migrated map for an instant, before it is renamed over <name>
//	links/<cgid>-<prog>   one bpf_link per program and attached cgroup
package egress

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/clawker/clawker-cp/bpf"
)

// pinnedMaps are the maps shared between program generations, in pin order.
var pinnedMaps = []string{
	bpf.EgressMapCgroupCfg,
	bpf.EgressMapIpIdentity,
	bpf.EgressMapRoutes,
	bpf.EgressMapEvents,
	bpf.EgressMapStats,
	bpf.EgressMapRatelimit,
	bpf.EgressMapSkDns,
	bpf.EgressMapPeerProject,
	bpf.EgressMapIpRules,
}

// objects is what Open loads: every map and the programs attached to
// cgroups. The cut iterators load on first use (cut.go), so a kernel
// without bpf_sock_destroy still enforces.
type objects struct {
	bpf.EgressMaps
	cgroupPrograms
}

type cgroupPrograms struct {
	SockCreate *ebpf.Program `ebpf:"sock_create"`
	Connect4   *ebpf.Program `ebpf:"connect4"`
	Connect6   *ebpf.Program `ebpf:"connect6"`
	Sendmsg4   *ebpf.Program `ebpf:"sendmsg4"`
	Sendmsg6   *ebpf.Program `ebpf:"sendmsg6"`
	Recvmsg4   *ebpf.Program `ebpf:"recvmsg4"`
	Recvmsg6   *ebpf.Program `ebpf:"recvmsg6"`
	Backstop   *ebpf.Program `ebpf:"backstop"`
}

func (o *objects) Close() error {
	var errs []error
	for _, p := range []*ebpf.Program{o.SockCreate, o.Connect4, o.Connect6, o.Sendmsg4, o.Sendmsg6, o.Recvmsg4, o.Recvmsg6, o.Backstop} {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	return errors.Join(append(errs, o.EgressMaps.Close())...)
}

type attachment struct {
	prog string
	typ  ebpf.AttachType
}

// attachments lists every program with its cgroup attach type.
var attachments = []attachment{
	{bpf.EgressProgSockCreate, ebpf.AttachCGroupInetSockCreate},
	{bpf.EgressProgConnect4, ebpf.AttachCGroupInet4Connect},
	{bpf.EgressProgConnect6, ebpf.AttachCGroupInet6Connect},
	{bpf.EgressProgSendmsg4, ebpf.AttachCGroupUDP4Sendmsg},
	{bpf.EgressProgSendmsg6, ebpf.AttachCGroupUDP6Sendmsg},
	{bpf.EgressProgRecvmsg4, ebpf.AttachCGroupUDP4Recvmsg},
	{bpf.EgressProgRecvmsg6, ebpf.AttachCGroupUDP6Recvmsg},
	{bpf.EgressProgBackstop, ebpf.AttachCGroupInetEgress},
}

// LinksPerCgroup is how many links an attached cgroup carries: one per
// program.
var LinksPerCgroup = len(attachments)

// ErrNotEnrolled is returned for a cgroup that has no config.
var ErrNotEnrolled = errors.New("cgroup not enrolled")

// ErrClosed is returned by a Manager after Close or FlushAll.
var ErrClosed = errors.New("egress manager closed")

// Manager owns one generation of the loaded programs and the pinned state.
// Its methods are safe for concurrent use.
type Manager struct {
	mu       sync.Mutex
	pinDir   string
	mapsDir  string
	linksDir string
	spec     *ebpf.CollectionSpec
	objs     objects
	cut      *cutPrograms // loaded by the first Cut
	progs    map[string]*ebpf.Program
	links    map[string]link.Link // by pin name <cgid>-<prog>
	reused   []string             // maps adopted from pins
	migrated []Migration          // maps replaced because their layout changed
	reader   *ringbuf.Reader      // the Events reader, while one runs
	readerWG sync.WaitGroup
	closed   bool
	hostProc string // Options.HostProc
}

// Open loads the programs and adopts the state pinned under pinDir
// (DefaultPinDir in production). It mounts bpffs at /sys/fs/bpf when it is
// not mounted, and refuses a pinDir that is not on bpffs.
//
// Pinned maps are reused when their type, key, value, size and flags match
// this build (and, for the maps that carry state, their BTF layout: member
// names and offsets). One that does not is migrated without a gap (see migrate.go
// and Migrated): cgroup_cfg, ip_identity and routes are copied into maps of
// this build's layout before the links switch to the new programs, the
// other maps start fresh, and the new maps' pins replace the old ones only
// after the switch. When a state-carrying map cannot be migrated (no BTF,
// or a value that does not translate), Open fails with an error wrapping
// ebpf.ErrMapIncompatible and changes nothing, so the programs of the
// earlier generation keep enforcing. Pinned links are switched to the new
// programs atomically (no instant without a program); links whose cgroup
// is gone are unpinned.
//
// On failure Open undoes what it created: pins, directories, descriptors.
func Open(pinDir string) (*Manager, error) {
	return OpenWith(pinDir, Options{})
}

// Options change how OpenWith prepares the pin dir.
type Options struct {
	// NoMount refuses to mount bpffs: set it in a container, where only a
	// bind mount of the host's /sys/fs/bpf keeps pins alive past the
	// container; a bpffs mounted there would vanish with it.
	NoMount bool
	// HostProc is where the host's /proc is mounted, for a CP in a
	// container of its own: Cut enters an agent's network namespace through
	// the agent's init process there, since this process's /proc shows no
	// task of the agent. Empty: this process's /proc sees them.
	HostProc string
}

// OpenWith is Open with options.
func OpenWith(pinDir string, opts Options) (_ *Manager, err error) {
	if opts.NoMount {
		ok, err := isFS(BPFFSRoot, unix.BPF_FS_MAGIC)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		if !ok {
			return nil, errNoHostBPFFS()
		}
	} else if err := EnsureBPFFS(); err != nil {
		return nil, err
	}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	created, err := preparePinDir(pinDir)
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { removeDirs(created) })
	m := &Manager{
		pinDir:   filepath.Clean(pinDir),
		mapsDir:  filepath.Join(pinDir, "maps"),
		linksDir: filepath.Join(pinDir, "links"),
		links:    map[string]link.Link{},
		hostProc: opts.HostProc,
	}
	for _, d := range []string{m.mapsDir, m.linksDir} {
		if err := os.Mkdir(d, 0o700); err == nil {
			undo = append(undo, func() { _ = os.Remove(d) })
		} else if !errors.Is(err, os.ErrExist) {
			return nil, err
		}
	}

	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil && !errors.Is(err, unix.EPERM) {
		return nil, fmt.Errorf("remove memlock rlimit: %w", err)
	}

	m.spec, err = bpf.LoadEgress()
	if err != nil {
		return nil, err
	}

	replacements := map[string]*ebpf.Map{}
	defer func() {
		for _, r := range replacements {
			r.Close() // the collection holds its own clones
		}
	}()
	replacePins := map[string]bool{} // pinned, but this generation's map takes over after the link switch
	for _, name := range pinnedMaps {
		p := filepath.Join(m.mapsDir, name)
		pm, err := ebpf.LoadPinnedMap(p, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("open pinned map %s: %w", p, err)
		}
		incompatible := m.compatible(name, pm)
		if incompatible == nil {
			replacements[name] = pm
			m.reused = append(m.reused, name)
			continue
		}
		if !errors.Is(incompatible, ebpf.ErrMapIncompatible) {
			pm.Close()
			return nil, fmt.Errorf("pinned map %s: %w", p, incompatible) // could not even tell
		}
		replacePins[name] = true
		mig := Migration{Map: name, Reason: incompatible.Error(), Fresh: !migratedMaps[name]}
		if migratedMaps[name] {
			nm, n, err := m.migrate(name, pm)
			if err != nil {
				pm.Close()
				return nil, fmt.Errorf("pinned map %s is from an incompatible build and cannot be migrated (left in place, the old programs keep enforcing): %w: %w",
					p, incompatible, err)
			}
			replacements[name] = nm
			mig.Copied = n
		}
		pm.Close()
		m.migrated = append(m.migrated, mig)
	}

	if err := m.spec.LoadAndAssign(&m.objs, &ebpf.CollectionOptions{MapReplacements: replacements}); err != nil {
		return nil, loadError(err)
	}
	undo = append(undo, func() { _ = m.objs.Close() })
	m.progs = map[string]*ebpf.Program{
		bpf.EgressProgSockCreate: m.objs.SockCreate,
		bpf.EgressProgConnect4:   m.objs.Connect4,
		bpf.EgressProgConnect6:   m.objs.Connect6,
		bpf.EgressProgSendmsg4:   m.objs.Sendmsg4,
		bpf.EgressProgSendmsg6:   m.objs.Sendmsg6,
		bpf.EgressProgRecvmsg4:   m.objs.Recvmsg4,
		bpf.EgressProgRecvmsg6:   m.objs.Recvmsg6,
		bpf.EgressProgBackstop:   m.objs.Backstop,
	}

	if _, ok := replacements[bpf.EgressMapRoutes]; !ok {
		// A fresh outer map: give the programs an empty table to look in.
		if err := m.swapRoutes(nil); err != nil {
			return nil, err
		}
	}
	if _, ok := replacements[bpf.EgressMapIpRules]; !ok {
		if err := m.swapIPRules(nil); err != nil {
			return nil, err
		}
	}

	// Pin the maps this generation created before any link can use them.
	for _, name := range pinnedMaps {
		if _, ok := replacements[name]; ok || replacePins[name] {
			continue
		}
		mp := m.mapByName(name)
		p := filepath.Join(m.mapsDir, name)
		if err := mp.Pin(p); err != nil {
			return nil, fmt.Errorf("pin map %s: %w", p, err)
		}
		undo = append(undo, func() { _ = mp.Unpin() })
	}

	if err := m.adoptLinks(); err != nil {
		// Links already switched reference these maps: keep the map pins.
		// Migrated maps stay unpinned: the next Open migrates again from
		// the old pins, which still hold the same entries.
		if len(m.links) > 0 {
			undo = nil
			m.closeLocked()
		}
		return nil, err
	}

	// Every link runs the new programs now: the old maps are no longer in
	// use, so their pins can give way.
	for _, name := range pinnedMaps {
		if !replacePins[name] {
			continue
		}
		if err := replacePin(filepath.Join(m.mapsDir, name), m.mapByName(name)); err != nil {
			undo = nil // the links use these maps: keep them
			m.closeLocked()
			return nil, err
		}
	}
	return m, nil
}

func loadError(err error) error {
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("load BPF programs: needs CAP_SYS_ADMIN (or CAP_BPF with CAP_NET_ADMIN): %w", err)
	}
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("load BPF programs: verifier: %+v", ve)
	}
	return fmt.Errorf("load BPF programs: %w", err)
}

func (m *Manager) mapByName(name string) *ebpf.Map {
	switch name {
	case bpf.EgressMapCgroupCfg:
		return m.objs.CgroupCfg
	case bpf.EgressMapIpIdentity:
		return m.objs.IpIdentity
	case bpf.EgressMapRoutes:
		return m.objs.Routes
	case bpf.EgressMapIpRules:
		return m.objs.IpRules
	case bpf.EgressMapEvents:
		return m.objs.Events
	case bpf.EgressMapStats:
		return m.objs.Stats
	case bpf.EgressMapRatelimit:
		return m.objs.Ratelimit
	case bpf.EgressMapSkDns:
		return m.objs.SkDns
	case bpf.EgressMapPeerProject:
		return m.objs.PeerProject
	}
	return nil
}

func linkName(cgid uint64, prog string) string {
	return strconv.FormatUint(cgid, 10) + "-" + prog
}

func parseLinkName(name string) (cgid uint64, prog string, ok bool) {
	id, prog, found := strings.Cut(name, "-")
	if !found {
		return 0, "", false
	}
	cgid, err := strconv.ParseUint(id, 10, 64)
	if err != nil {
		return 0, "", false
	}
	for _, a := range attachments {
		if a.prog == prog {
			return cgid, prog, true
		}
	}
	return 0, "", false
}

// adoptLinks opens every link pinned by an earlier generation and points it
// at this generation's program (BPF_LINK_UPDATE: atomic, no gap). A link
// whose cgroup was removed is unpinned.
func (m *Manager) adoptLinks() error {
	entries, err := os.ReadDir(m.linksDir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		_, prog, ok := parseLinkName(e.Name())
		if !ok {
			continue // not ours: leave it
		}
		p := filepath.Join(m.linksDir, e.Name())
		l, err := link.LoadPinnedLink(p, nil)
		if err != nil {
			return fmt.Errorf("open pinned link %s: %w", p, err)
		}
		if defunct(l) {
			// The cgroup was removed (the kernel detaches its links).
			_ = l.Unpin()
			_ = l.Close()
			continue
		}
		if err := l.Update(m.progs[prog]); err != nil {
			if errors.Is(err, unix.ENOLINK) {
				_ = l.Unpin()
				_ = l.Close()
				continue
			}
			_ = l.Close()
			return fmt.Errorf("switch pinned link %s to the new program: %w", p, err)
		}
		m.links[e.Name()] = l
	}
	return nil
}

// defunct reports whether a cgroup link lost its cgroup.
func defunct(l link.Link) bool {
	info, err := l.Info()
	if err != nil {
		return false
	}
	cg := info.Cgroup()
	return cg != nil && cg.CgroupId == 0
}

// Reused reports which maps Open adopted from pins as they were.
func (m *Manager) Reused() []string {
	return append([]string(nil), m.reused...)
}

// Migrated reports which pinned maps Open replaced because their layout
// was not this build's, and what it carried over.
func (m *Manager) Migrated() []Migration {
	return append([]Migration(nil), m.migrated...)
}

// PinDir is the directory the Manager pins under.
func (m *Manager) PinDir() string { return m.pinDir }

// AttachCgroup attaches every program to the cgroup v2 directory at path
// with multi-attach links, then pins the links. Attaching at an ancestor
// covers every cgroup below it, including ones created later: in production
// the Docker parent (/sys/fs/cgroup/unified/docker on this host), where a
// `docker restart` does not lose the attachment. Attaching a cgroup twice
// is a no-op. On failure the links this call made are detached again.
func (m *Manager) AttachCgroup(path string) (err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	cgid, err := CgroupID(path)
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()

	var fresh []string
	defer func() {
		if err != nil {
			for _, n := range fresh {
				l := m.links[n]
				_ = l.Unpin()
				_ = l.Close()
				delete(m.links, n)
			}
		}
	}()
	for _, a := range attachments {
		name := linkName(cgid, a.prog)
		if _, ok := m.links[name]; ok {
			continue
		}
		// A bpf_link, never the legacy PROG_ATTACH fallback: links are
		// multi-attach, pinnable, and cannot replace another owner's program.
		l, err := link.AttachRawLink(link.RawLinkOptions{
			Target:  int(f.Fd()),
			Program: m.progs[a.prog],
			Attach:  a.typ,
		})
		if err != nil {
			return attachError(path, a.prog, err)
		}
		m.links[name] = l
		fresh = append(fresh, name)
	}
	for _, n := range fresh {
		if err := m.links[n].Pin(filepath.Join(m.linksDir, n)); err != nil {
			return fmt.Errorf("pin link %s: %w", n, err)
		}
	}
	return nil
}

func attachError(path, prog string, err error) error {
	switch {
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("attach %s to %s: needs CAP_SYS_ADMIN (or CAP_BPF with CAP_NET_ADMIN): %w", prog, path, err)
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, unix.EINVAL):
		return fmt.Errorf("attach %s to %s: kernel without cgroup bpf_link for this hook: %w (%w)", prog, path, ebpf.ErrNotSupported, err)
	}
	return fmt.Errorf("attach %s to %s: %w", prog, path, err)
}

// DetachCgroup detaches and unpins the links this package made on the
// cgroup at path. Programs attached there by others stay.
func (m *Manager) DetachCgroup(path string) error {
	cgid, err := CgroupID(path)
	if err != nil {
		return err
	}
	return m.DetachCgroupID(cgid)
}

// DetachCgroupID is DetachCgroup by cgroup id (for a cgroup already removed).
func (m *Manager) DetachCgroupID(cgid uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	var errs []error
	for _, a := range attachments {
		name := linkName(cgid, a.prog)
		if l, ok := m.links[name]; ok {
			errs = append(errs, detachLink(l))
			delete(m.links, name)
		}
	}
	return errors.Join(errs...)
}

// Attached lists the cgroup ids this generation holds links on.
func (m *Manager) Attached() []uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := map[uint64]bool{}
	var out []uint64
	for name := range m.links {
		if cgid, _, ok := parseLinkName(name); ok && !seen[cgid] {
			seen[cgid] = true
			out = append(out, cgid)
		}
	}
	return out
}

// detachLink removes the pin, detaches the link even if someone else still
// holds a descriptor to it, and closes ours.
func detachLink(l link.Link) error {
	var errs []error
	if err := l.Unpin(); err != nil {
		errs = append(errs, err)
	}
	if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) && !errors.Is(err, unix.ENOLINK) {
		errs = append(errs, err)
	}
	if err := l.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Close releases this process's descriptors and keeps every pin: the
// programs stay attached and keep enforcing the current maps.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	return m.closeLocked()
}

func (m *Manager) closeLocked() error {
	m.closed = true
	m.stopReaderLocked()
	var errs []error
	for name, l := range m.links {
		errs = append(errs, l.Close())
		delete(m.links, name)
	}
	if m.cut != nil {
		errs = append(errs, m.cut.close())
		m.cut = nil
	}
	errs = append(errs, m.objs.Close())
	return errors.Join(errs...)
}

// FlushAll lifts enforcement everywhere clawker put it: it detaches every
// link clawker made (the ones this Manager holds and any other pinned under
// its pin dir), removes every pin and the pin dir, and closes everything.
// Programs clawker did not attach are never touched. The Manager is
// unusable afterwards.
func (m *Manager) FlushAll() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.closed = true // refuse other calls while the reader stops
	m.stopReaderLocked()
	var errs []error
	for name, l := range m.links {
		errs = append(errs, detachLink(l))
		delete(m.links, name)
	}
	errs = append(errs, FlushPins(m.pinDir))
	errs = append(errs, m.closeLocked())
	return errors.Join(errs...)
}

// FlushPins is FlushAll without a loaded Manager (for a pin dir left by a
// build whose maps this one cannot adopt): it detaches every link pinned
// under pinDir/links, removes the map pins under pinDir/maps and then the
// directories. Files it does not recognise are left, and reported.
func FlushPins(pinDir string) error {
	var errs []error
	linksDir := filepath.Join(pinDir, "links")
	mapsDir := filepath.Join(pinDir, "maps")
	if entries, err := os.ReadDir(linksDir); err == nil {
		for _, e := range entries {
			if _, _, ok := parseLinkName(e.Name()); !ok {
				continue
			}
			p := filepath.Join(linksDir, e.Name())
			l, err := link.LoadPinnedLink(p, nil)
			if err != nil {
				errs = append(errs, fmt.Errorf("open pinned link %s: %w", p, err), os.Remove(p))
				continue
			}
			errs = append(errs, detachLink(l))
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, name := range pinnedMaps {
		for _, p := range []string{name, name + stagingSuffix} {
			errs = append(errs, unlinkPin(filepath.Join(mapsDir, p)))
		}
	}
	for _, d := range []string{linksDir, mapsDir, pinDir} {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}
