package egress

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clawker/clawker-cp/bpf"
)

func nextEvent(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("events channel closed")
		}
		return ev
	case <-time.After(3 * time.Second):
		t.Fatal("no event within 3s")
	}
	return Event{}
}

// TestPrivilegedEvents: decisions arrive on the ring buffer with the right
// fields, although the programs do not wake the reader per event.
func TestPrivilegedEvents(t *testing.T) {
	requirePrivileged(t)
	w := newWorld(t)
	m, cg, cgid := w.setup(t)
	cfg := w.cfg
	cfg.Events = true
	must(t, m.Enroll(cgid, cfg))
	ctx, cancel := context.WithCancel(t.Context())
	ch, err := m.Events(ctx)
	must(t, err)
	if _, err := m.Events(ctx); err != ErrReaderBusy {
		t.Fatalf("second reader: %v", err)
	}

	start := time.Now()
	res := runInCgroup(t, helperOp{Cgroup: cg, Op: "tcp", Addr: unknownDst, UID: nobody, Token: "ev"})
	if res.Errno != 0 {
		t.Fatal(res.Err)
	}
	ev := nextEvent(t, ch)
	want := Event{
		Time: ev.Time, CgroupID: cgid, PID: uint32(res.PID), UID: nobody,
		Proto: TCP, Hook: HookConnect4, Verdict: RedirectProxy,
		Orig: netip.MustParseAddrPort(unknownDst), New: w.proxy.Addr,
	}
	if ev != want {
		t.Fatalf("event %+v\nwant  %+v", ev, want)
	}
	if d := ev.Time.Sub(start); d < -time.Second || d > 5*time.Second {
		t.Fatalf("event time %v is %v after the start", ev.Time, d)
	}

	// A UDP datagram to an IPv4-mapped address from an IPv6 socket is
	// handed to the IPv4 sendmsg hook by the kernel.
	res = runInCgroup(t, helperOp{Cgroup: cg, Op: "udp-sendto", Addr: "[::ffff:" + routedIP + "]:9", UID: 0})
	if res.Errno != int(unix.EPERM) {
		t.Fatalf("udp: %s", errnoName(res.Errno))
	}
	ev = nextEvent(t, ch)
	want = Event{
		Time: ev.Time, CgroupID: cgid, PID: uint32(res.PID), UID: 0,
		Proto: UDP, Hook: HookSendmsg4, Verdict: DenyUDP,
		Orig: netip.MustParseAddrPort(routedIP + ":9"),
	}
	if ev != want {
		t.Fatalf("event %+v\nwant  %+v", ev, want)
	}

	// A TCP connect to one goes through connect6.
	res = runInCgroup(t, helperOp{Cgroup: cg, Op: "tcp", Addr: "[::ffff:" + routedIP + "]:8443", UID: nobody, Token: "ev6"})
	if res.Errno != 0 {
		t.Fatal(res.Err)
	}
	ev = nextEvent(t, ch)
	want = Event{
		Time: ev.Time, CgroupID: cgid, PID: uint32(res.PID), UID: nobody, IPv6: true,
		Proto: TCP, Hook: HookConnect6, Verdict: RedirectRoute,
		Orig: netip.MustParseAddrPort(routedIP + ":8443"), New: w.route.Addr,
	}
	if ev != want {
		t.Fatalf("event %+v\nwant  %+v", ev, want)
	}

	res = runInCgroup(t, helperOp{Cgroup: cg, Op: "raw", UID: 0})
	if res.Errno != int(unix.EPERM) {
		t.Fatalf("raw: %s", errnoName(res.Errno))
	}
	ev = nextEvent(t, ch)
	if ev.Hook != HookSockCreate || ev.Verdict != DenySocket || ev.Proto != Proto(unix.IPPROTO_ICMP) || ev.PID != uint32(res.PID) {
		t.Fatalf("raw socket event %+v", ev)
	}

	cancel()
	for range ch {
	}
	// A reader can start again once the first is gone.
	ch2, err := m.Events(t.Context())
	must(t, err)
	_ = ch2
}

