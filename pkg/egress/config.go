package egress

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/clawker/clawker-cp/bpf"
)

// Flags of agent_cfg.flags (bpf/egress.c).
const (
	flagDisabled        = 1 << 0
	flagEvents          = 1 << 1
	flagEnforceLoopback = 1 << 2
	flagA2AProject      = 1 << 3
	flagA2AAllow        = 1 << 4
	flagEventsDenied    = 1 << 5
)

// AgentToAgent says which agents on the network one agent reaches directly
// (settings' firewall.agent_to_agent).
type AgentToAgent string

// The agent_to_agent choices; the zero value is AgentToAgentDeny.
const (
	AgentToAgentDeny    AgentToAgent = "deny"    // none
	AgentToAgentProject AgentToAgent = "project" // agents of the same project (Config.ProjectID, SetPeer)
	AgentToAgentAllow   AgentToAgent = "allow"   // every address in the subnet but the refused ones
)

// MaxBypass is the longest bypass Bypass accepts.
const MaxBypass = time.Hour

// DefaultEventRate is the per-cgroup event rate when Config.EventRate is 0.
const DefaultEventRate = 1000

// Config is what the programs need to know about one enrolled cgroup.
type Config struct {
	// Proxy is the egress proxy's catch-all listener (IPv4). Route
	// listeners are other ports on the same address.
	Proxy netip.AddrPort
	// DNS is the DNS server every port-53 packet is sent to (IPv4).
	DNS netip.AddrPort
	// Subnet is the agent network. On it only the stack, CP's two ports,
	// Self and the peers AgentToAgent allows are reached; the rest of it
	// (the gateway, the network and broadcast addresses included) is
	// refused. Optional; /0 is refused.
	Subnet netip.Prefix
	// Gateway is the network's gateway (the host): refused. Optional.
	Gateway netip.Addr
	// CP is the control plane's address: only CPPorts (its agent port and
	// Hydra's public port) reach it, every other port is refused.
	// Optional: without it the CP is like any address.
	CP      netip.Addr
	CPPorts [2]uint16
	// Self is the agent's own address on the network (an image may
	// connect to its own hostname). Optional.
	Self netip.Addr
	// AgentToAgent chooses which peers on Subnet pass; "" is deny.
	AgentToAgent AgentToAgent
	// ProjectID is the agent's project, for AgentToAgentProject: a peer
	// passes when SetPeer recorded its address with the same id. 0: none.
	ProjectID uint32
	// Events turns decision events on for this cgroup.
	Events bool
	// EventsDenied turns on the events of refusals alone (what `clawker
	// firewall denied` shows from the kernel), when Events is off: an
	// allowed or redirected connect then pays nothing for events.
	EventsDenied bool
	// EventRate and EventBurst bound this cgroup's events (per second, and
	// the bucket depth); 0 means DefaultEventRate and EventRate.
	EventRate  uint32
	EventBurst uint32
	// EnforceLoopback removes the loopback exemption (tests use loopback
	// addresses as stand-ins for outside hosts).
	EnforceLoopback bool
}

// Enrollment is the state of one enrolled cgroup as the programs see it.
type Enrollment struct {
	CgroupID    uint64
	Config      Config
	Disabled    bool
	BypassUntil time.Time // zero when not bypassed
}

func ip4(a netip.Addr) (uint32, error) {
	a = a.Unmap()
	if !a.Is4() {
		return 0, fmt.Errorf("%v: not an IPv4 address", a)
	}
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:]), nil // network order in memory
}

func fromIP4(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func be16(port uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], port)
	return binary.NativeEndian.Uint16(b[:])
}

