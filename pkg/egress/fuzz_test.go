package egress

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/clawker/clawker-cp/bpf"
)

// FuzzDecodeEvent decodes arbitrary ring records as the events reader
// does. decodeEvent reads fixed offsets; the oracle is the bpf2go struct
// (the same bytes cast to bpf.EgressEvent), so a layout change in
// bpf/egress.c that the offsets miss fails here. Properties:
//   - no panic, in decoding or in naming the hook, verdict and proto;
//   - a short record is refused with an error naming its size;
//   - every field is the struct's (ports from network order, addresses
//     unmapped); New is empty for a denial, a socket creation and the
//     backstop, Orig empty for a socket creation.
func FuzzDecodeEvent(f *testing.F) {
	enc := func(ev bpf.EgressEvent) []byte {
		return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(&ev)), EventSize)...)
	}
	words := func(s string) [4]uint32 {
		b := netip.MustParseAddr(s).As16()
		var w [4]uint32
		for i := range w {
			w[i] = binary.NativeEndian.Uint32(b[4*i:])
		}
		return w
	}
	be := func(p uint16) uint16 {
		var b [2]byte
		binary.BigEndian.PutUint16(b[:], p)
		return binary.NativeEndian.Uint16(b[:])
	}
	f.Add(enc(bpf.EgressEvent{TsNs: 5e9, CgroupId: 42, Pid: 7, Uid: 1000, OrigAddr: words("::ffff:203.0.113.5"), NewAddr: words("::ffff:172.30.0.200"),
		OrigPort: be(443), NewPort: be(15001), Family: 2, Proto: 6, Hook: uint8(HookConnect4), Verdict: uint8(RedirectProxy)}))
	f.Add(enc(bpf.EgressEvent{CgroupId: 42, OrigAddr: words("2001:db8::1"), OrigPort: be(53), Family: 10, Proto: 17, Hook: uint8(HookSendmsg6), Verdict: uint8(DenyIPv6)}))
	f.Add(enc(bpf.EgressEvent{CgroupId: 1, OrigAddr: words("::ffff:192.0.2.1"), Hook: uint8(HookSockCreate), Verdict: uint8(DenySocket)}))
	f.Add(enc(bpf.EgressEvent{OrigAddr: words("::ffff:192.0.2.9"), NewAddr: words("::ffff:192.0.2.9"), Hook: uint8(HookBackstop), Verdict: uint8(DenyBackstop)}))
	f.Add(enc(bpf.EgressEvent{Hook: 250, Verdict: 250, Proto: 250}))
	f.Add([]byte{0x16, 3, 1})

	boot := time.Unix(1_700_000_000, 0)
	f.Fuzz(func(t *testing.T, raw []byte) {
		var ev Event
		err := decodeEvent(raw, boot, &ev)
		if len(raw) < EventSize {
			if err == nil || !strings.Contains(err.Error(), "bytes") {
				t.Fatalf("record of %d bytes: %v", len(raw), err)
			}
			return
		}
		if err != nil {
			t.Fatalf("record of %d bytes refused: %v", len(raw), err)
		}
		_, _, _ = ev.Hook.String(), ev.Verdict.String(), ev.Proto.String()

		var s bpf.EgressEvent
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&s)), EventSize), raw)
		port := func(v uint16) uint16 {
			var b [2]byte
			binary.NativeEndian.PutUint16(b[:], v)
			return binary.BigEndian.Uint16(b[:])
		}
		addr := func(w [4]uint32) netip.Addr {
			var b [16]byte
			for i, v := range w {
				binary.NativeEndian.PutUint32(b[4*i:], v)
			}
			return netip.AddrFrom16(b).Unmap()
		}
		if !ev.Time.Equal(boot.Add(time.Duration(s.TsNs))) || ev.CgroupID != s.CgroupId || ev.PID != s.Pid || ev.UID != s.Uid ||
			ev.IPv6 != (s.Family == 10) || ev.Proto != Proto(s.Proto) || ev.Hook != Hook(s.Hook) || ev.Verdict != Verdict(s.Verdict) {
			t.Fatalf("decoded %+v from %+v", ev, s)
		}
		wantOrig := netip.AddrPortFrom(addr(s.OrigAddr), port(s.OrigPort))
		wantNew := netip.AddrPortFrom(addr(s.NewAddr), port(s.NewPort))
		if ev.Hook == HookSockCreate {
			wantOrig = netip.AddrPort{}
		}
		if ev.Verdict.Denied() || ev.Hook == HookSockCreate || ev.Hook == HookBackstop {
			wantNew = netip.AddrPort{}
		}
		if ev.Orig != wantOrig || ev.New != wantNew {
			t.Fatalf("decoded orig %v new %v, the layout says %v, %v", ev.Orig, ev.New, wantOrig, wantNew)
		}
	})
}
