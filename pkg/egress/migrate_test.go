package egress

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/clawker/clawker-cp/bpf"
)

var (
	tU16 = &btf.Int{Name: "u16", Size: 2}
	tU32 = &btf.Int{Name: "u32", Size: 4}
	tU64 = &btf.Int{Name: "u64", Size: 8}
)

func member(name string, typ btf.Type, off int) btf.Member {
	return btf.Member{Name: name, Type: typ, Offset: btf.Bits(off * 8)}
}

func le(vals ...any) []byte {
	var b bytes.Buffer
	for _, v := range vals {
		_ = binary.Write(&b, binary.NativeEndian, v) // a bytes.Buffer takes everything
	}
	return b.Bytes()
}

// TestTranslate covers the BTF translation migration relies on: members
// matched by name whatever their order, new members zero, dropped members
// only when they hold nothing.
func TestTranslate(t *testing.T) {
	inner := &btf.Struct{Name: "inner", Size: 4, Members: []btf.Member{member("x", tU32, 0)}}
	innerNew := &btf.Struct{Name: "inner", Size: 8, Members: []btf.Member{member("y", tU32, 0), member("x", tU32, 4)}}
	anon := &btf.Struct{Size: 4, Members: []btf.Member{member("b", tU32, 0)}}
	for _, tc := range []struct {
		name     string
		old, new btf.Type
		src      []byte
		want     []byte // nil: refused
		err      string
	}{{
		name: "reordered, added, dropped zero",
		old: &btf.Struct{Size: 16, Members: []btf.Member{
			member("a", tU32, 0), member("b", tU16, 4), member("_pad", tU16, 6), member("gone", tU64, 8)}},
		new: &btf.Struct{Size: 16, Members: []btf.Member{
			member("b", tU16, 0), member("a", tU32, 4), member("added", tU64, 8)}},
		src:  le(uint32(0x11223344), uint16(0x5566), uint16(0), uint64(0)),
		want: le(uint16(0x5566), uint16(0), uint32(0x11223344), uint64(0)),
	}, {
		name: "dropped member holds data",
		old:  &btf.Struct{Size: 8, Members: []btf.Member{member("a", tU32, 0), member("gone", tU32, 4)}},
		new:  &btf.Struct{Size: 4, Members: []btf.Member{member("a", tU32, 0)}},
		src:  le(uint32(1), uint32(2)),
		err:  "value.gone is not in this build's layout and holds data",
	}, {
		name: "nested struct behind a typedef, array grows",
		old: &btf.Struct{Size: 12, Members: []btf.Member{
			member("in", inner, 0), member("arr", &btf.Array{Type: tU32, Nelems: 2}, 4)}},
		new: &btf.Struct{Size: 20, Members: []btf.Member{
			member("arr", &btf.Array{Type: tU32, Nelems: 3}, 0), member("in", &btf.Typedef{Name: "in_t", Type: innerNew}, 12)}},
		src:  le(uint32(7), uint32(8), uint32(9)),
		want: le(uint32(8), uint32(9), uint32(0), uint32(0), uint32(7)),
	}, {
		name: "array shrinks over zeros",
		old:  &btf.Array{Type: tU32, Nelems: 3},
		new:  &btf.Array{Type: tU32, Nelems: 2},
		src:  le(uint32(1), uint32(2), uint32(0)),
		want: le(uint32(1), uint32(2)),
	}, {
		name: "array shrinks over data",
		old:  &btf.Array{Type: tU32, Nelems: 3},
		new:  &btf.Array{Type: tU32, Nelems: 2},
		src:  le(uint32(1), uint32(2), uint32(3)),
		err:  "elements 2.. are not in this build's layout",
	}, {
		name: "integer changes size",
		old:  &btf.Struct{Size: 4, Members: []btf.Member{member("a", tU32, 0)}},
		new:  &btf.Struct{Size: 8, Members: []btf.Member{member("a", tU64, 0)}},
		src:  le(uint32(1)),
		err:  "value.a: 4-byte integer became 8 bytes",
	}, {
		name: "anonymous struct members are named directly",
		old:  &btf.Struct{Size: 8, Members: []btf.Member{member("a", tU32, 0), member("", anon, 4)}},
		new:  &btf.Struct{Size: 8, Members: []btf.Member{member("b", tU32, 0), member("a", tU32, 4)}},
		src:  le(uint32(1), uint32(2)),
		want: le(uint32(2), uint32(1)),
	}, {
		name: "bitfield",
		old:  &btf.Struct{Size: 4, Members: []btf.Member{{Name: "f", Type: tU32, BitfieldSize: 3}}},
		new:  &btf.Struct{Size: 4, Members: []btf.Member{{Name: "f", Type: tU32, BitfieldSize: 3}}},
		src:  le(uint32(1)),
		err:  "bitfield",
	}, {
		name: "union",
		old:  &btf.Union{Size: 4, Members: []btf.Member{member("a", tU32, 0)}},
		new:  &btf.Union{Size: 4, Members: []btf.Member{member("a", tU32, 0)}},
		src:  le(uint32(1)),
		err:  "not translated",
	}, {
		name: "integer became a struct",
		old:  tU32,
		new:  &btf.Struct{Size: 4, Members: []btf.Member{member("a", tU32, 0)}},
		src:  le(uint32(1)),
		err:  "became",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			size, err := btf.Sizeof(tc.new)
			must(t, err)
			dst := make([]byte, size)
			err = translate(dst, tc.new, tc.src, tc.old, "value")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v (%x), want an error containing %q", err, dst, tc.err)
				}
				return
			}
			must(t, err)
			if !bytes.Equal(dst, tc.want) {
				t.Fatalf("got %x, want %x", dst, tc.want)
			}
		})
	}
}