func fromBE16(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

func (c Config) encode() (bpf.EgressAgentCfg, error) {
	var out bpf.EgressAgentCfg
	var err error
	if !c.Proxy.IsValid() || c.Proxy.Port() == 0 {
		return out, errors.New("config: proxy address and port required")
	}
	if out.ProxyIp4, err = ip4(c.Proxy.Addr()); err != nil {
		return out, fmt.Errorf("config: proxy: %w", err)
	}
	out.ProxyPort = be16(c.Proxy.Port())
	if !c.DNS.IsValid() || c.DNS.Port() == 0 {
		return out, errors.New("config: DNS address and port required")
	}
	if out.DnsIp4, err = ip4(c.DNS.Addr()); err != nil {
		return out, fmt.Errorf("config: DNS: %w", err)
	}
	out.DnsPort = be16(c.DNS.Port())
	if c.Subnet.IsValid() {
		p := c.Subnet.Masked()
		if !p.Addr().Is4() || p.Bits() == 0 {
			return out, fmt.Errorf("config: subnet %v: want an IPv4 prefix longer than /0", c.Subnet)
		}
		bits := p.Bits()
		out.SubnetIp4, _ = ip4(p.Addr())
		var mask [4]byte
		binary.BigEndian.PutUint32(mask[:], ^uint32(0)<<(32-bits))
		out.SubnetMask4 = binary.NativeEndian.Uint32(mask[:])
		out.SubnetPrefixlen = uint8(bits)
	}
	if c.Gateway.IsValid() {
		if out.GatewayIp4, err = ip4(c.Gateway); err != nil {
			return out, fmt.Errorf("config: gateway: %w", err)
		}
	}
	if c.CP.IsValid() {
		if out.CpIp4, err = ip4(c.CP); err != nil {
			return out, fmt.Errorf("config: CP: %w", err)
		}
		if c.CPPorts[0] == 0 && c.CPPorts[1] == 0 {
			return out, errors.New("config: CP address without ports")
		}
		out.CpPortAgent, out.CpPortHydra = be16(c.CPPorts[0]), be16(c.CPPorts[1])
	}
	if c.Self.IsValid() {
		if out.SelfIp4, err = ip4(c.Self); err != nil {
			return out, fmt.Errorf("config: self: %w", err)
		}
	}
	switch c.AgentToAgent {
	case "", AgentToAgentDeny:
	case AgentToAgentProject:
		out.Flags |= flagA2AProject
	case AgentToAgentAllow:
		out.Flags |= flagA2AAllow
	default:
		return out, fmt.Errorf("config: agent_to_agent %q: want deny, project or allow", c.AgentToAgent)
	}
	out.ProjectId = c.ProjectID
	if c.Events {
		out.Flags |= flagEvents
	}
	if c.EventsDenied {
		out.Flags |= flagEventsDenied
	}
	if c.EnforceLoopback {
		out.Flags |= flagEnforceLoopback
	}
	rate := uint64(c.EventRate)
	if rate == 0 {
		rate = DefaultEventRate
	}
	burst := uint64(c.EventBurst)
	if burst == 0 {
		burst = rate
	}
	out.EvIntervalNs = max(uint64(time.Second)/rate, 1)
	out.EvBurstNs = out.EvIntervalNs * burst
	return out, nil
}

// Canonical is the config as Enrolled reports it back once enrolled
// (defaults filled in), for comparing an order with an enrollment; an
// invalid config is returned as it is.
func (c Config) Canonical() Config {
	v, err := c.encode()
	if err != nil {
		return c
	}
	return decodeConfig(&v)
}

func decodeConfig(v *bpf.EgressAgentCfg) Config {
	c := Config{
		Proxy:           netip.AddrPortFrom(fromIP4(v.ProxyIp4), fromBE16(v.ProxyPort)),
		DNS:             netip.AddrPortFrom(fromIP4(v.DnsIp4), fromBE16(v.DnsPort)),
		Events:          v.Flags&flagEvents != 0,
		EventsDenied:    v.Flags&flagEventsDenied != 0,
		EnforceLoopback: v.Flags&flagEnforceLoopback != 0,
	}
	if v.SubnetPrefixlen > 0 {
		c.Subnet = netip.PrefixFrom(fromIP4(v.SubnetIp4), int(v.SubnetPrefixlen))
	}
	if v.GatewayIp4 != 0 {
		c.Gateway = fromIP4(v.GatewayIp4)
	}
	if v.CpIp4 != 0 {
		c.CP = fromIP4(v.CpIp4)
		c.CPPorts = [2]uint16{fromBE16(v.CpPortAgent), fromBE16(v.CpPortHydra)}
	}
	if v.SelfIp4 != 0 {
		c.Self = fromIP4(v.SelfIp4)
	}
	switch { // deny stays "", the zero value
	case v.Flags&flagA2AAllow != 0:
		c.AgentToAgent = AgentToAgentAllow
	case v.Flags&flagA2AProject != 0:
		c.AgentToAgent = AgentToAgentProject
	}
	c.ProjectID = v.ProjectId
	if v.EvIntervalNs > 0 {
		c.EventRate = uint32(uint64(time.Second) / v.EvIntervalNs)
		c.EventBurst = uint32(v.EvBurstNs / v.EvIntervalNs)
	}
	return c
}

// boottime returns CLOCK_BOOTTIME, the clock of bpf_ktime_get_boot_ns.
func boottime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		panic(err) // cannot fail on Linux
	}
	return time.Duration(ts.Nano())
}

