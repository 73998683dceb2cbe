package egress

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/clawker/clawker-cp/bpf"
)

// Hook names the program that made a decision.
type Hook uint8

// Hooks (enum hook in bpf/egress.c).
const (
	HookConnect4   Hook = 1
	HookConnect6   Hook = 2
	HookSendmsg4   Hook = 3
	HookSendmsg6   Hook = 4
	HookSockCreate Hook = 5
	HookBackstop   Hook = 6 // the cgroup_skb/egress backstop
)

func (h Hook) String() string {
	switch h {
	case HookConnect4:
		return "connect4"
	case HookConnect6:
		return "connect6"
	case HookSendmsg4:
		return "sendmsg4"
	case HookSendmsg6:
		return "sendmsg6"
	case HookSockCreate:
		return "sock_create"
	case HookBackstop:
		return "backstop"
	}
	return fmt.Sprintf("hook(%d)", uint8(h))
}

// Verdict is the decision a program made (enum verdict in bpf/egress.c).
type Verdict uint8

// Verdicts.
const (
	AllowLoopback Verdict = 1
	AllowSubnet   Verdict = 2
	AllowBypass   Verdict = 3
	AllowDisabled Verdict = 4
	AllowTarget   Verdict = 5 // already addressed to the proxy or DNS server
	AllowSocket   Verdict = 6
	RedirectDNS   Verdict = 7
	RedirectRoute Verdict = 8
	RedirectProxy Verdict = 9
	DenyUDP       Verdict = 10
	DenyIPv6      Verdict = 11
	DenySocket    Verdict = 12
	// Numbers are stable, so the later ones are not in the ranges above.
	AllowCP       Verdict = 13 // the CP's agent or Hydra public port
	AllowPeer     Verdict = 14 // an agent of the same project
	AllowSelf     Verdict = 15 // the agent's own address
	DenySubnet    Verdict = 16 // anything else on the agent network
	DenyCP        Verdict = 17 // another port of the CP
	DenyGateway   Verdict = 18
	DenyBroadcast Verdict = 19 // network, subnet broadcast, 255.255.255.255
	DenyMulticast Verdict = 20
	DenyBackstop  Verdict = 21 // a packet dropped by the backstop
	AllowIPRule   Verdict = 22 // an IP/CIDR rule allows it: unchanged, no proxy
	DenyIPRule    Verdict = 23 // an IP/CIDR deny rule
	firstRedirect         = RedirectDNS
	lastRedirect          = RedirectProxy
)

var verdictNames = map[Verdict]string{
	AllowLoopback: "allow-loopback", AllowSubnet: "allow-subnet", AllowBypass: "allow-bypass",
	AllowDisabled: "allow-disabled", AllowTarget: "allow-target", AllowSocket: "allow-socket",
	RedirectDNS: "redirect-dns", RedirectRoute: "redirect-route", RedirectProxy: "redirect-proxy",
	DenyUDP: "deny-udp", DenyIPv6: "deny-ipv6", DenySocket: "deny-socket",
	AllowCP: "allow-cp", AllowPeer: "allow-peer", AllowSelf: "allow-self",
	DenySubnet: "deny-subnet", DenyCP: "deny-cp", DenyGateway: "deny-gateway",
	DenyBroadcast: "deny-broadcast", DenyMulticast: "deny-multicast", DenyBackstop: "deny-backstop",
	AllowIPRule: "allow-ip-rule", DenyIPRule: "deny-ip-rule",
}