// oldGeneration describes the build the fabricated pins come from.
type oldGeneration struct {
	noBTF  bool   // its cgroup_cfg was created without BTF
	legacy uint64 // value of the cgroup_cfg member this build dropped
}

// oldPins is what the fabricated generation left in the kernel.
type oldPins struct {
	progs []ebpf.ProgramID
	links []link.ID
	maps  map[string]ebpf.MapID
}

// oldAgentCfg is agent_cfg as an earlier build might have had it: no
// _reserved, and in its place a member "legacy" this build dropped. The
// programs read nothing at or past _reserved's offset, so this build's
// programs verify against it and enforce correctly: they stand in for the
// old build's programs.
func oldAgentCfg(t *testing.T, cur *btf.Struct) (*btf.Struct, int) {
	// Longer than this build's, so this build's programs load against it
	// (they read only what they know): _reserved is missing, legacy
	// follows the last member.
	old := &btf.Struct{Name: cur.Name, Size: cur.Size + 8}
	found := false
	for _, m := range cur.Members {
		if m.Name == "_reserved" {
			found = int(m.Offset/8) == int(unsafe.Offsetof(bpf.EgressAgentCfg{}.Reserved))
			continue
		}
		old.Members = append(old.Members, m)
	}
	if !found {
		t.Fatal("agent_cfg._reserved moved")
	}
	old.Members = append(old.Members, member("legacy", tU64, int(cur.Size)))
	return old, int(old.Size)
}

// oldRouteVal is route_val with a trailing member "weight" this build
// dropped (the programs read only port).
func oldRouteVal(cur *btf.Struct) *btf.Struct {
	old := &btf.Struct{Name: cur.Name, Size: cur.Size + 4, Members: slices.Clone(cur.Members)}
	old.Members = append(old.Members, member("weight", tU32, int(cur.Size)))
	return old
}

