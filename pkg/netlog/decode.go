// Package netlog is the egress event log's pipeline: raw ring buffer
// records of the eBPF programs (bpf.EgressEvent) are decoded, enriched
// with who made the call (container, project, agent) and what name the
// destination was allowed as, and emitted as OpenTelemetry log records
// through the logs SDK's BatchProcessor and the OTLP/gRPC exporter, over
// TLS with the clawker-netlogger client certificate.
//
// Nothing is lost silently: every record read is, in the end, either
// exported, dropped at the bounded buffer while the collector is away,
// or failed by the exporter, and each is counted (Stats). Nothing is in
// the way either: the reader never blocks on the network (the batch
// processor exports on its own goroutine, and a full buffer drops), so a
// slow or absent collector costs the kernel nothing but ring space.
//
// The stack siblings' lines go out through this pipeline too, as records
// of their own service.name (clawker-dns, clawker-proxy) on the CP's one
// collector connection, certificate, buffer bound and counters
// (siblinglog.go). The siblings get no OTLP settings or key of their own:
// they run without capabilities on the agent network, and a collector's
// reach and trust are the CP's business. The netlogger follows their
// containers' logs through Docker (actors/netlogger/siblinglogs.go), so
// the full access log (each of the proxy's JSON lines, fields as
// attributes) and both siblings' diagnostics arrive without a protocol of
// their own; each access line's src is the agent's address, which the
// collector can join with the ebpf-egress records of the same agent.
package netlog

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/clawker/clawker-cp/bpf"
)

// RecordSize is the size of one ring buffer record.
const RecordSize = int(unsafe.Sizeof(bpf.EgressEvent{}))

// Field offsets, taken from the bpf2go type so a layout change in
// bpf/egress.c is followed at compile time.
var (
	offTs       = unsafe.Offsetof(bpf.EgressEvent{}.TsNs)
	offCgroup   = unsafe.Offsetof(bpf.EgressEvent{}.CgroupId)
	offPid      = unsafe.Offsetof(bpf.EgressEvent{}.Pid)
	offUid      = unsafe.Offsetof(bpf.EgressEvent{}.Uid)
	offOrigAddr = unsafe.Offsetof(bpf.EgressEvent{}.OrigAddr)
	offNewAddr  = unsafe.Offsetof(bpf.EgressEvent{}.NewAddr)
	offOrigPort = unsafe.Offsetof(bpf.EgressEvent{}.OrigPort)
	offNewPort  = unsafe.Offsetof(bpf.EgressEvent{}.NewPort)
	offFamily   = unsafe.Offsetof(bpf.EgressEvent{}.Family)
	offProto    = unsafe.Offsetof(bpf.EgressEvent{}.Proto)
	offHook     = unsafe.Offsetof(bpf.EgressEvent{}.Hook)
	offVerdict  = unsafe.Offsetof(bpf.EgressEvent{}.Verdict)
)

// Decode reads one ring record into the bpf2go type. The kernel writes
// the struct in host byte order (ports and addresses stay in network
// order, as the C declares them).
func Decode(raw []byte, ev *bpf.EgressEvent) error {
	if len(raw) < RecordSize {
		return fmt.Errorf("record of %d bytes, want %d", len(raw), RecordSize)
	}
	ne := binary.NativeEndian
	ev.TsNs = ne.Uint64(raw[offTs:])
	ev.CgroupId = ne.Uint64(raw[offCgroup:])
	ev.Pid = ne.Uint32(raw[offPid:])
	ev.Uid = ne.Uint32(raw[offUid:])
	for i := range 4 {
		ev.OrigAddr[i] = ne.Uint32(raw[offOrigAddr+uintptr(4*i):])
		ev.NewAddr[i] = ne.Uint32(raw[offNewAddr+uintptr(4*i):])
	}
	ev.OrigPort = ne.Uint16(raw[offOrigPort:])
	ev.NewPort = ne.Uint16(raw[offNewPort:])
	ev.Family = raw[offFamily]
	ev.Proto = raw[offProto]
	ev.Hook = raw[offHook]
	ev.Verdict = raw[offVerdict]
	return nil
}

// Encode is Decode's inverse: the bytes the kernel would have written
// for ev. For tests, benchmarks and fake sources.
func Encode(ev *bpf.EgressEvent) []byte {
	b := unsafe.Slice((*byte)(unsafe.Pointer(ev)), RecordSize)
	return append([]byte(nil), b...)
}

// addr reads one of the struct's 16-byte addresses: the u32 words hold
// the address bytes in network order, as the kernel copied them.
func addr(w [4]uint32) netip.Addr {
	var b [16]byte
	for i, v := range w {
		binary.NativeEndian.PutUint32(b[4*i:], v)
	}
	return netip.AddrFrom16(b)
}

// Orig is the destination the application asked for, IPv4 unmapped.
func Orig(ev *bpf.EgressEvent) netip.AddrPort {
	return netip.AddrPortFrom(addr(ev.OrigAddr).Unmap(), port(ev.OrigPort))
}

// port converts a __be16 read in host order.
func port(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

// BootClock converts bpf_ktime_get_boot_ns to wall time. The offset is
// re-read by Refresh, so a stepped wall clock (NTP at boot, a suspended
// host) is followed within one poll interval.
type BootClock struct{ boot atomic.Int64 }

// NewBootClock returns a clock with a fresh offset.
func NewBootClock() *BootClock {
	c := &BootClock{}
	c.Refresh()
	return c
}

// Refresh re-reads the offset between the wall clock and CLOCK_BOOTTIME.
func (c *BootClock) Refresh() {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return // cannot fail on Linux; keep the last offset
	}
	c.boot.Store(time.Now().UnixNano() - ts.Nano())
}

// Wall is the wall time of a CLOCK_BOOTTIME timestamp.
func (c *BootClock) Wall(ns uint64) time.Time {
	return time.Unix(0, c.boot.Load()+int64(ns))
}

// AddrWords is the struct's form of a: what the kernel stores (IPv4 as
// ::ffff:a.b.c.d). For fake sources.
func AddrWords(a netip.Addr) [4]uint32 {
	b := a.As16()
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

// NetPort is the struct's form (__be16) of p.
func NetPort(p uint16) uint16 { return port(p) }
