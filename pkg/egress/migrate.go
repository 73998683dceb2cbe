package egress

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/clawker/clawker-cp/bpf"
)

// Migration of pinned maps from an incompatible build.
//
// A pinned map whose layout differs from this build's cannot be handed to
// the new programs. Open then builds this build's map, copies the old
// entries across (translated through both sides' BTF), loads the programs
// against it, switches every pinned link to the new programs, and only then
// renames the new map's pin over the old one. Until the link switch the old
// programs keep running on the old maps; after it the new programs run on
// maps that already hold every entry: no instant where an enrolled cgroup is
// unfiltered. A crash before the renames leaves the old pins (or some of
// them), and the next Open migrates from those again: they still hold what
// was copied, since nothing writes to the maps while Open runs.
//
// Which maps carry state that must survive:
//
//	cgroup_cfg, ip_identity, routes, copied, or Open refuses (old programs keep enforcing)
//	peer_project
//	events, stats, ratelimit, sk_dns start fresh: undelivered events, counters,
//	                                 event token buckets, and the DNS source
//	                                 rewrite of queries in flight at the switch
//	                                 are lost (sk_dns is per socket and cannot
//	                                 be read back from user space)
//
// Entries written to an old map by another process after the copy are lost:
// run one control plane per pin dir.

// Migration reports one pinned map Open replaced because its layout was not
// this build's.
type Migration struct {
	Map    string // pinned map name
	Reason string // what differed
	Copied int    // entries carried over (route table entries for routes)
	Fresh  bool   // the old contents were dropped, by design (see above)
}

// migratedMaps must be copied to keep enforcement; the rest start fresh.
var migratedMaps = map[string]bool{
	bpf.EgressMapCgroupCfg:   true,
	bpf.EgressMapIpIdentity:  true,
	bpf.EgressMapRoutes:      true,
	bpf.EgressMapPeerProject: true,
}

// stagingSuffix names the pin a migrated map takes before it is renamed
// over the old one (rename(2) replaces the pin atomically). No dot: bpffs
// refuses names with one.
const stagingSuffix = "-new"

// compatible reports why the pinned map pm cannot be reused (nil if it can).
// Besides type, sizes and flags, the maps that carry state must have this
// build's BTF layout when they have BTF: a same-size reordering or a
// renamed member would otherwise be read with the wrong meaning.
func (m *Manager) compatible(name string, pm *ebpf.Map) error {
	spec := m.spec.Maps[name]
	if err := spec.Compatible(pm); err != nil {
		return err
	}
	if name == bpf.EgressMapRoutes || name == bpf.EgressMapIpRules {
		return m.checkInnerTable(name, pm)
	}
	if migratedMaps[name] {
		return sameBTFLayout(pm, spec)
	}
	return nil
}

// sameBTFLayout reports, wrapping ebpf.ErrMapIncompatible, a map whose BTF
// key or value layout is not spec's. A map without BTF passes: its sizes
// matched, and that is all that can be known.
func sameBTFLayout(mp *ebpf.Map, spec *ebpf.MapSpec) error {
	key, value, err := mapBTF(mp)
	if errors.Is(err, errNoBTF) || spec.Key == nil || spec.Value == nil {
		return nil
	}
	if err != nil {
		return err
	}
	if !sameLayout(key, spec.Key) {
		return fmt.Errorf("key layout %v changed to %v: %w", key, spec.Key, ebpf.ErrMapIncompatible)
	}
	if !sameLayout(value, spec.Value) {
		return fmt.Errorf("value layout %v changed to %v: %w", value, spec.Value, ebpf.ErrMapIncompatible)
	}
	return nil
}

// sameLayout reports whether a and b lay out the same members, by name,
// offset, size and kind (type names and typedefs aside).
func sameLayout(a, b btf.Type) bool {
	a, b = btf.UnderlyingType(a), btf.UnderlyingType(b)
	switch x := a.(type) {
	case *btf.Int, *btf.Enum:
		switch b.(type) {
		case *btf.Int, *btf.Enum:
			sa, errA := btf.Sizeof(a)
			sb, errB := btf.Sizeof(b)
			return errA == nil && errB == nil && sa == sb
		}
	case *btf.Array:
		y, ok := b.(*btf.Array)
		return ok && x.Nelems == y.Nelems && sameLayout(x.Type, y.Type)
	case *btf.Struct:
		y, ok := b.(*btf.Struct)
		if !ok || x.Size != y.Size {
			return false
		}
		fa, errA := flatten(x, 0, nil)
		fb, errB := flatten(y, 0, nil)
		if errA != nil || errB != nil || len(fa) != len(fb) {
			return false
		}
		for i := range fa {
			if fa[i].name != fb[i].name || fa[i].off != fb[i].off || fa[i].size != fb[i].size || !sameLayout(fa[i].typ, fb[i].typ) {
				return false
			}
		}
		return true
	}
	return false
}