// Enroll starts enforcing cfg on the cgroup with this id (see CgroupID and
// ContainerCgroup). Enrolling again replaces the config and clears any
// bypass or disable.
func (m *Manager) Enroll(cgroupID uint64, cfg Config) error {
	v, err := cfg.encode()
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if err := m.objs.CgroupCfg.Put(cgroupID, &v); err != nil {
		return fmt.Errorf("enroll cgroup %d: %w", cgroupID, err)
	}
	return nil
}

// Reconfigure replaces an enrolled cgroup's config and keeps its bypass or
// disable (Enroll clears them): for a config that changed under a running
// agent, such as one migrated from an older build without the fields this
// one added.
func (m *Manager) Reconfigure(cgroupID uint64, cfg Config) error {
	nv, err := cfg.encode()
	if err != nil {
		return err
	}
	return m.modify(cgroupID, func(v *bpf.EgressAgentCfg) {
		nv.Flags |= v.Flags & flagDisabled
		nv.BypassUntilNs = v.BypassUntilNs
		*v = nv
	})
}

// Unenroll stops enforcing on the cgroup. Unenrolling a cgroup that is not
// enrolled is not an error.
func (m *Manager) Unenroll(cgroupID uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if err := m.objs.CgroupCfg.Delete(cgroupID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unenroll cgroup %d: %w", cgroupID, err)
	}
	if err := m.objs.Ratelimit.Delete(cgroupID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unenroll cgroup %d: rate limiter: %w", cgroupID, err)
	}
	return nil
}

func (m *Manager) modify(cgroupID uint64, f func(*bpf.EgressAgentCfg)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	var v bpf.EgressAgentCfg
	if err := m.objs.CgroupCfg.Lookup(cgroupID, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("cgroup %d: %w", cgroupID, ErrNotEnrolled)
		}
		return err
	}
	f(&v)
	if err := m.objs.CgroupCfg.Update(cgroupID, &v, ebpf.UpdateExist); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("cgroup %d: %w", cgroupID, ErrNotEnrolled)
		}
		return err
	}
	return nil
}

// Bypass lets the cgroup's traffic through untouched until the given time.
// The expiry is checked by the programs themselves, so it ends on time even
// when no control plane runs. A time in the past ends a bypass; one more
// than MaxBypass ahead is refused.
func (m *Manager) Bypass(cgroupID uint64, until time.Time) error {
	d := time.Until(until)
	if d > MaxBypass {
		return fmt.Errorf("bypass of %v exceeds the maximum of %v", d.Round(time.Second), MaxBypass)
	}
	var deadline uint64
	if d > 0 {
		deadline = uint64(boottime() + d)
	}
	return m.modify(cgroupID, func(v *bpf.EgressAgentCfg) { v.BypassUntilNs = deadline })
}

// Disable is a bypass without expiry.
func (m *Manager) Disable(cgroupID uint64) error {
	return m.modify(cgroupID, func(v *bpf.EgressAgentCfg) { v.Flags |= flagDisabled })
}

// Enable clears Disable and any bypass.
func (m *Manager) Enable(cgroupID uint64) error {
	return m.modify(cgroupID, func(v *bpf.EgressAgentCfg) {
		v.Flags &^= flagDisabled
		v.BypassUntilNs = 0
	})
}

// Enrolled lists every enrolled cgroup as the programs see it.
func (m *Manager) Enrolled() ([]Enrollment, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	now := boottime()
	wall := time.Now()
	var (
		out []Enrollment
		id  uint64
		v   bpf.EgressAgentCfg
	)
	it := m.objs.CgroupCfg.Iterate()
	for it.Next(&id, &v) {
		e := Enrollment{CgroupID: id, Config: decodeConfig(&v), Disabled: v.Flags&flagDisabled != 0}
		if until := time.Duration(v.BypassUntilNs); until > now {
			e.BypassUntil = wall.Add(until - now)
		}
		out = append(out, e)
	}
	return out, it.Err()
}

