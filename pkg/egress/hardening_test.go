package egress

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestPrivilegedAncestry: a process in a cgroup below an enrolled one (and
// below that) is enforced like the agent, by the agent's config.
func TestPrivilegedAncestry(t *testing.T) {
	requirePrivileged(t)
	w := newWorld(t)
	m, cg, cgid := w.setup(t)
	must(t, m.Enroll(cgid, w.cfg))
	child, _ := newCgroup(t, cg)
	grandchild, _ := newCgroup(t, child)
	rows := []struct {
		name string
		op   helperOp
		want outcome
	}{
		{"UDP non-DNS", helperOp{Op: "udp-sendto", Addr: udpOtherDst, UID: nobody}, outcome{errno: int(unix.EPERM)}},
		{"unknown TCP", helperOp{Op: "tcp", Addr: unknownDst, UID: nobody}, outcome{at: w.proxy, peer: w.proxy.Addr.String()}},
		{"peer", helperOp{Op: "tcp", Addr: w.peer.Addr.String(), UID: nobody}, outcome{errno: int(unix.EPERM)}},
		{"CP other port", helperOp{Op: "tcp", Addr: w.cpOther.Addr.String(), UID: nobody}, outcome{errno: int(unix.EPERM)}},
		{"raw socket (root)", helperOp{Op: "raw", UID: 0}, outcome{errno: int(unix.EPERM)}},
		{"DNS UDP", helperOp{Op: "udp-sendto", Addr: dnsOrigIP + ":53", Reply: true, UID: nobody},
			outcome{at: w.dnsUDP, peer: dnsOrigIP + ":53", reply: true}},
	}
	for _, where := range []struct{ name, dir string }{{"child", child}, {"grandchild", grandchild}} {
		for _, r := range rows {
			t.Run(where.name+"/"+r.name, func(t *testing.T) {
				op := r.op
				op.Cgroup = where.dir
				op.Token = where.name + "/" + r.name + "/" + randomSuffix(t)
				check(t, w, op, runInCgroup(t, op), r.want)
			})
		}
	}
}

// TestPrivilegedBackstop: in normal operation (every row of the decision
// table) the backstop drops nothing; sockets made before the cgroup was
// enrolled, which the sock_addr hooks never see again, are stopped by it,
// counted, and reported as events naming the enrolled cgroup, also from a
// cgroup below it.
func TestPrivilegedBackstop(t *testing.T) {
	requirePrivileged(t)
	w := newWorld(t)
	m, cg, cgid := w.setup(t)
	for _, r := range w.rows() {
		if r.skip != "" {
			continue
		}
		cfg := w.cfg
		cfg.EnforceLoopback = !r.loopback
		cfg.AgentToAgent = r.a2a
		must(t, m.Enroll(cgid, cfg))
		op := r.op
		op.Cgroup = cg
		op.Token = "backstop/" + r.name + "/" + randomSuffix(t)
		check(t, w, op, runInCgroup(t, op), r.enforced)
	}
	st, err := m.Stats()
	must(t, err)
	t.Logf("normal operation: %d allowed, %d redirected, %d denied, %d backstop drops", st.Allowed, st.Redirected, st.Denied, st.BackstopDrops)
	if st.BackstopDrops != 0 {
		t.Fatalf("the backstop dropped %d packets in normal operation", st.BackstopDrops)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := m.Events(ctx)
	must(t, err)
	must(t, m.Unenroll(cgid))
	child, _ := newCgroup(t, cg)
	h := startInCgroup(t, helperOp{Op: "escape", Cgroup: child, UID: 0, Addr: udpOtherDst, Token: "escape"})
	cfg := w.cfg
	cfg.Events = true
	must(t, m.Enroll(cgid, cfg))
	res := h.Finish(t)
	for _, want := range []string{"raw EPERM", "udp EPERM"} {
		if res.Outcomes[want] != 1 {
			t.Errorf("escape: outcomes %v, want %q", res.Outcomes, want)
		}
	}
	st, err = m.Stats()
	must(t, err)
	if st.BackstopDrops != 2 {
		t.Errorf("backstop drops %d, want 2 (the raw and the connected UDP packet)", st.BackstopDrops)
	}
	var got []string
	timeout := time.After(5 * time.Second)
	for len(got) < 2 {
		select {
		case ev := <-events:
			if ev.Hook != HookBackstop {
				continue
			}
			if ev.CgroupID != cgid || ev.Verdict != DenyBackstop {
				t.Errorf("backstop event %+v, want cgroup %d and %v", ev, cgid, DenyBackstop)
			}
			got = append(got, fmt.Sprintf("%v %v", ev.Proto, ev.Orig))
		case <-timeout:
			t.Fatalf("backstop events: got %v, want two", got)
		}
	}
	slices.Sort(got)
	t.Logf("backstop events: %v", got)
	if want := []string{fmt.Sprintf("%v 127.0.0.9:0", Proto(unix.IPPROTO_ICMP)), fmt.Sprintf("%v %s", UDP, udpOtherDst)}; !slices.Equal(got, want) {
		t.Errorf("backstop events %v, want %v", got, want)
	}
}

// holdListener accepts TCP connections and keeps them open until cleanup.
func holdListener(t testing.TB, addr string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	must(t, err)
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// TestPrivilegedCut: sockets connected during a bypass to where the policy
// refuses (TCP, connected UDP, IPv4-mapped TCP) are destroyed by Enable +
// Cut, from the agent's cgroup and from one below it; what the policy
// allows (the proxy, the DNS server) stays; a Cut during a bypass destroys
// nothing. Logs the time from Enable to the moment the last victim's read
// failed.
func TestPrivilegedCut(t *testing.T) {
	requirePrivileged(t)
	w := newWorld(t)
	m, cg, cgid := w.setup(t)
	child, _ := newCgroup(t, cg)
	outTCP := holdListener(t, "127.0.0.40:0")
	outUDP := newUDPRecorder(t, "127.0.0.41:0")
	proxyConn := holdListener(t, w.proxy.Addr.Addr().String()+":0") // another listener of the proxy
	mappedOut := netip.AddrPortFrom(netip.AddrFrom16(outTCP.Addr().As16()), outTCP.Port())
	probes := []probe{
		{Op: "tcp", Addr: outTCP.String()},
		{Op: "udp", Addr: outUDP.Addr.String()},
		{Op: "tcp", Addr: proxyConn.String()},
		{Op: "udp", Addr: w.dnsUDP.Addr.String()},
		{Op: "tcp", Addr: mappedOut.String()},
	}
	cutIdx := []int{0, 1, 4}
	wantOutcomes := map[string]int{"0 cut ECONNABORTED": 1, "1 cut ECONNABORTED": 1, "2 alive": 1, "3 alive": 1, "4 cut ECONNABORTED": 1}

	// During a bypass nothing is cut.
	must(t, m.Enroll(cgid, w.cfg))
	must(t, m.Bypass(cgid, time.Now().Add(time.Minute)))
	h := startInCgroup(t, helperOp{Op: "cut-victim", Cgroup: cg, UID: nobody, Probes: probes})
	res, err := m.Cut(cgid, cg, 0)
	must(t, err)
	if res.Destroyed != 0 || res.Seen < len(probes) {
		t.Errorf("cut during the bypass: %+v, want nothing destroyed of at least %d seen", res, len(probes))
	}
	if out := h.Finish(t); out.Outcomes["0 alive"] != 1 || out.Outcomes["1 alive"] != 1 {
		t.Errorf("during the bypass: %v, want everything alive", out.Outcomes)
	}

	const rounds = 100
	var lat, took []time.Duration
	for i := range rounds {
		dir := cg
		if i%2 == 1 {
			dir = child
		}
		must(t, m.Enroll(cgid, w.cfg))
		must(t, m.Bypass(cgid, time.Now().Add(time.Minute)))
		h := startInCgroup(t, helperOp{Op: "cut-victim", Cgroup: dir, UID: nobody, Probes: probes})
		t0 := monoNow()
		must(t, m.Enable(cgid))
		res, err := m.Cut(cgid, cg, 0)
		must(t, err)
		took = append(took, res.Took)
		var last int64
		for range cutIdx {
			select {
			case line := <-h.Lines:
				f := strings.Fields(line) // cut <index> <errno> <mono>
				at, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
				last = max(last, at)
			case <-time.After(5 * time.Second):
				t.Fatalf("round %d: a victim was not cut (cut %+v)", i, res)
			}
		}
		lat = append(lat, time.Duration(last-t0))
		out := h.Finish(t)
		if !mapsEqual(out.Outcomes, wantOutcomes) {
			t.Fatalf("round %d (%s): outcomes %v, want %v", i, dir, out.Outcomes, wantOutcomes)
		}
		// More when sockets of the previous round's helper linger in
		// FIN_WAIT: they were connected to the same refused destinations.
		if res.Destroyed < len(cutIdx) {
			t.Fatalf("round %d: %+v, want at least %d destroyed", i, res, len(cutIdx))
		}
	}
	slices.Sort(lat)
	slices.Sort(took)
	st, err := m.Stats()
	must(t, err)
	t.Logf("enable to cut over %d rounds (3 victims each, the last one's read): p50 %v p99 %v max %v; Cut itself p50 %v p99 %v; %d sockets cut",
		rounds, lat[rounds/2], lat[rounds*99/100], lat[rounds-1], took[rounds/2], took[rounds*99/100], st.Cut)
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
