package egress

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/clawker/clawker-cp/bpf"
)

// Proto is a transport protocol number.
type Proto uint8

// The protocols a route can name.
const (
	TCP Proto = unix.IPPROTO_TCP
	UDP Proto = unix.IPPROTO_UDP
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Route sends (identity, port, proto) to a proxy listener: connections to
// an address whose identity is Identity on Port are rewritten to
// Config.Proxy's address on ListenerPort.
type Route struct {
	Identity     uint32
	Port         uint16
	Proto        Proto
	ListenerPort uint16
}

// MaxRoutes is the capacity of a route table.
const MaxRoutes = 65536

// The route set lives in an inner hash map held in slot 0 of the
// ARRAY_OF_MAPS "routes". SyncRoutes builds a complete new inner map and
// replaces the slot with one map update; the kernel swaps the pointer under
// RCU, so every lookup sees the whole old set or the whole new one, never a
// partial or empty table, and the old map is freed once no program runs
// with it. (The alternative, a generation number in the key flipped after
// the new set is written, needs twice the capacity in one map, a second
// lookup for the generation, and a cleanup pass that can leak entries when
// the writer dies halfway.)

// checkInnerTable verifies that the table held by a pinned outer map (the
// routes or the IP rules) has the key and value layout of this build.
func (m *Manager) checkInnerTable(name string, outer *ebpf.Map) error {
	inner, err := currentTable(outer)
	if err != nil || inner == nil {
		return err
	}
	defer inner.Close()
	spec := m.spec.Maps[name].InnerMap
	if inner.Type() != spec.Type || inner.KeySize() != spec.KeySize || inner.ValueSize() != spec.ValueSize {
		return fmt.Errorf("%s table: %v key %d value %d, want %v key %d value %d: %w",
			name, inner.Type(), inner.KeySize(), inner.ValueSize(), spec.Type, spec.KeySize, spec.ValueSize, ebpf.ErrMapIncompatible)
	}
	if err := sameBTFLayout(inner, spec); err != nil {
		return fmt.Errorf("%s table: %w", name, err)
	}
	return nil
}

// currentTable opens the inner table (routes or IP rules) the programs use
// now (nil if none).
func currentTable(outer *ebpf.Map) (*ebpf.Map, error) {
	var id uint32
	if err := outer.Lookup(uint32(0), &id); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("inner table: %w", err)
	}
	if id == 0 {
		return nil, nil
	}
	inner, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if err != nil {
		return nil, fmt.Errorf("inner table %d: %w", id, err)
	}
	return inner, nil
}

// SyncRoutes replaces the whole route set atomically. Duplicate keys are
// refused.
func (m *Manager) SyncRoutes(routes []Route) error {
	if len(routes) > MaxRoutes {
		return fmt.Errorf("%d routes exceed the maximum of %d", len(routes), MaxRoutes)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	return m.swapRoutes(routes)
}

func (m *Manager) swapRoutes(routes []Route) error {
	keys := make([]bpf.EgressRouteKey, len(routes))
	vals := make([]bpf.EgressRouteVal, len(routes))
	seen := make(map[bpf.EgressRouteKey]struct{}, len(routes))
	for i, r := range routes {
		if r.Proto != TCP && r.Proto != UDP {
			return fmt.Errorf("route %d: protocol %v: want tcp or udp", i, r.Proto)
		}
		if r.Port == 0 || r.ListenerPort == 0 {
			return fmt.Errorf("route %d: port and listener port required", i)
		}
		keys[i] = bpf.EgressRouteKey{Identity: r.Identity, Port: be16(r.Port), Proto: uint8(r.Proto)}
		if _, dup := seen[keys[i]]; dup {
			return fmt.Errorf("route %d: duplicate (identity %d, port %d, %v)", i, r.Identity, r.Port, r.Proto)
		}
		seen[keys[i]] = struct{}{}
		vals[i] = bpf.EgressRouteVal{Port: be16(r.ListenerPort)}
	}

	table, err := m.newRouteTable()
	if err != nil {
		return err
	}
	defer table.Close() // the outer map keeps its own reference
	if len(routes) > 0 {
		if _, err := table.BatchUpdate(keys, vals, nil); err != nil {
			if !errors.Is(err, ebpf.ErrNotSupported) {
				return fmt.Errorf("fill route table: %w", err)
			}
			for i := range keys {
				if err := table.Put(&keys[i], &vals[i]); err != nil {
					return fmt.Errorf("fill route table: %w", err)
				}
			}
		}
	}
	if err := m.objs.Routes.Update(uint32(0), table, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("install route table: %w", err)
	}
	return nil
}

// newRouteTable creates an empty inner map for the routes slot.
func (m *Manager) newRouteTable() (*ebpf.Map, error) {
	spec := m.spec.Maps[bpf.EgressMapRoutes].InnerMap.Copy()
	spec.Name = "route_table"
	table, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, fmt.Errorf("create route table: %w", err)
	}
	return table, nil
}

// Routes reads the route set the programs use now.
func (m *Manager) Routes() ([]Route, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	table, err := currentTable(m.objs.Routes)
	if err != nil || table == nil {
		return nil, err
	}
	defer table.Close()
	var (
		out []Route
		k   bpf.EgressRouteKey
		v   bpf.EgressRouteVal
	)
	it := table.Iterate()
	for it.Next(&k, &v) {
		out = append(out, Route{Identity: k.Identity, Port: fromBE16(k.Port), Proto: Proto(k.Proto), ListenerPort: fromBE16(v.Port)})
	}
	return out, it.Err()
}
