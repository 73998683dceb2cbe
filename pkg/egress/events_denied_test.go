package egress

import (
	"context"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPrivilegedEventsDeniedOnly: with EventsDenied and not Events, a
// redirected connect emits nothing and a refused sendto emits its event,
// so the window of refusals costs the allowed paths nothing. The order of
// the two is the test: the redirect comes first, and the first event read
// must be the refusal's.
func TestPrivilegedEventsDeniedOnly(t *testing.T) {
	requirePrivileged(t)
	w := newWorld(t)
	m, cg, cgid := w.setup(t)
	cfg := w.cfg
	cfg.EventsDenied = true
	must(t, m.Enroll(cgid, cfg))
	if es, err := m.Enrolled(); err != nil || len(es) != 1 || !es[0].Config.EventsDenied || es[0].Config.Events {
		t.Fatalf("enrolled %+v %v, want EventsDenied alone", es, err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch, err := m.Events(ctx)
	must(t, err)

	if res := runInCgroup(t, helperOp{Cgroup: cg, Op: "tcp", Addr: unknownDst, UID: nobody, Token: "redirected"}); res.Errno != 0 {
		t.Fatalf("tcp: %s", res.Err)
	}
	res := runInCgroup(t, helperOp{Cgroup: cg, Op: "udp-sendto", Addr: udpOtherDst, UID: nobody})
	if res.Errno != int(unix.EPERM) {
		t.Fatalf("udp: %s, want EPERM", errnoName(res.Errno))
	}
	ev := nextEvent(t, ch)
	if ev.Verdict != DenyUDP || ev.Orig != netip.MustParseAddrPort(udpOtherDst) || ev.CgroupID != cgid {
		t.Fatalf("first event %+v, want the refused sendto (the redirect emits none)", ev)
	}
}