func (v Verdict) String() string {
	if s, ok := verdictNames[v]; ok {
		return s
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Denied reports whether the application got EPERM (is_deny in egress.c).
func (v Verdict) Denied() bool {
	return (v >= DenyUDP && v <= DenySocket) || (v >= DenySubnet && v <= DenyBackstop) || v == DenyIPRule
}

// Redirected reports whether the destination was rewritten.
func (v Verdict) Redirected() bool { return v >= firstRedirect && v <= lastRedirect }

// Event is one decision about an enrolled cgroup.
type Event struct {
	Time     time.Time
	CgroupID uint64
	PID      uint32 // thread group id of the caller
	UID      uint32
	IPv6     bool // decided by an IPv6 hook (connect6, sendmsg6); an IPv4-mapped UDP sendto reaches sendmsg4
	Proto    Proto
	Hook     Hook
	Verdict  Verdict
	Orig     netip.AddrPort // what the application asked for (IPv4 unmapped)
	New      netip.AddrPort // where it went (invalid when denied)
}

// EventSize is the size of one ring buffer record.
const EventSize = int(unsafe.Sizeof(bpf.EgressEvent{}))

// PollInterval is how often the reader looks at the ring when the programs
// have not woken it: they wake it only once 64 KiB are pending.
var PollInterval = 100 * time.Millisecond

// ErrReaderBusy is returned by Events while another reader runs.
var ErrReaderBusy = errors.New("an events reader is already running")

func decodeAddr(b []byte, port uint16) netip.AddrPort {
	a := netip.AddrFrom16([16]byte(b)).Unmap()
	return netip.AddrPortFrom(a, port)
}

// decodeEvent decodes one record; boot is the wall-clock time at which
// CLOCK_BOOTTIME was zero.
func decodeEvent(raw []byte, boot time.Time, ev *Event) error {
	if len(raw) < EventSize {
		return fmt.Errorf("event of %d bytes, want %d", len(raw), EventSize)
	}
	ne := binary.NativeEndian
	ev.Time = boot.Add(time.Duration(ne.Uint64(raw[0:])))
	ev.CgroupID = ne.Uint64(raw[8:])
	ev.PID = ne.Uint32(raw[16:])
	ev.UID = ne.Uint32(raw[20:])
	origPort := binary.BigEndian.Uint16(raw[56:])
	newPort := binary.BigEndian.Uint16(raw[58:])
	ev.IPv6 = raw[60] == 10
	ev.Proto = Proto(raw[61])
	ev.Hook = Hook(raw[62])
	ev.Verdict = Verdict(raw[63])
	ev.Orig = decodeAddr(raw[24:40], origPort)
	if ev.Verdict.Denied() || ev.Hook == HookSockCreate || ev.Hook == HookBackstop {
		ev.New = netip.AddrPort{}
		if ev.Hook == HookSockCreate {
			ev.Orig = netip.AddrPort{}
		}
	} else {
		ev.New = decodeAddr(raw[40:56], newPort)
	}
	return nil
}

// Events starts the ring buffer reader and returns its channel, closed when
// ctx ends or the Manager closes. One reader at a time.
func (m *Manager) Events(ctx context.Context) (<-chan Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if m.reader != nil {
		return nil, ErrReaderBusy
	}
	rd, err := ringbuf.NewReader(m.objs.Events)
	if err != nil {
		return nil, fmt.Errorf("events reader: %w", err)
	}
	m.reader = rd
	ch := make(chan Event, 4096)
	m.readerWG.Add(1)
	stop := context.AfterFunc(ctx, func() { _ = rd.Close() })
	go func() {
		defer m.readerWG.Done()
		defer close(ch)
		defer stop()
		defer func() {
			m.mu.Lock()
			if m.reader == rd {
				m.reader = nil
			}
			m.mu.Unlock()
			_ = rd.Close()
		}()
		var rec ringbuf.Record
		var ev Event
		boot := time.Now().Add(-boottime())
		for {
			rd.SetDeadline(time.Now().Add(PollInterval))
			err := rd.ReadInto(&rec)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				boot = time.Now().Add(-boottime())
				continue
			}
			if err != nil {
				return // closed
			}
			if decodeEvent(rec.RawSample, boot, &ev) != nil {
				continue
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// stopReaderLocked closes the events reader and waits for it.
func (m *Manager) stopReaderLocked() {
	rd := m.reader
	if rd == nil {
		return
	}
	_ = rd.Close()
	m.mu.Unlock()
	m.readerWG.Wait()
	m.mu.Lock()
	m.reader = nil
}