// fabricateOldGeneration leaves under pinDir what an earlier build with
// other map layouts would have left: pinned maps holding an enrolled cgroup
// (cfg), the routed identity and the world's routes, and pinned links on cg
// running its programs, no process holding anything. The programs are this
// build's, loaded against the old layouts (see oldAgentCfg); ip_identity
// differs only in its flags (preallocated), routes in its table's value.
func fabricateOldGeneration(t *testing.T, pinDir, cg string, cgid uint64, w *world, g oldGeneration) oldPins {
	t.Helper()
	spec, err := bpf.LoadEgress()
	must(t, err)
	cfgSpec := spec.Maps[bpf.EgressMapCgroupCfg]
	oldCfg, size := oldAgentCfg(t, cfgSpec.Value.(*btf.Struct))
	cfgSpec.Value, cfgSpec.ValueSize = oldCfg, uint32(size)
	if g.noBTF {
		cfgSpec.Key, cfgSpec.Value = nil, nil
	}
	spec.Maps[bpf.EgressMapIpIdentity].Flags = 0
	inner := spec.Maps[bpf.EgressMapRoutes].InnerMap
	inner.Value = oldRouteVal(inner.Value.(*btf.Struct))
	inner.ValueSize += 4

	coll, err := ebpf.NewCollection(spec)
	must(t, err)
	defer coll.Close()

	// State.
	v, err := w.cfg.encode()
	must(t, err)
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&v)), unsafe.Sizeof(v))
	oldValue := binary.NativeEndian.AppendUint64(slices.Clone(raw[:size-8]), g.legacy)
	must(t, coll.Maps[bpf.EgressMapCgroupCfg].Put(cgid, oldValue))
	k, err := ip4(netip.MustParseAddr(routedIP))
	must(t, err)
	must(t, coll.Maps[bpf.EgressMapIpIdentity].Put(k, uint32(identity)))
	tableSpec := inner.Copy()
	tableSpec.Name = "route_table"
	table, err := ebpf.NewMap(tableSpec)
	must(t, err)
	defer table.Close()
	for _, r := range w.routes {
		val := make([]byte, inner.ValueSize)
		binary.BigEndian.PutUint16(val, r.ListenerPort)
		must(t, table.Put(bpf.EgressRouteKey{Identity: r.Identity, Port: be16(r.Port), Proto: uint8(r.Proto)}, val))
	}
	must(t, coll.Maps[bpf.EgressMapRoutes].Put(uint32(0), table))

	// Pins, as the old build's Open and AttachCgroup lay them out.
	out := oldPins{maps: map[string]ebpf.MapID{}}
	mapsDir, linksDir := filepath.Join(pinDir, "maps"), filepath.Join(pinDir, "links")
	must(t, os.MkdirAll(mapsDir, 0o700))
	must(t, os.MkdirAll(linksDir, 0o700))
	for _, name := range pinnedMaps {
		mp := coll.Maps[name]
		must(t, mp.Pin(filepath.Join(mapsDir, name)))
		info, err := mp.Info()
		must(t, err)
		out.maps[name], _ = info.ID()
	}
	f, err := os.Open(cg)
	must(t, err)
	defer f.Close()
	for _, a := range attachments {
		prog := coll.Programs[a.prog]
		l, err := link.AttachRawLink(link.RawLinkOptions{Target: int(f.Fd()), Program: prog, Attach: a.typ})
		must(t, err)
		err = l.Pin(filepath.Join(linksDir, linkName(cgid, a.prog)))
		info, ierr := l.Info()
		l.Close()
		must(t, err)
		must(t, ierr)
		out.links = append(out.links, info.ID)
		out.progs = append(out.progs, info.Program)
	}
	return out
}

// probes are what a process in the enrolled cgroup tries, and what it must
// see while any generation of the programs enforces.
func (w *world) migrationProbes(forbiddenTCP, forbiddenUDP *recorder) ([]probe, []string) {
	return []probe{
			{Op: "tcp", Addr: forbiddenTCP.Addr.String()},
			{Op: "tcp", Addr: routedIP + ":8443"},
			{Op: "udp-sendto", Addr: forbiddenUDP.Addr.String()},
		}, []string{
			"peer " + w.proxy.Addr.String(),
			"peer " + w.route.Addr.String(),
			"EPERM",
		}
}