// migrate builds this build's map name with the contents of the pinned map
// old. The result is not pinned.
func (m *Manager) migrate(name string, old *ebpf.Map) (*ebpf.Map, int, error) {
	if name == bpf.EgressMapRoutes {
		return m.migrateRoutes(old)
	}
	spec := m.spec.Maps[name]
	nm, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, 0, fmt.Errorf("create %s: %w", name, err)
	}
	n, err := copyEntries(nm, spec, old)
	if err != nil {
		nm.Close()
		return nil, 0, err
	}
	return nm, n, nil
}

// migrateRoutes builds a new outer map holding a copy of the route table
// the old outer map holds. A new outer map is needed even when only the
// table changed: the kernel checks inner maps against the outer map's
// template, and the programs are verified against it.
func (m *Manager) migrateRoutes(old *ebpf.Map) (_ *ebpf.Map, n int, err error) {
	oldTable, err := currentTable(old)
	if err != nil {
		return nil, 0, err
	}
	if oldTable != nil {
		defer oldTable.Close()
	}
	table, err := m.newRouteTable()
	if err != nil {
		return nil, 0, err
	}
	defer table.Close() // the outer map keeps its own reference
	if oldTable != nil {
		if n, err = copyEntries(table, m.spec.Maps[bpf.EgressMapRoutes].InnerMap, oldTable); err != nil {
			return nil, 0, fmt.Errorf("route table: %w", err)
		}
	}
	outer, err := ebpf.NewMap(m.spec.Maps[bpf.EgressMapRoutes])
	if err != nil {
		return nil, 0, fmt.Errorf("create routes: %w", err)
	}
	if err := outer.Update(uint32(0), table, ebpf.UpdateAny); err != nil {
		outer.Close()
		return nil, 0, fmt.Errorf("install route table: %w", err)
	}
	return outer, n, nil
}

// copyEntries copies every entry of the hash map old into nw (described by
// spec), translating keys and values from old's BTF to spec's.
func copyEntries(nw *ebpf.Map, spec *ebpf.MapSpec, old *ebpf.Map) (int, error) {
	if t := old.Type(); t != ebpf.Hash && t != ebpf.LRUHash {
		return 0, fmt.Errorf("cannot copy the entries of a %v map", t)
	}
	if spec.Key == nil || spec.Value == nil {
		return 0, errors.New("this build has no BTF for the map")
	}
	oldKey, oldValue, err := mapBTF(old)
	if err != nil {
		return 0, err
	}
	for _, c := range []struct {
		what string
		typ  btf.Type
		size uint32
	}{{"old key", oldKey, old.KeySize()}, {"old value", oldValue, old.ValueSize()},
		{"key", spec.Key, spec.KeySize}, {"value", spec.Value, spec.ValueSize}} {
		if sz, err := btf.Sizeof(c.typ); err != nil || uint32(sz) != c.size {
			return 0, fmt.Errorf("%s: BTF type %v does not describe %d bytes (%v)", c.what, c.typ, c.size, err)
		}
	}

	var (
		k, v   []byte
		keyOut = make([]byte, spec.KeySize)
		valOut = make([]byte, spec.ValueSize)
		seen   = map[string]bool{} // a hash iteration restarts when a key vanishes under it
	)
	it := old.Iterate()
	for it.Next(&k, &v) {
		clear(keyOut)
		clear(valOut)
		if err := translate(keyOut, spec.Key, k, oldKey, "key"); err != nil {
			return 0, err
		}
		if err := translate(valOut, spec.Value, v, oldValue, "value"); err != nil {
			return 0, fmt.Errorf("entry %x: %w", k, err)
		}
		if err := nw.Update(keyOut, valOut, ebpf.UpdateAny); err != nil {
			return 0, fmt.Errorf("entry %x: %w", k, err)
		}
		seen[string(keyOut)] = true
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("read old entries: %w", err)
	}
	return len(seen), nil
}

