package egress

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

func udpDenied(t *testing.T, cg string) bool {
	t.Helper()
	res := runInCgroup(t, helperOp{Cgroup: cg, Op: "udp-sendto", Addr: udpOtherDst, UID: nobody})
	switch res.Errno {
	case 0:
		return false
	case int(unix.EPERM):
		return true
	}
	t.Fatalf("udp sendto: %s", res.Err)
	return false
}

func programIDs(t *testing.T, m *Manager) []ebpf.ProgramID {
	t.Helper()
	var ids []ebpf.ProgramID
	for _, p := range m.progs {
		info, err := p.Info()
		must(t, err)
		id, ok := info.ID()
		if !ok {
			t.Fatal("kernel without program ids")
		}
		ids = append(ids, id)
	}
	return ids
}

// linksOn lists the ids of the links attached to cgroup cgid whose program
// is in progs, by iterating the kernel's links.
func linksOn(t *testing.T, cgid uint64, progs []ebpf.ProgramID) []link.ID {
	t.Helper()
	var out []link.ID
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue
		}
		cg := info.Cgroup()
		if cg == nil || cg.CgroupId != cgid {
			continue
		}
		if progs == nil || slices.Contains(progs, info.Program) {
			out = append(out, info.ID)
		}
	}
	must(t, it.Err())
	return out
}

// attachedPrograms asks the kernel which programs are attached to cg, for
// every attach type clawker uses.
func attachedPrograms(t *testing.T, cg string) []ebpf.ProgramID {
	t.Helper()
	f, err := os.Open(cg)
	must(t, err)
	defer f.Close()
	var out []ebpf.ProgramID
	for _, a := range attachments {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: a.typ})
		must(t, err)
		for _, p := range res.Programs {
			out = append(out, p.ID)
		}
	}
	return out
}