// checkOutcomes fails unless every probe ran and only ever saw what it must.
func checkOutcomes(t *testing.T, phase string, res helperResult, probes []probe, want []string) {
	t.Helper()
	seen := make([]int, len(probes))
	for key, n := range res.Outcomes {
		idx, outcome, _ := strings.Cut(key, " ")
		i, err := strconv.Atoi(idx)
		if err != nil || i >= len(probes) {
			t.Fatalf("%s: outcome %q", phase, key)
		}
		seen[i] += n
		if outcome != want[i] {
			t.Errorf("%s: %s %s: %q %d times, want only %q", phase, probes[i].Op, probes[i].Addr, outcome, n, want[i])
		}
	}
	for i, n := range seen {
		if n == 0 {
			t.Errorf("%s: probe %d never ran", phase, i)
		}
	}
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

func mapID(t *testing.T, mp *ebpf.Map) ebpf.MapID {
	t.Helper()
	info, err := mp.Info()
	must(t, err)
	id, ok := info.ID()
	if !ok {
		t.Fatal("kernel without map ids")
	}
	return id
}

func pinnedMapID(t *testing.T, path string) ebpf.MapID {
	t.Helper()
	mp, err := ebpf.LoadPinnedMap(path, nil)
	must(t, err)
	defer mp.Close()
	return mapID(t, mp)
}

// waitGone waits until no object with these ids exists (the kernel frees
// programs and maps asynchronously).
func waitGone[ID ~uint32, O interface{ Close() error }](t *testing.T, what string, ids []ID, open func(ID) (O, error)) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for _, id := range ids {
		for {
			o, err := open(id)
			if errors.Is(err, os.ErrNotExist) {
				break
			}
			if err == nil {
				o.Close()
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s %d still exists", what, id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestPrivilegedMigrateIncompatibleMaps: pins of a build with other map
// layouts (cgroup_cfg's value lacks a member and has one this build
// dropped, ip_identity is preallocated, the route table's value is longer)
// are migrated by Open: the enrolled cgroup, its identity and its routes
// survive, a process in the cgroup probing in a loop throughout Open is
// never let through directly nor sent to the wrong listener, the same links
// now run the new programs, and the pins are this build's maps (a second
// Open reuses them all).
func TestPrivilegedMigrateIncompatibleMaps(t *testing.T) {
	requirePrivileged(t)
	w := newWorld(t)
	cg, cgid := newCgroup(t, "")
	pinDir := newPinDir(t)
	// A destination the cgroup must never reach directly.
	forbiddenTCP := newTCPRecorder(t, "127.0.0.9:0")
	forbiddenUDP := newUDPRecorder(t, "127.0.0.9:0")
	probes, want := w.migrationProbes(forbiddenTCP, forbiddenUDP)
	op := helperOp{Cgroup: cg, UID: nobody, Probes: probes}

	old := fabricateOldGeneration(t, pinDir, cg, cgid, w, oldGeneration{})
	checkOutcomes(t, "old generation", loopInCgroup(t, op)(), probes, want)

	stop := loopInCgroup(t, op)
	start := time.Now()
	m, err := Open(pinDir)
	openTook := time.Since(start)
	during := stop()
	must(t, err)
	defer m.Close()
	t.Logf("Open with migration took %v; %d probe rounds ran around it", openTook, during.Count)
	checkOutcomes(t, "during Open", during, probes, want)

	migrated := map[string]Migration{}
	for _, mg := range m.Migrated() {
		migrated[mg.Map] = mg
	}
	for name, copied := range map[string]int{bpf.EgressMapCgroupCfg: 1, bpf.EgressMapIpIdentity: 1, bpf.EgressMapRoutes: len(w.routes)} {
		mg, ok := migrated[name]
		if !ok || mg.Copied != copied || mg.Fresh || mg.Reason == "" {
			t.Errorf("migration of %s: %+v, want %d entries copied", name, mg, copied)
		}
	}
	if len(migrated) != 3 {
		t.Errorf("migrated %+v, want cgroup_cfg, ip_identity, routes", m.Migrated())
	}
	reused := m.Reused()
	slices.Sort(reused)
	if want := []string{bpf.EgressMapEvents, bpf.EgressMapIpRules, bpf.EgressMapPeerProject, bpf.EgressMapRatelimit, bpf.EgressMapSkDns, bpf.EgressMapStats}; !slices.Equal(reused, want) {
		t.Errorf("reused %v, want %v", reused, want)
	}

	// The state survived, field by field.
	enr, err := m.Enrolled()
	must(t, err)
	if len(enr) != 1 || enr[0].CgroupID != cgid || enr[0].Config != w.cfg.withDefaults() || enr[0].Disabled || !enr[0].BypassUntil.IsZero() {
		t.Fatalf("enrolled %+v, want %d with %+v", enr, cgid, w.cfg.withDefaults())
	}
	var v bpf.EgressAgentCfg
	must(t, m.objs.CgroupCfg.Lookup(cgid, &v))
	if v.Reserved != [2]uint64{} {
		t.Errorf("_reserved, absent in the old layout, is %v", v.Reserved)
	}
	routes, err := m.Routes()
	must(t, err)
	sortRoutes := func(rs []Route) {
		slices.SortFunc(rs, func(a, b Route) int { return int(a.Port) - int(b.Port) })
	}
	sortRoutes(routes)
	wantRoutes := slices.Clone(w.routes)
	sortRoutes(wantRoutes)
	if !slices.Equal(routes, wantRoutes) {
		t.Errorf("routes %+v, want %+v", routes, wantRoutes)
	}

	// The same links run the new programs; the old programs are gone.
	links := linksOn(t, cgid, programIDs(t, m))
	slices.Sort(links)
	slices.Sort(old.links)
	if !slices.Equal(links, old.links) {
		t.Errorf("links running the new programs %v, want the old links %v", links, old.links)
	}
	waitGone(t, "old program", old.progs, ebpf.NewProgramFromID)

	// The pins are the new maps, renamed over the old ones; nothing staged
	// is left. The old migrated maps are freed.
	entries, err := os.ReadDir(filepath.Join(pinDir, "maps"))
	must(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	wantNames := slices.Clone(pinnedMaps)
	slices.Sort(wantNames)
	if !slices.Equal(names, wantNames) {
		t.Errorf("map pins %v, want %v", names, wantNames)
	}
	var oldMigrated []ebpf.MapID
	for name := range migrated {
		got := pinnedMapID(t, filepath.Join(pinDir, "maps", name))
		if got != mapID(t, m.mapByName(name)) || got == old.maps[name] {
			t.Errorf("pin of %s is map %d, want the new map %d (old %d)", name, got, mapID(t, m.mapByName(name)), old.maps[name])
		}
		oldMigrated = append(oldMigrated, old.maps[name])
	}
	waitGone(t, "old map", oldMigrated, ebpf.NewMapFromID)

	checkOutcomes(t, "after Open", loopInCgroup(t, op)(), probes, want)
	if n := forbiddenTCP.count() + forbiddenUDP.count(); n != 0 {
		t.Fatalf("the forbidden destination was reached %d times", n)
	}

	// The next generation finds this build's layout everywhere.
	must(t, m.Close())
	m2 := openManager(t, pinDir)
	if got := m2.Migrated(); len(got) != 0 {
		t.Fatalf("second Open migrated %+v", got)
	}
	if got := m2.Reused(); len(got) != len(pinnedMaps) {
		t.Fatalf("second Open reused %v", got)
	}
}

// TestPrivilegedMigrationRefused: an old cgroup_cfg without BTF, or whose
// value holds data in a member this build dropped, cannot be migrated: Open
// fails wrapping ErrMapIncompatible, every pin stays, the old programs keep
// enforcing, and FlushPins still clears everything.
func TestPrivilegedMigrationRefused(t *testing.T) {
	requirePrivileged(t)
	for _, tc := range []struct {
		name string
		gen  oldGeneration
		want string
	}{
		{"no BTF", oldGeneration{noBTF: true}, "no BTF"},
		{"dropped member holds data", oldGeneration{legacy: 42}, "value.legacy is not in this build's layout and holds data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			cg, cgid := newCgroup(t, "")
			pinDir := newPinDir(t)
			old := fabricateOldGeneration(t, pinDir, cg, cgid, w, tc.gen)

			_, err := Open(pinDir)
			if !errors.Is(err, ebpf.ErrMapIncompatible) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open: %v, want ErrMapIncompatible mentioning %q", err, tc.want)
			}
			t.Logf("refused: %v", err)
			entries, err := os.ReadDir(filepath.Join(pinDir, "maps"))
			must(t, err)
			if len(entries) != len(pinnedMaps) {
				t.Errorf("map pins %v", entries)
			}
			for _, name := range pinnedMaps {
				if got := pinnedMapID(t, filepath.Join(pinDir, "maps", name)); got != old.maps[name] {
					t.Errorf("pin of %s changed from map %d to %d", name, old.maps[name], got)
				}
			}
			if got := linksOn(t, cgid, old.progs); len(got) != len(attachments) {
				t.Errorf("%d links run the old programs, want %d", len(got), len(attachments))
			}
			if !udpDenied(t, cg) {
				t.Fatal("not enforced after the refusal")
			}

			must(t, FlushPins(pinDir))
			if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("pin dir after FlushPins: %v", err)
			}
			if udpDenied(t, cg) {
				t.Fatal("still enforced after FlushPins")
			}
		})
	}
}

// TestPrivilegedStaleStatsStartFresh: a pinned map that carries no state to
// keep (here stats of another size) is replaced by a fresh one.
func TestPrivilegedStaleStatsStartFresh(t *testing.T) {
	requirePrivileged(t)
	pinDir := newPinDir(t)
	m := openManager(t, pinDir)
	must(t, m.Close())
	statsPin := filepath.Join(pinDir, "maps", bpf.EgressMapStats)
	must(t, os.Remove(statsPin))
	odd, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 3})
	must(t, err)
	defer odd.Close()
	must(t, odd.Pin(statsPin))

	m2 := openManager(t, pinDir)
	got := m2.Migrated()
	if len(got) != 1 || got[0].Map != bpf.EgressMapStats || !got[0].Fresh || got[0].Copied != 0 {
		t.Fatalf("migrated %+v, want stats started fresh", got)
	}
	if id := pinnedMapID(t, statsPin); id != mapID(t, m2.objs.Stats) || id == mapID(t, odd) {
		t.Fatalf("stats pin is map %d, want the new %d", id, mapID(t, m2.objs.Stats))
	}
	if _, err := m2.Stats(); err != nil {
		t.Fatal(err)
	}
	if got := m2.Reused(); len(got) != len(pinnedMaps)-1 || slices.Contains(got, bpf.EgressMapStats) {
		t.Fatalf("reused %v, want every map but stats", got)
	}
}