// bpfMapInfo is the head of the kernel's struct bpf_map_info, up to the
// BTF type ids that ebpf.MapInfo does not expose.
type bpfMapInfo struct {
	Type, ID, KeySize, ValueSize, MaxEntries, MapFlags uint32
	Name                                               [unix.BPF_OBJ_NAME_LEN]byte
	Ifindex, BTFVmlinuxValueTypeID                     uint32
	NetnsDev, NetnsIno                                 uint64
	BTFID, BTFKeyTypeID, BTFValueTypeID, BTFVmlinuxID  uint32
}

// objGetInfoAttr is the BPF_OBJ_GET_INFO_BY_FD attribute (16 bytes to the
// kernel). info is a pointer the kernel reads as a u64: an unsafe.Pointer
// keeps it visible to the garbage collector, the padding fills the u64 on
// little-endian 32-bit targets.
type objGetInfoAttr struct {
	fd, infoLen uint32
	info        unsafe.Pointer
	_           [8 - unsafe.Sizeof(uintptr(0))]byte
}

const objGetInfoAttrSize = 16

func rawMapInfo(mp *ebpf.Map) (bpfMapInfo, error) {
	var info bpfMapInfo
	attr := objGetInfoAttr{fd: uint32(mp.FD()), infoLen: uint32(unsafe.Sizeof(info)), info: unsafe.Pointer(&info)}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET_INFO_BY_FD, uintptr(unsafe.Pointer(&attr)), objGetInfoAttrSize)
	runtime.KeepAlive(mp)
	if errno != 0 {
		return info, fmt.Errorf("map info: %w", errno)
	}
	return info, nil
}

// errNoBTF is returned for an old map created without BTF: its layout is
// unknown, so nothing can be translated.
var errNoBTF = errors.New("the pinned map has no BTF key/value types")

// mapBTF returns the key and value types the kernel recorded for mp.
func mapBTF(mp *ebpf.Map) (key, value btf.Type, err error) {
	info, err := rawMapInfo(mp)
	if err != nil {
		return nil, nil, err
	}
	if info.BTFID == 0 || info.BTFKeyTypeID == 0 || info.BTFValueTypeID == 0 {
		return nil, nil, errNoBTF
	}
	h, err := btf.NewHandleFromID(btf.ID(info.BTFID))
	if err != nil {
		return nil, nil, fmt.Errorf("BTF of the pinned map: %w", err)
	}
	defer h.Close()
	spec, err := h.Spec(nil)
	if err != nil {
		return nil, nil, fmt.Errorf("BTF of the pinned map: %w", err)
	}
	if key, err = spec.TypeByID(btf.TypeID(info.BTFKeyTypeID)); err != nil {
		return nil, nil, fmt.Errorf("BTF key type: %w", err)
	}
	if value, err = spec.TypeByID(btf.TypeID(info.BTFValueTypeID)); err != nil {
		return nil, nil, fmt.Errorf("BTF value type: %w", err)
	}
	return key, value, nil
}