// TestPrivilegedPinsOutliveManager: enforcement continues after Close (no
// control plane), a bypass still expires on its own, a second Open re-adopts
// maps and links (switching the links to its programs), and FlushAll
// leaves no pin, no link and no clawker program, while a program another
// owner attached to the same cgroup stays.
func TestPrivilegedPinsOutliveManager(t *testing.T) {
	requirePrivileged(t)
	w := newWorld(t)
	cg, cgid := newCgroup(t, "")
	pinDir := newPinDir(t)

	// Another owner's program on the same cgroup, attached first.
	other, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.CGroupSockAddr,
		AttachType:   ebpf.AttachCGroupInet4Connect,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
		License:      "MIT",
	})
	must(t, err)
	defer other.Close()
	otherLink, err := link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: ebpf.AttachCGroupInet4Connect, Program: other})
	must(t, err)
	defer otherLink.Close()
	otherInfo, err := other.Info()
	must(t, err)
	otherID, _ := otherInfo.ID()

	m1, err := Open(pinDir)
	must(t, err)
	must(t, m1.AttachCgroup(cg))
	must(t, m1.AttachCgroup(cg)) // idempotent
	must(t, m1.Enroll(cgid, w.cfg))
	gen1 := programIDs(t, m1)
	links1 := linksOn(t, cgid, gen1)
	if len(links1) != len(attachments) {
		t.Fatalf("%d links of ours on the cgroup, want %d", len(links1), len(attachments))
	}
	if !udpDenied(t, cg) {
		t.Fatal("not enforced after attach")
	}
	must(t, m1.Bypass(cgid, time.Now().Add(400*time.Millisecond)))
	must(t, m1.Close())

	// No Manager now: the bypass holds, then ends by itself.
	if udpDenied(t, cg) {
		t.Fatal("bypass not in force after Close")
	}
	time.Sleep(450 * time.Millisecond)
	if !udpDenied(t, cg) {
		t.Fatal("bypass did not expire without a manager")
	}
	if got := linksOn(t, cgid, gen1); len(got) != len(attachments) {
		t.Fatalf("after Close %d links remain, want %d", len(got), len(attachments))
	}

	m2, err := Open(pinDir)
	must(t, err)
	defer m2.Close()
	if got := m2.Reused(); len(got) != len(pinnedMaps) {
		t.Fatalf("reused %v, want all of %v", got, pinnedMaps)
	}
	if got := m2.Attached(); !slices.Equal(got, []uint64{cgid}) {
		t.Fatalf("adopted links on %v, want [%d]", got, cgid)
	}
	enr, err := m2.Enrolled()
	must(t, err)
	if len(enr) != 1 || enr[0].CgroupID != cgid || enr[0].Config != w.cfg.withDefaults() {
		t.Fatalf("enrolled %+v, want %d with %+v", enr, cgid, w.cfg)
	}
	gen2 := programIDs(t, m2)
	links2 := linksOn(t, cgid, gen2)
	slices.Sort(links1)
	slices.Sort(links2)
	if !slices.Equal(links1, links2) {
		t.Fatalf("links %v now run the new programs, want the same links %v", links2, links1)
	}
	if !udpDenied(t, cg) {
		t.Fatal("not enforced after re-adoption")
	}

	must(t, m2.FlushAll())
	if udpDenied(t, cg) {
		t.Fatal("still enforced after FlushAll")
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin dir after FlushAll: %v", err)
	}
	if got := linksOn(t, cgid, append(gen1, gen2...)); len(got) != 0 {
		t.Fatalf("links %v of ours remain", got)
	}
	if got := attachedPrograms(t, cg); !slices.Equal(got, []ebpf.ProgramID{otherID}) {
		t.Fatalf("attached to the cgroup after FlushAll: %v, want only the other owner's %v", got, otherID)
	}
	// The programs themselves are gone from the kernel.
	deadline := time.Now().Add(3 * time.Second)
	for _, id := range append(gen1, gen2...) {
		for {
			p, err := ebpf.NewProgramFromID(id)
			if errors.Is(err, os.ErrNotExist) {
				break
			}
			if err == nil {
				p.Close()
			}
			if time.Now().After(deadline) {
				t.Fatalf("program %d still loaded after FlushAll", id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := m2.Enroll(cgid, w.cfg); !errors.Is(err, ErrClosed) {
		t.Fatalf("Enroll after FlushAll: %v, want ErrClosed", err)
	}
}

func (c Config) withDefaults() Config {
	if c.EventRate == 0 {
		c.EventRate = DefaultEventRate
	}
	if c.EventBurst == 0 {
		c.EventBurst = c.EventRate
	}
	return c
}

// TestPrivilegedOpenRefuses: a pin dir off bpffs is refused without
// touching anything. (Pinned maps of another layout: migrate_test.go.)
func TestPrivilegedOpenRefuses(t *testing.T) {
	requirePrivileged(t)

	tmp := filepath.Join(t.TempDir(), "pins")
	if _, err := Open(tmp); err == nil || !strings.Contains(err.Error(), "not on bpffs") {
		t.Fatalf("Open on tmpfs: %v", err)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open created %s: %v", tmp, err)
	}
}

// TestPrivilegedAttachFailureUndoes: attaching to something that is not a
// cgroup leaves no link and no pin.
func TestPrivilegedAttachFailureUndoes(t *testing.T) {
	requirePrivileged(t)
	pinDir := newPinDir(t)
	m := openManager(t, pinDir)
	if err := m.AttachCgroup(t.TempDir()); err == nil {
		t.Fatal("attached to a tmpfs directory")
	}
	entries, err := os.ReadDir(filepath.Join(pinDir, "links"))
	must(t, err)
	if len(entries) != 0 || len(m.Attached()) != 0 {
		t.Fatalf("links left: %v %v", entries, m.Attached())
	}
}

// TestPrivilegedContainerCgroup resolves the layouts Docker uses, built as
// real cgroups under a test cgroup.
func TestPrivilegedContainerCgroup(t *testing.T) {
	requirePrivileged(t)
	id := strings.Repeat("ab", 32)
	for _, layout := range []string{
		"docker/" + id,
		"system.slice/docker-" + id + ".scope",
		"user.slice/user-1000.slice/user@1000.service/app.slice/docker-" + id + ".scope",
	} {
		t.Run(strings.SplitN(layout, "/", 2)[0], func(t *testing.T) {
			root, _ := newCgroup(t, "")
			p := filepath.Join(root, layout)
			must(t, os.MkdirAll(p, 0o755))
			want, err := CgroupID(p)
			must(t, err)
			got, gotID, err := containerCgroupUnder(root, id)
			must(t, err)
			if got != p || gotID != want {
				t.Fatalf("got %s %d, want %s %d", got, gotID, p, want)
			}
		})
	}
	root, _ := newCgroup(t, "")
	if _, _, err := containerCgroupUnder(root, id); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing container: %v", err)
	}
	if _, _, err := containerCgroupUnder(root, "abc"); err == nil {
		t.Fatal("short id accepted")
	}
}

// TestPrivilegedCgroupIDMatchesKernel: CgroupID is what the programs see.
func TestPrivilegedCgroupIDMatchesKernel(t *testing.T) {
	requirePrivileged(t)
	w := newWorld(t)
	m, cg, cgid := w.setup(t)
	cfg := w.cfg
	cfg.Events = true
	must(t, m.Enroll(cgid, cfg))
	ch, err := m.Events(t.Context())
	must(t, err)
	res := runInCgroup(t, helperOp{Cgroup: cg, Op: "udp-sendto", Addr: udpOtherDst, UID: nobody})
	if res.Errno != int(unix.EPERM) {
		t.Fatalf("got %s", errnoName(res.Errno))
	}
	select {
	case ev := <-ch:
		if ev.CgroupID != cgid {
			t.Fatalf("event cgroup %d, CgroupID %d", ev.CgroupID, cgid)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no event")
	}
}

// TestPrivilegedDetachAndDefunctLinks: DetachCgroup removes only that
// cgroup's links and pins; a re-Open unpins links whose cgroup is gone.
func TestPrivilegedDetachAndDefunctLinks(t *testing.T) {
	requirePrivileged(t)
	pinDir := newPinDir(t)
	cgA, idA := newCgroup(t, "")
	cgB, idB := newCgroup(t, "")
	cgGone, idGone := newCgroup(t, "")
	m := openManager(t, pinDir)
	for _, cg := range []string{cgA, cgB, cgGone} {
		must(t, m.AttachCgroup(cg))
	}
	pins := func() int {
		entries, err := os.ReadDir(filepath.Join(pinDir, "links"))
		must(t, err)
		return len(entries)
	}
	if got := pins(); got != 3*len(attachments) {
		t.Fatalf("%d link pins, want %d", got, 3*len(attachments))
	}
	gen := programIDs(t, m)
	must(t, m.DetachCgroup(cgB))
	if got := attachedPrograms(t, cgB); len(got) != 0 {
		t.Fatalf("programs %v still attached to the detached cgroup", got)
	}
	if got := linksOn(t, idA, gen); len(got) != len(attachments) {
		t.Fatalf("cgroup A lost links: %v", got)
	}
	must(t, m.Close())

	removeCgroup(t, cgGone)
	// The kernel releases a removed cgroup's links asynchronously.
	for deadline := time.Now().Add(3 * time.Second); len(linksOn(t, idGone, nil)) > 0; {
		if time.Now().After(deadline) {
			t.Fatal("links of the removed cgroup not released")
		}
		time.Sleep(20 * time.Millisecond)
	}
	m2 := openManager(t, pinDir)
	got := m2.Attached()
	slices.Sort(got)
	if !slices.Equal(got, []uint64{idA}) {
		t.Fatalf("adopted %v, want only %d (B detached %d, gone %d)", got, idA, idB, idGone)
	}
	if got := pins(); got != len(attachments) {
		t.Fatalf("%d link pins after re-Open, want %d", got, len(attachments))
	}
}
