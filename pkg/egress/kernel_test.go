package egress

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// TestPrivilegedKernelObjects: KernelObjects lists, from the kernel, every
// link of clawker's on a cgroup with its program and attach type, and the
// pins; after FlushAll none of them remain. A program merely named like one
// of clawker's, attached to the same cgroup, is not listed.
func TestPrivilegedKernelObjects(t *testing.T) {
	requirePrivileged(t)
	cg, cgid := newCgroup(t, "")
	pinDir := newPinDir(t)

	impostor, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "connect4",
		Type:         ebpf.CGroupSockAddr,
		AttachType:   ebpf.AttachCGroupInet4Connect,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
		License:      "MIT",
	})
	must(t, err)
	defer impostor.Close()
	impostorLink, err := link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: ebpf.AttachCGroupInet4Connect, Program: impostor})
	must(t, err)
	defer impostorLink.Close()
	impostorInfo, err := impostor.Info()
	must(t, err)
	impostorID, _ := impostorInfo.ID()

	m, err := Open(pinDir)
	must(t, err)
	defer m.Close()
	must(t, m.AttachCgroup(cg))
	progs := programIDs(t, m)

	start := time.Now()
	ks, err := KernelObjects(pinDir)
	must(t, err)
	t.Logf("KernelObjects took %v: %d links, %d programs of clawker's on this machine", time.Since(start), len(ks.Links), len(ks.Programs))

	var got, want []string
	for _, l := range ks.LinksOn(cgid) {
		got = append(got, fmt.Sprintf("%s %v", l.Name, l.Attach))
		if !slices.Contains(progs, l.Program) {
			t.Errorf("link %+v runs program %d, not one of this Manager's %v", l, l.Program, progs)
		}
		if p, ok := ks.Program(l.Program); !ok || p.Name != l.Name {
			t.Errorf("link %+v: program listed as %+v %v", l, p, ok)
		}
	}
	for _, a := range attachments {
		want = append(want, fmt.Sprintf("%s %v", a.prog, a.typ))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("links on the cgroup: %v, want %v", got, want)
	}
	if _, ok := ks.Program(impostorID); ok {
		t.Fatalf("the impostor program %d is listed", impostorID)
	}
	for _, id := range progs {
		if _, ok := ks.Program(id); !ok {
			t.Errorf("program %d of the Manager not listed", id)
		}
	}
	var wantPins []string
	for _, name := range pinnedMaps {
		wantPins = append(wantPins, "maps/"+name)
	}
	for _, a := range attachments {
		wantPins = append(wantPins, "links/"+linkName(cgid, a.prog))
	}
	slices.Sort(wantPins)
	if !ks.PinDirExists || !slices.Equal(ks.Pins, wantPins) {
		t.Fatalf("pins %v (dir exists %v), want %v", ks.Pins, ks.PinDirExists, wantPins)
	}

	must(t, m.FlushAll())
	// Programs are freed asynchronously once their last link is gone.
	deadline := time.Now().Add(3 * time.Second)
	for {
		ks, err = KernelObjects(pinDir)
		must(t, err)
		var left []ebpf.ProgramID
		for _, id := range progs {
			if _, ok := ks.Program(id); ok {
				left = append(left, id)
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("programs %v still loaded after FlushAll", left)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if l := ks.LinksOn(cgid); len(l) != 0 {
		t.Fatalf("links left on the cgroup after FlushAll: %+v", l)
	}
	if ks.PinDirExists || len(ks.Pins) != 0 {
		t.Fatalf("pins after FlushAll: %v (dir exists %v)", ks.Pins, ks.PinDirExists)
	}
	// The other owner's program is still attached.
	if got := attachedPrograms(t, cg); !slices.Equal(got, []ebpf.ProgramID{impostorID}) {
		t.Fatalf("attached after FlushAll: %v, want only %d", got, impostorID)
	}
}