// SetIdentity records that ip (IPv4) belongs to identity id. Routes are
// looked up by (identity, port, protocol).
func (m *Manager) SetIdentity(ip netip.Addr, id uint32) error {
	return m.putIP4(func() *ebpf.Map { return m.objs.IpIdentity }, ip, id)
}

// DeleteIdentity forgets ip. Forgetting an unknown address is not an error.
func (m *Manager) DeleteIdentity(ip netip.Addr) error {
	return m.deleteIP4(func() *ebpf.Map { return m.objs.IpIdentity }, ip)
}

// SetPeer records that ip (IPv4) is an enforced agent of project id, for
// the agents enforced with AgentToAgentProject.
func (m *Manager) SetPeer(ip netip.Addr, project uint32) error {
	return m.putIP4(func() *ebpf.Map { return m.objs.PeerProject }, ip, project)
}

// DeletePeer forgets ip. Forgetting an unknown address is not an error.
func (m *Manager) DeletePeer(ip netip.Addr) error {
	return m.deleteIP4(func() *ebpf.Map { return m.objs.PeerProject }, ip)
}

// putIP4 and deleteIP4 update one of the maps keyed by an IPv4 address
// (ip_identity, peer_project). The map is picked under the lock: a
// migration may have replaced it.
func (m *Manager) putIP4(which func() *ebpf.Map, ip netip.Addr, v uint32) error {
	k, err := ip4(ip)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	return which().Put(k, v)
}

func (m *Manager) deleteIP4(which func() *ebpf.Map, ip netip.Addr) error {
	k, err := ip4(ip)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if err := which().Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// Peers lists the addresses SetPeer recorded, with their project ids.
func (m *Manager) Peers() (map[netip.Addr]uint32, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	out := map[netip.Addr]uint32{}
	var k, v uint32
	it := m.objs.PeerProject.Iterate()
	for it.Next(&k, &v) {
		out[fromIP4(k)] = v
	}
	return out, it.Err()
}

// Stats are the programs' counters, summed over CPUs.
type Stats struct {
	ReserveFailures uint64 // events lost because the ring was full
	RateLimited     uint64 // events dropped by the per-cgroup rate limit
	Events          uint64 // events submitted
	Allowed         uint64 // decisions that passed untouched
	Redirected      uint64 // decisions that rewrote the destination
	Denied          uint64 // decisions that returned EPERM (backstop drops included)
	// BackstopDrops are packets the cgroup_skb backstop dropped: sent to
	// a destination the sock_addr hooks would not have let through. Zero
	// in normal operation; anything else is a hole they did not see.
	BackstopDrops uint64
	// Cut counts the sockets the cut iterators destroyed.
	Cut uint64
}

// Stats reads the counters.
func (m *Manager) Stats() (Stats, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return Stats{}, ErrClosed
	}
	return readStats(m.objs.Stats)
}

// ReadPinnedStats reads the counters of the programs pinned under pinDir
// without loading them: for a reader beside the eBPF owner (the CP's
// /metrics). os.ErrNotExist when nothing is pinned there.
func ReadPinnedStats(pinDir string) (Stats, error) {
	sm, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", bpf.EgressMapStats), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return Stats{}, err
	}
	defer sm.Close()
	return readStats(sm)
}

// ReadPinnedConfig reads one enrolled cgroup's config from the programs
// pinned under pinDir, as ReadPinnedStats does: for tests and tools that
// look at what the kernel enforces beside a running CP.
func ReadPinnedConfig(pinDir string, cgid uint64) (Config, error) {
	cm, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", bpf.EgressMapCgroupCfg), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return Config{}, err
	}
	defer cm.Close()
	var v bpf.EgressAgentCfg
	if err := cm.Lookup(cgid, &v); err != nil {
		return Config{}, fmt.Errorf("cgroup %d: %w", cgid, err)
	}
	return decodeConfig(&v), nil
}

func readStats(sm *ebpf.Map) (Stats, error) {
	var s Stats
	for i, dst := range []*uint64{&s.ReserveFailures, &s.RateLimited, &s.Events, &s.Allowed, &s.Redirected, &s.Denied, &s.BackstopDrops, &s.Cut} {
		var per []uint64
		if err := sm.Lookup(uint32(i), &per); err != nil {
			return Stats{}, fmt.Errorf("read stats: %w", err)
		}
		for _, v := range per {
			*dst += v
		}
	}
	return s, nil
}