// translate writes src, laid out as BTF type st, into dst, laid out as dt.
// dst must be zeroed. Structs are matched member by member by name: a member
// the old layout lacks stays zero; a member the new layout dropped must be
// zero in src, since a renamed field would otherwise silently lose its
// value. Integers and enums must keep their size, arrays may grow (and
// shrink over zero elements). Bitfields, unions and pointers are not
// translated: such a value is refused.
func translate(dst []byte, dt btf.Type, src []byte, st btf.Type, path string) error {
	dt, st = btf.UnderlyingType(dt), btf.UnderlyingType(st)
	switch d := dt.(type) {
	case *btf.Int, *btf.Enum:
		switch st.(type) {
		case *btf.Int, *btf.Enum:
		default:
			return fmt.Errorf("%s: %v became %v", path, st, dt)
		}
		ds, _ := btf.Sizeof(dt)
		ss, _ := btf.Sizeof(st)
		if ds != ss {
			return fmt.Errorf("%s: %d-byte integer became %d bytes", path, ss, ds)
		}
		if len(dst) < ds || len(src) < ss {
			return fmt.Errorf("%s: out of bounds", path)
		}
		copy(dst[:ds], src[:ss])
		return nil

	case *btf.Array:
		s, ok := st.(*btf.Array)
		if !ok {
			return fmt.Errorf("%s: %v became %v", path, st, dt)
		}
		de, err := btf.Sizeof(d.Type)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		se, err := btf.Sizeof(s.Type)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if len(dst) < de*int(d.Nelems) || len(src) < se*int(s.Nelems) {
			return fmt.Errorf("%s: out of bounds", path)
		}
		for i := 0; i < int(min(d.Nelems, s.Nelems)); i++ {
			if err := translate(dst[i*de:(i+1)*de], d.Type, src[i*se:(i+1)*se], s.Type, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		if d.Nelems < s.Nelems && !isZero(src[int(d.Nelems)*se:int(s.Nelems)*se]) {
			return fmt.Errorf("%s: elements %d.. are not in this build's layout and hold data", path, d.Nelems)
		}
		return nil

	case *btf.Struct:
		s, ok := st.(*btf.Struct)
		if !ok {
			return fmt.Errorf("%s: %v became %v", path, st, dt)
		}
		dm, err := flatten(d, 0, nil)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		sm, err := flatten(s, 0, nil)
		if err != nil {
			return fmt.Errorf("%s (old): %w", path, err)
		}
		byName := make(map[string]field, len(sm))
		for _, f := range sm {
			byName[f.name] = f
		}
		for _, f := range dm {
			o, ok := byName[f.name]
			if !ok {
				continue // new member: zero
			}
			delete(byName, f.name)
			if f.end() > len(dst) || o.end() > len(src) {
				return fmt.Errorf("%s.%s: out of bounds", path, f.name)
			}
			if err := translate(dst[f.off:f.end()], f.typ, src[o.off:o.end()], o.typ, path+"."+f.name); err != nil {
				return err
			}
		}
		for _, o := range sm {
			if _, dropped := byName[o.name]; dropped && (o.end() > len(src) || !isZero(src[o.off:o.end()])) {
				return fmt.Errorf("%s.%s is not in this build's layout and holds data", path, o.name)
			}
		}
		return nil
	}
	return fmt.Errorf("%s: %v is not translated", path, dt)
}

type field struct {
	name      string
	typ       btf.Type
	off, size int
}

func (f field) end() int { return f.off + f.size }

// flatten lists a struct's members with byte offsets, members of anonymous
// struct members inlined (they are named like direct members in C).
func flatten(s *btf.Struct, base int, out []field) ([]field, error) {
	for _, m := range s.Members {
		if m.BitfieldSize != 0 || m.Offset%8 != 0 {
			return nil, fmt.Errorf("bitfield %q is not translated", m.Name)
		}
		off := base + int(m.Offset/8)
		if m.Name == "" {
			inner, ok := btf.UnderlyingType(m.Type).(*btf.Struct)
			if !ok {
				return nil, fmt.Errorf("anonymous %v is not translated", m.Type)
			}
			var err error
			if out, err = flatten(inner, off, out); err != nil {
				return nil, err
			}
			continue
		}
		size, err := btf.Sizeof(m.Type)
		if err != nil {
			return nil, fmt.Errorf("member %s: %w", m.Name, err)
		}
		for _, f := range out {
			if f.name == m.Name {
				return nil, fmt.Errorf("member %s appears twice", m.Name)
			}
		}
		out = append(out, field{m.Name, m.Type, off, size})
	}
	return out, nil
}

func isZero(b []byte) bool {
	return len(bytes.Trim(b, "\x00")) == 0
}

// replacePin pins mp at path, replacing whatever is pinned there in one
// rename: the path never stands empty, so a crash cannot leave a pin dir
// in which the next Open would find no config and start from nothing.
func replacePin(path string, mp *ebpf.Map) error {
	c, err := mp.Clone() // pinning records the path on the Map: keep mp's clean
	if err != nil {
		return err
	}
	defer c.Close()
	staging := path + stagingSuffix
	if err := unlinkPin(staging); err != nil {
		return err
	}
	if err := c.Pin(staging); err != nil {
		return fmt.Errorf("pin %s: %w", staging, err)
	}
	if err := os.Rename(staging, path); err != nil {
		_ = unlinkPin(staging)
		return fmt.Errorf("replace pin %s: %w", path, err)
	}
	return nil
}

// unlinkPin removes a pin that may not exist. Not os.Remove: for a missing
// name it falls back to rmdir, which bpffs answers with EPERM, not ENOENT.
func unlinkPin(path string) error {
	if err := unix.Unlink(path); err != nil && !errors.Is(err, unix.ENOENT) {
		return &os.PathError{Op: "unlink", Path: path, Err: err}
	}
	return nil
}