func statsDelta(t *testing.T, m *Manager, f func()) Stats {
	t.Helper()
	before, err := m.Stats()
	must(t, err)
	f()
	after, err := m.Stats()
	must(t, err)
	return Stats{
		ReserveFailures: after.ReserveFailures - before.ReserveFailures,
		RateLimited:     after.RateLimited - before.RateLimited,
		Events:          after.Events - before.Events,
		Allowed:         after.Allowed - before.Allowed,
		Redirected:      after.Redirected - before.Redirected,
		Denied:          after.Denied - before.Denied,
	}
}

// TestPrivilegedRateLimit: past its burst a cgroup's events are dropped and
// counted, its decisions are not.
func TestPrivilegedRateLimit(t *testing.T) {
	requirePrivileged(t)
	w := newWorld(t)
	m, cg, cgid := w.setup(t)
	cfg := w.cfg
	cfg.Events, cfg.EventRate, cfg.EventBurst = true, 1, 5
	must(t, m.Enroll(cgid, cfg))
	const n = 200
	d := statsDelta(t, m, func() {
		res := runInCgroup(t, helperOp{Cgroup: cg, Op: "udp-burst", Addr: udpOtherDst, N: n, UID: nobody})
		if res.Fails != n {
			t.Fatalf("%d of %d sends denied", res.Fails, n)
		}
	})
	t.Logf("%+v", d)
	if d.Denied != n || d.Events < 5 || d.Events > 8 || d.Events+d.RateLimited != n {
		t.Fatalf("stats delta %+v: want %d denied, 5 to 8 events, the rest rate limited", d, n)
	}
}

// TestPrivilegedReserveFailures: with nobody reading, a full ring loses
// events and says so; a reader then drains exactly what was submitted.
func TestPrivilegedReserveFailures(t *testing.T) {
	requirePrivileged(t)
	w := newWorld(t)
	m, cg, cgid := w.setup(t)
	cfg := w.cfg
	cfg.Events, cfg.EventRate, cfg.EventBurst = true, 1_000_000_000, 1_000_000
	must(t, m.Enroll(cgid, cfg))

	capacity := int(m.objs.Events.MaxEntries()) / (EventSize + 8) // 8: record header
	n := capacity + 5000
	d := statsDelta(t, m, func() {
		runInCgroup(t, helperOp{Cgroup: cg, Op: "udp-burst", Addr: udpOtherDst, N: n, UID: nobody})
	})
	t.Logf("ring holds %d events; %+v", capacity, d)
	if d.ReserveFailures == 0 || d.Events+d.ReserveFailures+d.RateLimited != uint64(n) {
		t.Fatalf("stats delta %+v for %d sends", d, n)
	}

	ch, err := m.Events(t.Context())
	must(t, err)
	got := 0
	for got < int(d.Events) {
		nextEvent(t, ch)
		got++
	}
	select {
	case ev := <-ch:
		t.Fatalf("one event too many: %+v", ev)
	case <-time.After(2 * PollInterval):
	}
}