// TestSameLayout: a same-size reordering or rename is a different layout;
// typedefs and type names are not.
func TestSameLayout(t *testing.T) {
	base := &btf.Struct{Name: "s", Size: 8, Members: []btf.Member{member("a", tU32, 0), member("b", tU32, 4)}}
	for _, tc := range []struct {
		name string
		typ  btf.Type
		same bool
	}{
		{"identical, other names for the types", &btf.Struct{Name: "t", Size: 8, Members: []btf.Member{
			member("a", &btf.Typedef{Name: "__be32", Type: &btf.Int{Name: "unsigned int", Size: 4}}, 0), member("b", tU32, 4)}}, true},
		{"reordered", &btf.Struct{Size: 8, Members: []btf.Member{member("b", tU32, 0), member("a", tU32, 4)}}, false},
		{"renamed", &btf.Struct{Size: 8, Members: []btf.Member{member("a", tU32, 0), member("c", tU32, 4)}}, false},
		{"split", &btf.Struct{Size: 8, Members: []btf.Member{member("a", tU32, 0), member("b", tU16, 4), member("c", tU16, 6)}}, false},
		{"array instead", &btf.Struct{Size: 8, Members: []btf.Member{member("a", tU32, 0), member("b", &btf.Array{Type: tU16, Nelems: 2}, 4)}}, false},
	} {
		if got := sameLayout(base, tc.typ); got != tc.same {
			t.Errorf("%s: same %v, want %v", tc.name, got, tc.same)
		}
	}
}

