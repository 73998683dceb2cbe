package netlog

import (
	"bytes"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/log"

	"github.com/clawker/clawker-cp/bpf"
	"github.com/clawker/clawker-cp/pkg/egress"
)

// FuzzDecode decodes arbitrary ring records and builds the log record of
// each. The fields are the kernel's, but an agent chooses the
// destination of every connect and the programs pass hooks and verdicts
// this build may not know. Properties:
//   - no panic, in Decode or in building the record;
//   - a record shorter than the struct is refused with an error naming
//     its size, a longer one is read from its start;
//   - Decode reads the struct as bpf2go lays it out (the same bytes cast
//     to bpf.EgressEvent), and Encode gives those bytes back;
//   - the built record has an event name, a known action class, and
//     dst_ip/dst_port unless the hook is sock_create.
func FuzzDecode(f *testing.F) {
	seed := func(ev bpf.EgressEvent) { f.Add(Encode(&ev), true) }
	seed(bpf.EgressEvent{TsNs: 1e9, CgroupId: 42, Pid: 7, Uid: 1000, OrigAddr: AddrWords(netip.MustParseAddr("::ffff:203.0.113.5")),
		NewAddr: AddrWords(netip.MustParseAddr("::ffff:172.30.0.200")), OrigPort: NetPort(443), NewPort: NetPort(15001),
		Family: 2, Proto: 6, Hook: uint8(egress.HookConnect4), Verdict: uint8(egress.RedirectProxy)})
	seed(bpf.EgressEvent{CgroupId: 42, Family: 10, Proto: 17, Hook: uint8(egress.HookSendmsg6), Verdict: uint8(egress.DenyIPv6),
		OrigAddr: AddrWords(netip.MustParseAddr("2001:db8::1")), OrigPort: NetPort(53)})
	seed(bpf.EgressEvent{CgroupId: 1, Proto: 255, Hook: uint8(egress.HookSockCreate), Verdict: uint8(egress.DenySocket)})
	seed(bpf.EgressEvent{Hook: 99, Verdict: 200, Proto: 99})
	f.Add([]byte{1, 2, 3}, false)
	f.Add(append(Encode(&bpf.EgressEvent{Hook: uint8(egress.HookBackstop), Verdict: uint8(egress.DenyBackstop)}), 0xff), false)

	clock := NewBootClock()
	observed := time.Unix(1_700_000_000, 0)
	f.Fuzz(func(t *testing.T, raw []byte, known bool) {
		var ev bpf.EgressEvent
		err := Decode(raw, &ev)
		if len(raw) < RecordSize {
			if err == nil || !strings.Contains(err.Error(), "bytes") {
				t.Fatalf("record of %d bytes: %v", len(raw), err)
			}
			return
		}
		if err != nil {
			t.Fatalf("record of %d bytes refused: %v", len(raw), err)
		}
		var want bpf.EgressEvent
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&want)), RecordSize), raw)
		if ev != want {
			t.Fatalf("decoded %+v, the layout says %+v", ev, want)
		}
		if !bytes.Equal(Encode(&ev), raw[:RecordSize]) {
			t.Fatal("Encode does not give the record back")
		}

		// known: the snapshot knows the cgroup and the destination's name,
		// so the enrichment paths run too.
		snap := &Snapshot{}
		if known {
			snap.Cgroups = map[uint64]Identity{ev.CgroupId: {ContainerID: strings.Repeat("a", 64), Project: "proj", Agent: "dev"}}
			snap.Hosts = map[netip.Addr]string{addr(ev.OrigAddr).Unmap(): "api.example.test"}
		}
		_ = snap.known(&ev)
		var r log.Record
		build(&r, &ev, clock, observed, snap)
		if r.EventName() == "" {
			t.Fatal("record without an event name")
		}
		attrs := map[string]bool{}
		var action string
		r.WalkAttributes(func(kv attribute.KeyValue) bool {
			attrs[string(kv.Key)] = true
			if kv.Key == "action" {
				action = kv.Value.AsString()
			}
			return true
		})
		if !slices.Contains([]string{"allowed", "redirected", "denied", "bypassed", "unknown"}, action) {
			t.Fatalf("action %q", action)
		}
		sock := egress.Hook(ev.Hook) == egress.HookSockCreate
		if attrs["dst_ip"] == sock || attrs["dst_port"] == sock {
			t.Fatalf("hook %v: dst_ip %v, dst_port %v", egress.Hook(ev.Hook), attrs["dst_ip"], attrs["dst_port"])
		}
	})
}