// TestPrivilegedRouteSync10k swaps route sets of 10,000 routes while a
// process in the cgroup keeps connecting a UDP socket to a routed
// destination (denied if its route were missing even once) and a Go
// reader keeps looking the route up in the installed table.
func TestPrivilegedRouteSync10k(t *testing.T) {
	requirePrivileged(t)
	w := newWorld(t)
	m, cg, cgid := w.setup(t)
	must(t, m.Enroll(cgid, w.cfg))

	sentinel := w.routes[1] // (7, 5000, udp)
	sets := [2][]Route{}
	for s := range sets {
		sets[s] = append(sets[s], sentinel)
		for i := 1; len(sets[s]) < 10_000; i++ {
			sets[s] = append(sets[s], Route{Identity: uint32(1000*(s+1) + i/60000), Port: uint16(1 + i%60000), Proto: TCP, ListenerPort: uint16(s + 1)})
		}
	}

	stop := make(chan struct{})
	var lookups, misses, raced atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // user-space reader of the live table
		defer wg.Done()
		key := bpf.EgressRouteKey{Identity: sentinel.Identity, Port: be16(sentinel.Port), Proto: uint8(UDP)}
		var val bpf.EgressRouteVal
		for {
			select {
			case <-stop:
				return
			default:
			}
			table, err := currentTable(m.objs.Routes)
			if errors.Is(err, os.ErrNotExist) {
				// The table whose id we read was swapped out and freed
				// before we could open it: the slot was not empty.
				raced.Add(1)
				continue
			}
			if err != nil || table == nil {
				misses.Add(1)
				continue
			}
			if table.Lookup(&key, &val) != nil {
				misses.Add(1)
			}
			table.Close()
			lookups.Add(1)
		}
	}()

	var syncs int
	var total time.Duration
	resCh := make(chan helperResult, 1)
	go func() {
		resCh <- runInCgroup(t, helperOp{Cgroup: cg, Op: "udp-connect-loop", Addr: routedIP + ":5000", For: 2 * time.Second, UID: nobody})
	}()
	deadline := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(deadline) {
		start := time.Now()
		must(t, m.SyncRoutes(sets[syncs%2]))
		total += time.Since(start)
		syncs++
	}
	res := <-resCh
	close(stop)
	wg.Wait()

	t.Logf("%d syncs of 10,000 routes, %v each; kernel lookups (connect) %d, failed %d; user-space lookups %d, missed %d (table replaced between reading its id and opening it: %d)",
		syncs, total/time.Duration(syncs), res.Count, res.Fails, lookups.Load(), misses.Load(), raced.Load())
	if res.Fails != 0 || res.Count == 0 {
		t.Fatalf("connects to the routed destination failed %d of %d times (%s)", res.Fails, res.Count, res.Err)
	}
	if misses.Load() != 0 || lookups.Load() == 0 {
		t.Fatalf("user-space reader missed the route %d of %d times", misses.Load(), lookups.Load())
	}
	got, err := m.Routes()
	must(t, err)
	if len(got) != 10_000 {
		t.Fatalf("%d routes installed, want 10000", len(got))
	}
}

func TestDecodeEvent(t *testing.T) {
	raw := make([]byte, EventSize)
	ne := binary.NativeEndian
	ne.PutUint64(raw[0:], uint64(5*time.Second))
	ne.PutUint64(raw[8:], 42)
	ne.PutUint32(raw[16:], 7)
	ne.PutUint32(raw[20:], 1000)
	copy(raw[24:], netip.MustParseAddr("::ffff:10.0.0.1").AsSlice())
	copy(raw[40:], netip.MustParseAddr("::ffff:10.0.0.2").AsSlice())
	binary.BigEndian.PutUint16(raw[56:], 443)
	binary.BigEndian.PutUint16(raw[58:], 3128)
	raw[60], raw[61], raw[62], raw[63] = 2, 6, 1, uint8(RedirectProxy)
	boot := time.Unix(1000, 0)
	var ev Event
	if err := decodeEvent(raw, boot, &ev); err != nil {
		t.Fatal(err)
	}
	want := Event{Time: time.Unix(1005, 0), CgroupID: 42, PID: 7, UID: 1000, Proto: TCP, Hook: HookConnect4,
		Verdict: RedirectProxy, Orig: netip.MustParseAddrPort("10.0.0.1:443"), New: netip.MustParseAddrPort("10.0.0.2:3128")}
	if ev != want {
		t.Fatalf("%+v\nwant %+v", ev, want)
	}
	if EventSize != 64 {
		t.Fatalf("event size %d", EventSize)
	}
	if err := decodeEvent(raw[:10], boot, &ev); err == nil {
		t.Fatal("short record accepted")
	}
}