// TestPrivilegedSameSizeLayoutChangeMigrates: a pinned cgroup_cfg of the
// right size whose BTF names a member differently (here _reserved is
// "legacy") is migrated, not reused byte for byte.
func TestPrivilegedSameSizeLayoutChangeMigrates(t *testing.T) {
	requirePrivileged(t)
	w := newWorld(t)
	_, cgid := newCgroup(t, "")
	pinDir := newPinDir(t)
	m := openManager(t, pinDir)
	must(t, m.Enroll(cgid, w.cfg))
	spec := m.spec.Maps[bpf.EgressMapCgroupCfg].Copy()
	must(t, m.Close())

	cur := spec.Value.(*btf.Struct)
	renamed := &btf.Struct{Name: cur.Name, Size: cur.Size, Members: slices.Clone(cur.Members)}
	for i := range renamed.Members {
		if renamed.Members[i].Name == "_reserved" {
			renamed.Members[i].Name = "legacy"
		}
	}
	spec.Value = renamed
	old, err := ebpf.NewMap(spec)
	must(t, err)
	defer old.Close()
	pin := filepath.Join(pinDir, "maps", bpf.EgressMapCgroupCfg)
	pinned, err := ebpf.LoadPinnedMap(pin, nil)
	must(t, err)
	var v []byte
	err = pinned.Lookup(cgid, &v)
	pinned.Close()
	must(t, err)
	must(t, old.Put(cgid, v))
	must(t, unlinkPin(pin))
	must(t, old.Pin(pin))

	m2 := openManager(t, pinDir)
	got := m2.Migrated()
	if len(got) != 1 || got[0].Map != bpf.EgressMapCgroupCfg || got[0].Copied != 1 || !strings.Contains(got[0].Reason, "value layout") {
		t.Fatalf("migrated %+v, want cgroup_cfg for its value layout", got)
	}
	enr, err := m2.Enrolled()
	must(t, err)
	if len(enr) != 1 || enr[0].CgroupID != cgid || enr[0].Config != w.cfg.withDefaults() {
		t.Fatalf("enrolled %+v", enr)
	}
}
