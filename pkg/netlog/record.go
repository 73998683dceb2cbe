package netlog

import (
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/log"

	"github.com/clawker/clawker-cp/bpf"
	"github.com/clawker/clawker-cp/pkg/egress"
)

// Names of the record, fixed by the issue: collectors route on them.
const (
	ScopeName   = "clawker.netlogger"
	ServiceName = "ebpf-egress"
)

// Identity is who a cgroup belongs to.
type Identity struct {
	ContainerID string
	Project     string
	Agent       string
}

// Snapshot is what enrichment knows at one time. It is replaced whole
// (never mutated), so the reader reads it without a lock.
type Snapshot struct {
	// AsOf is when the facts were asked for: every fact older than that
	// is in it (the DNS owner writes an address to the kernel before the
	// answer leaves, so a connect read before AsOf finds its name).
	AsOf time.Time
	// Cgroups maps an enforced cgroup id to its container.
	Cgroups map[uint64]Identity
	// Hosts maps an address learned from DNS to the allowed name (the
	// rule's dst) its answer matched.
	Hosts map[netip.Addr]string
}

// known reports whether s can say everything ev needs.
func (s *Snapshot) known(ev *bpf.EgressEvent) bool {
	if _, ok := s.Cgroups[ev.CgroupId]; !ok {
		return false
	}
	if egress.Hook(ev.Hook) == egress.HookSockCreate {
		return true
	}
	_, ok := s.Hosts[addr(ev.OrigAddr).Unmap()]
	return ok
}

// EventName is the record's event name for a hook.
func EventName(h egress.Hook) string {
	switch h {
	case egress.HookConnect4, egress.HookConnect6:
		return "ebpf.egress.connect"
	case egress.HookSendmsg4, egress.HookSendmsg6:
		return "ebpf.egress.sendmsg"
	case egress.HookSockCreate:
		return "ebpf.egress.sock_create"
	case egress.HookBackstop:
		return "ebpf.egress.backstop"
	}
	// A hook this build does not know (a newer program generation):
	// still a record, named by its number.
	return "ebpf.egress.hook_" + strconv.Itoa(int(h))
}

// Action classifies a verdict by its name's prefix (the programs' naming
// convention), so verdicts added to bpf/egress.c classify without a
// change here.
func Action(v egress.Verdict) string {
	switch s := v.String(); {
	case v == egress.AllowBypass || v == egress.AllowDisabled:
		return "bypassed"
	case strings.HasPrefix(s, "allow-"):
		return "allowed"
	case strings.HasPrefix(s, "redirect-"):
		return "redirected"
	case strings.HasPrefix(s, "deny-"):
		return "denied"
	}
	return "unknown"
}

var protoNames = map[uint8]string{0: "ip", 1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite", 255: "raw"}

func protoName(p uint8) string {
	if s, ok := protoNames[p]; ok {
		return s
	}
	return strconv.Itoa(int(p))
}

const afInet6 = 10

// build fills r from ev. observed is when the reader took it off the ring.
func build(r *log.Record, ev *bpf.EgressEvent, clock *BootClock, observed time.Time, snap *Snapshot) {
	hook, verdict := egress.Hook(ev.Hook), egress.Verdict(ev.Verdict)
	action := Action(verdict)
	r.SetEventName(EventName(hook))
	r.SetTimestamp(clock.Wall(ev.TsNs))
	r.SetObservedTimestamp(observed)
	r.SetSeverity(log.SeverityInfo)
	r.SetSeverityText("INFO")

	var kv [20]attribute.KeyValue
	a := kv[:0]
	a = append(a,
		attribute.String("action", action),
		attribute.String("verdict", verdict.String()),
		attribute.Int64("cgroup_id", int64(ev.CgroupId)), // OTLP has no unsigned ints; ids stay below 2^63
		attribute.Int64("pid", int64(ev.Pid)),
		attribute.Int64("uid", int64(ev.Uid)),
		attribute.String("l4_proto", protoName(ev.Proto)),
		attribute.Bool("ipv6", ev.Family == afInet6),
	)
	if id, ok := snap.Cgroups[ev.CgroupId]; ok {
		a = append(a, attribute.String("container_id", id.ContainerID))
		if id.Agent != "" {
			a = append(a, attribute.String("agent", id.Agent))
		}
		if id.Project != "" {
			a = append(a, attribute.String("project", id.Project))
		}
	}
	if hook != egress.HookSockCreate {
		dst := addr(ev.OrigAddr)
		a = append(a,
			attribute.Bool("ipv4_mapped", ev.Family == afInet6 && dst.Is4In6()),
			attribute.String("dst_ip", dst.Unmap().String()),
			attribute.Int64("dst_port", int64(port(ev.OrigPort))),
		)
		if h, ok := snap.Hosts[dst.Unmap()]; ok {
			a = append(a, attribute.String("dst_host", h))
		}
		if action == "redirected" {
			a = append(a,
				attribute.String("new_ip", addr(ev.NewAddr).Unmap().String()),
				attribute.Int64("new_port", int64(port(ev.NewPort))),
			)
		}
	}
	r.AddAttributes(a...)
}
