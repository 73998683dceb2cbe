package egress

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/clawker/clawker-cp/bpf"
)

// KernelState is what the kernel holds of clawker's egress programs, read
// from the kernel itself (link and program ids, bpffs), not from a
// Manager's memory: a test can check that FlushAll left nothing behind.
//
// A program counts as clawker's when its name is one of bpf/egress.c's
// program names (all shorter than the kernel's 15-character limit, so they
// are never truncated), its type is the one that name is built as, and it
// uses a map named cgroup_cfg or sk_dns (every egress program uses one of
// them): "connect4" alone is a name other tools use too. Links must also
// have the attach type clawker attaches that program with. Any generation
// matches, not only this build's.
type KernelState struct {
	// Links are the cgroup links, anywhere, that run a clawker program.
	Links []KernelLink
	// Programs are the loaded clawker programs, attached or not (a program
	// stays loaded while a link or a descriptor holds it).
	Programs []KernelProgram
	// PinDir is the directory Pins were listed under ("" if none was asked).
	PinDir string
	// PinDirExists reports whether PinDir exists.
	PinDirExists bool
	// Pins are the files under PinDir, relative to it, sorted: every pinned
	// map and link (and anything else someone put there).
	Pins []string
}

// KernelLink is a cgroup bpf_link running one of clawker's programs.
type KernelLink struct {
	ID       link.ID
	Program  ebpf.ProgramID
	Name     string // program name, e.g. "connect4"
	CgroupID uint64 // 0 once the cgroup is removed and the link is defunct
	Attach   ebpf.AttachType
}

// KernelProgram is a loaded program that is one of clawker's.
type KernelProgram struct {
	ID   ebpf.ProgramID
	Name string
	Type ebpf.ProgramType
	Maps []string // names of the maps it uses
}

// LinksOn returns the links on the cgroup with this id. Other tests and
// agents may have clawker programs attached to their own cgroups at the same
// time: filter by the cgroup you own.
func (s KernelState) LinksOn(cgroupID uint64) []KernelLink {
	var out []KernelLink
	for _, l := range s.Links {
		if l.CgroupID == cgroupID {
			out = append(out, l)
		}
	}
	return out
}

// Program returns the program with this id, if it is a loaded clawker
// program.
func (s KernelState) Program(id ebpf.ProgramID) (KernelProgram, bool) {
	for _, p := range s.Programs {
		if p.ID == id {
			return p, true
		}
	}
	return KernelProgram{}, false
}

// progTypes is the program type each clawker program name is built as.
var progTypes = map[string]ebpf.ProgramType{
	bpf.EgressProgSockCreate: ebpf.CGroupSock,
	bpf.EgressProgConnect4:   ebpf.CGroupSockAddr,
	bpf.EgressProgConnect6:   ebpf.CGroupSockAddr,
	bpf.EgressProgSendmsg4:   ebpf.CGroupSockAddr,
	bpf.EgressProgSendmsg6:   ebpf.CGroupSockAddr,
	bpf.EgressProgRecvmsg4:   ebpf.CGroupSockAddr,
	bpf.EgressProgRecvmsg6:   ebpf.CGroupSockAddr,
	bpf.EgressProgBackstop:   ebpf.CGroupSKB,
	bpf.EgressProgCutTcp:     ebpf.Tracing,
	bpf.EgressProgCutUdp:     ebpf.Tracing,
}

// KernelObjects lists every link and program of clawker's the kernel holds,
// and the pins under pinDir ("" to skip them). Needs CAP_SYS_ADMIN (to open
// objects by id).
func KernelObjects(pinDir string) (KernelState, error) {
	var s KernelState
	k := kernelWalker{progs: map[ebpf.ProgramID]*KernelProgram{}, maps: map[ebpf.MapID]string{}}

	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			return s, fmt.Errorf("list programs: %w", err)
		}
		id = next
		p, err := k.program(id)
		if err != nil {
			return s, err
		}
		if p != nil {
			s.Programs = append(s.Programs, *p)
		}
	}

	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			return s, fmt.Errorf("link %d: %w", it.ID, err)
		}
		cg := info.Cgroup()
		if cg == nil {
			continue
		}
		p, err := k.program(info.Program)
		if err != nil {
			return s, err
		}
		if p == nil || !attachTypeOf(p.Name, ebpf.AttachType(cg.AttachType)) {
			continue
		}
		s.Links = append(s.Links, KernelLink{ID: info.ID, Program: info.Program, Name: p.Name, CgroupID: cg.CgroupId, Attach: ebpf.AttachType(cg.AttachType)})
	}
	if err := it.Err(); err != nil {
		return s, fmt.Errorf("list links: %w", err)
	}

	if pinDir == "" {
		return s, nil
	}
	s.PinDir = filepath.Clean(pinDir)
	err := filepath.WalkDir(s.PinDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == s.PinDir && errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if p == s.PinDir {
			s.PinDirExists = true
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(s.PinDir, p)
			s.Pins = append(s.Pins, rel)
		}
		return nil
	})
	if err != nil {
		return s, fmt.Errorf("list pins: %w", err)
	}
	slices.Sort(s.Pins)
	return s, nil
}

func attachTypeOf(prog string, typ ebpf.AttachType) bool {
	for _, a := range attachments {
		if a.prog == prog {
			return a.typ == typ
		}
	}
	return false
}

// kernelWalker caches what it learned about programs and maps by id.
type kernelWalker struct {
	progs map[ebpf.ProgramID]*KernelProgram // nil: not clawker's
	maps  map[ebpf.MapID]string
}

// program returns the program with this id if it is clawker's, nil if it is
// not or is gone.
func (k *kernelWalker) program(id ebpf.ProgramID) (*KernelProgram, error) {
	if p, ok := k.progs[id]; ok {
		return p, nil
	}
	p, err := k.readProgram(id)
	if err == nil {
		k.progs[id] = p
	}
	return p, err
}

func (k *kernelWalker) readProgram(id ebpf.ProgramID) (*KernelProgram, error) {
	prog, err := ebpf.NewProgramFromID(id)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // unloaded since it was listed
	}
	if err != nil {
		return nil, fmt.Errorf("open program %d: %w", id, err)
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		return nil, fmt.Errorf("program %d: %w", id, err)
	}
	if typ, ok := progTypes[info.Name]; !ok || typ != info.Type {
		return nil, nil
	}
	p := &KernelProgram{ID: id, Name: info.Name, Type: info.Type}
	ids, _ := info.MapIDs()
	ours := false
	for _, mid := range ids {
		name, err := k.mapName(mid)
		if err != nil {
			return nil, err
		}
		p.Maps = append(p.Maps, name)
		ours = ours || name == bpf.EgressMapCgroupCfg || name == bpf.EgressMapSkDns
	}
	if !ours {
		return nil, nil
	}
	return p, nil
}

func (k *kernelWalker) mapName(id ebpf.MapID) (string, error) {
	if n, ok := k.maps[id]; ok {
		return n, nil
	}
	mp, err := ebpf.NewMapFromID(id)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("open map %d: %w", id, err)
	}
	defer mp.Close()
	info, err := mp.Info()
	if err != nil {
		return "", fmt.Errorf("map %d: %w", id, err)
	}
	k.maps[id] = info.Name
	return info.Name, nil
}
