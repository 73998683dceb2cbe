package netlog_test

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	"google.golang.org/grpc"

	"github.com/clawker/clawker-cp/bpf"
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/netlog"
	"github.com/clawker/clawker-cp/pkg/netlog/netlogtest"
)

const (
	cgid    = 4242
	ctrID   = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	afInet  = 2
	afInet6 = 10
)

// event builds the bpf2go value the programs would write.
func event(hook egress.Hook, v egress.Verdict, family uint8, proto uint8, dst netip.AddrPort, nw netip.AddrPort) bpf.EgressEvent {
	ev := bpf.EgressEvent{TsNs: 5_000_000_000, CgroupId: cgid, Pid: 77, Uid: 1000, Family: family, Proto: proto, Hook: uint8(hook), Verdict: uint8(v)}
	if dst.IsValid() {
		a := dst.Addr()
		if a.Is4() {
			a = netip.AddrFrom16(a.As16())
		}
		ev.OrigAddr, ev.OrigPort = netlog.AddrWords(a), netlog.NetPort(dst.Port())
	}
	if nw.IsValid() {
		ev.NewAddr, ev.NewPort = netlog.AddrWords(netip.AddrFrom16(nw.Addr().As16())), netlog.NetPort(nw.Port())
	}
	return ev
}

func TestDecodeRealBytes(t *testing.T) {
	ev := event(egress.HookConnect4, egress.RedirectProxy, afInet, 6, netip.MustParseAddrPort("203.0.113.4:443"), netip.MustParseAddrPort("172.30.0.200:15001"))
	raw := netlog.Encode(&ev)
	if len(raw) != netlog.RecordSize || netlog.RecordSize != 64 {
		t.Fatalf("record of %d bytes (RecordSize %d)", len(raw), netlog.RecordSize)
	}
	var got bpf.EgressEvent
	if err := netlog.Decode(raw, &got); err != nil {
		t.Fatal(err)
	}
	if got != ev {
		t.Fatalf("decoded %+v, want %+v", got, ev)
	}
	if err := netlog.Decode(raw[:63], &got); err == nil {
		t.Fatal("short record decoded")
	}
}

type world struct {
	snap    atomic.Pointer[netlog.Snapshot]
	refresh func()
	mu      sync.Mutex
	avail   []string
	upCh    chan bool
}

func newWorld() *world {
	w := &world{upCh: make(chan bool, 64)}
	w.snap.Store(&netlog.Snapshot{AsOf: time.Now().Add(time.Hour),
		Cgroups: map[uint64]netlog.Identity{cgid: {ContainerID: ctrID, Project: "myapp", Agent: "dev"}},
		Hosts:   map[netip.Addr]string{netip.MustParseAddr("203.0.113.4"): "api.example.com"}})
	return w
}

func (w *world) config(endpoint string, tlsOn bool, m any) netlog.Config {
	return netlog.Config{
		Endpoint: endpoint, HostName: "test-host",
		Enrich: func() *netlog.Snapshot { return w.snap.Load() },
		Refresh: func() {
			w.mu.Lock()
			f := w.refresh
			w.mu.Unlock()
			if f != nil {
				f()
			}
		},
		Availability: func(up bool, reason string) {
			w.mu.Lock()
			if up {
				w.avail = append(w.avail, "up")
			} else {
				w.avail = append(w.avail, "down: "+reason)
			}
			w.mu.Unlock()
			w.upCh <- up
		},
	}
}

func (w *world) waitUp(t testing.TB, want bool) {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case up := <-w.upCh:
			if up == want {
				return
			}
		case <-timeout:
			w.mu.Lock()
			defer w.mu.Unlock()
			t.Fatalf("availability never became %v: %v", want, w.avail)
		}
	}
}

func (w *world) lastReason() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := len(w.avail) - 1; i >= 0; i-- {
		if strings.HasPrefix(w.avail[i], "down: ") {
			return w.avail[i]
		}
	}
	return ""
}

func start(t *testing.T, cfg netlog.Config, src netlog.Source) *netlog.Pipeline {
	t.Helper()
	p, err := netlog.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	if err := p.Start(src); err != nil {
		t.Fatal(err)
	}
	return p
}

func tlsConfig(t *testing.T) (netlog.Config, *netlogtest.Receiver, *world) { return tlsConfigB(t) }

func tlsConfigB(t testing.TB) (netlog.Config, *netlogtest.Receiver, *world) {
	m := netlogtest.Material(t)
	rcv := netlogtest.NewReceiver(t, m, "127.0.0.1:0")
	w := newWorld()
	cfg := w.config("", true, nil)
	tc, err := m.NetloggerClientTLSConfig(netlogtest.Pool(m), "")
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLS = tc
	return cfg, rcv, w
}

func TestRecordsReachReceiverWithExactAttributes(t *testing.T) {
	cfg, rcv, _ := tlsConfig(t)
	rcv.Start(t)
	cfg.Endpoint = rcv.Addr
	cfg.ExportInterval = 50 * time.Millisecond
	src := netlog.NewMemSource(100)
	p := start(t, cfg, src)

	none := netip.AddrPort{}
	evs := []bpf.EgressEvent{
		event(egress.HookConnect4, egress.AllowSubnet, afInet, 6, netip.MustParseAddrPort("172.30.0.9:8080"), netip.MustParseAddrPort("172.30.0.9:8080")),
		event(egress.HookConnect4, egress.RedirectProxy, afInet, 6, netip.MustParseAddrPort("203.0.113.4:443"), netip.MustParseAddrPort("172.30.0.200:15001")),
		event(egress.HookSendmsg4, egress.DenyUDP, afInet, 17, netip.MustParseAddrPort("198.51.100.99:123"), none),
		event(egress.HookConnect6, egress.DenyIPv6, afInet6, 6, netip.MustParseAddrPort("[2001:db8::1]:443"), none),
		event(egress.HookConnect6, egress.RedirectProxy, afInet6, 6, netip.MustParseAddrPort("[::ffff:203.0.113.4]:80"), netip.MustParseAddrPort("172.30.0.200:15001")),
		event(egress.HookSockCreate, egress.DenySocket, afInet, 255, none, none),
		event(egress.HookConnect4, egress.AllowBypass, afInet, 6, netip.MustParseAddrPort("198.51.100.22:22"), netip.MustParseAddrPort("198.51.100.22:22")),
	}
	// connect6 to a mapped address: the struct keeps it as the app gave it.
	evs[4].OrigAddr = netlog.AddrWords(netip.MustParseAddr("::ffff:203.0.113.4"))
	for i := range evs {
		src.Put(netlog.Encode(&evs[i]))
	}
	if err := rcv.WaitCount(len(evs), 10*time.Second); err != nil {
		t.Fatalf("%v: %+v", err, p.Stats())
	}
	base := map[string]any{"cgroup_id": int64(cgid), "pid": int64(77), "uid": int64(1000), "container_id": ctrID, "agent": "dev", "project": "myapp"}
	want := []struct {
		name  string
		attrs map[string]any
	}{
		{"ebpf.egress.connect", map[string]any{"action": "allowed", "verdict": "allow-subnet", "l4_proto": "tcp", "dst_ip": "172.30.0.9", "dst_port": int64(8080), "ipv6": false, "ipv4_mapped": false}},
		{"ebpf.egress.connect", map[string]any{"action": "redirected", "verdict": "redirect-proxy", "l4_proto": "tcp", "dst_ip": "203.0.113.4", "dst_port": int64(443), "dst_host": "api.example.com", "new_ip": "172.30.0.200", "new_port": int64(15001), "ipv6": false, "ipv4_mapped": false}},
		{"ebpf.egress.sendmsg", map[string]any{"action": "denied", "verdict": "deny-udp", "l4_proto": "udp", "dst_ip": "198.51.100.99", "dst_port": int64(123), "ipv6": false, "ipv4_mapped": false}},
		{"ebpf.egress.connect", map[string]any{"action": "denied", "verdict": "deny-ipv6", "l4_proto": "tcp", "dst_ip": "2001:db8::1", "dst_port": int64(443), "ipv6": true, "ipv4_mapped": false}},
		{"ebpf.egress.connect", map[string]any{"action": "redirected", "verdict": "redirect-proxy", "l4_proto": "tcp", "dst_ip": "203.0.113.4", "dst_port": int64(80), "dst_host": "api.example.com", "new_ip": "172.30.0.200", "new_port": int64(15001), "ipv6": true, "ipv4_mapped": true}},
		{"ebpf.egress.sock_create", map[string]any{"action": "denied", "verdict": "deny-socket", "l4_proto": "raw", "ipv6": false}},
		{"ebpf.egress.connect", map[string]any{"action": "bypassed", "verdict": "allow-bypass", "l4_proto": "tcp", "dst_ip": "198.51.100.22", "dst_port": int64(22), "ipv6": false, "ipv4_mapped": false}},
	}
	got := rcv.Records()
	clock := netlog.NewBootClock()
	for i, w := range want {
		r := got[i]
		if r.Service != "ebpf-egress" || r.Host != "test-host" || r.Scope != "clawker.netlogger" || r.ClientCN != "clawker-netlogger" {
			t.Errorf("record %d: service %q host %q scope %q client %q", i, r.Service, r.Host, r.Scope, r.ClientCN)
		}
		if r.Log.EventName != w.name || r.Log.SeverityNumber != logspb.SeverityNumber_SEVERITY_NUMBER_INFO || r.Log.SeverityText != "INFO" {
			t.Errorf("record %d: event %q severity %v %q", i, r.Log.EventName, r.Log.SeverityNumber, r.Log.SeverityText)
		}
		wantTS := clock.Wall(5_000_000_000)
		if d := time.Duration(int64(r.Log.TimeUnixNano) - wantTS.UnixNano()); d < -50*time.Millisecond || d > 50*time.Millisecond {
			t.Errorf("record %d: timestamp %v off the BPF time by %v", i, time.Unix(0, int64(r.Log.TimeUnixNano)), d)
		}
		exp := map[string]any{}
		for k, v := range base {
			exp[k] = v
		}
		for k, v := range w.attrs {
			exp[k] = v
		}
		if len(r.Attrs) != len(exp) {
			t.Errorf("record %d: attributes %v, want %v", i, r.Attrs, exp)
			continue
		}
		for k, v := range exp {
			if r.Attrs[k] != v {
				t.Errorf("record %d: %s = %v (%T), want %v", i, k, r.Attrs[k], r.Attrs[k], v)
			}
		}
	}
	st := waitStats(p, func(s netlog.Stats) bool { return s.Exported == 7 })
	if st.Read != 7 || st.Exported != 7 || st.Dropped != 0 || st.Failed != 0 || !st.Up {
		t.Fatalf("stats %+v", st)
	}
}

func TestUnknownCgroupIsParkedUntilEnrichmentArrives(t *testing.T) {
	cfg, rcv, w := tlsConfig(t)
	rcv.Start(t)
	cfg.Endpoint = rcv.Addr
	cfg.ExportInterval = 20 * time.Millisecond
	cfg.ParkFor = 5 * time.Second
	w.snap.Store(&netlog.Snapshot{AsOf: time.Now()})
	var asked atomic.Int32
	w.refresh = func() {
		if asked.Add(1) == 1 {
			// Answered asynchronously, like the actor's refresh.
			go func() {
				time.Sleep(30 * time.Millisecond)
				w.snap.Store(&netlog.Snapshot{AsOf: time.Now(), Cgroups: map[uint64]netlog.Identity{cgid: {ContainerID: ctrID, Project: "p", Agent: "a"}}})
			}()
		}
	}
	src := netlog.NewMemSource(10)
	start(t, cfg, src)
	ev := event(egress.HookConnect4, egress.DenyUDP, afInet, 17, netip.MustParseAddrPort("198.51.100.99:53"), netip.AddrPort{})
	src.Put(netlog.Encode(&ev))
	if err := rcv.WaitCount(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	r := rcv.Records()[0]
	if r.Attrs["agent"] != "a" || r.Attrs["project"] != "p" || r.Attrs["container_id"] != ctrID {
		t.Fatalf("not enriched: %v", r.Attrs)
	}
	if _, ok := r.Attrs["dst_host"]; ok {
		t.Fatalf("dst_host for an address no DNS answer named: %v", r.Attrs)
	}
}

func TestUnavailableAtStartThenRecordsFlow(t *testing.T) {
	cfg, _, w := tlsConfig(t)
	m := netlogtest.Material(t)
	tc, _ := m.NetloggerClientTLSConfig(netlogtest.Pool(m), "")
	cfg.TLS = tc
	addr := netlogtest.FreeAddr(t)
	cfg.Endpoint = addr
	cfg.ExportInterval = 50 * time.Millisecond
	src := netlog.NewMemSource(100)
	p := start(t, cfg, src)
	w.waitUp(t, false)
	if r := w.lastReason(); !strings.Contains(r, "cannot reach the collector at "+addr) {
		t.Fatalf("reason %q", r)
	}
	for i := 0; i < 20; i++ {
		ev := event(egress.HookConnect4, egress.RedirectProxy, afInet, 6, netip.MustParseAddrPort("203.0.113.4:443"), netip.MustParseAddrPort("172.30.0.200:15001"))
		ev.Pid = uint32(i)
		src.Put(netlog.Encode(&ev))
	}
	time.Sleep(300 * time.Millisecond) // the records wait in the buffer
	rcv := netlogtest.NewReceiver(t, m, addr)
	rcv.Start(t)
	if err := rcv.WaitCount(20, 20*time.Second); err != nil {
		t.Fatalf("%v: %+v", err, p.Stats())
	}
	w.waitUp(t, true)
	// Killed mid-stream: the next records wait and arrive once it is back.
	rcv.Stop()
	for i := 0; i < 5; i++ {
		ev := event(egress.HookConnect4, egress.AllowSubnet, afInet, 6, netip.MustParseAddrPort("172.30.0.9:80"), netip.MustParseAddrPort("172.30.0.9:80"))
		src.Put(netlog.Encode(&ev))
	}
	w.waitUp(t, false)
	rcv.Start(t)
	if err := rcv.WaitCount(25, 20*time.Second); err != nil {
		t.Fatalf("%v: %+v", err, p.Stats())
	}
	if st := waitStats(p, func(s netlog.Stats) bool { return s.Exported == 25 }); st.Read != 25 || st.Exported != 25 || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPlaintextCollectorIsNamed(t *testing.T) {
	cfg, _, w := tlsConfig(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer() // no TLS
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	cfg.Endpoint = ln.Addr().String()
	start(t, cfg, netlog.NewMemSource(1))
	w.waitUp(t, false)
	if r := w.lastReason(); !strings.Contains(r, "answers in plaintext") || !strings.Contains(r, "monitoring.otlp_insecure") {
		t.Fatalf("reason %q", r)
	}
}

func TestBufferBoundDropsAreCounted(t *testing.T) {
	cfg, _, w := tlsConfig(t)
	cfg.Endpoint = netlogtest.FreeAddr(t)
	cfg.Buffer, cfg.BatchSize, cfg.RetryFor = 100, 50, 500*time.Millisecond
	src := netlog.NewMemSource(1000)
	p := start(t, cfg, src)
	w.waitUp(t, false)
	ev := event(egress.HookConnect4, egress.DenyUDP, afInet, 17, netip.MustParseAddrPort("198.51.100.99:53"), netip.AddrPort{})
	raw := netlog.Encode(&ev)
	for i := 0; i < 500; i++ {
		src.Put(raw)
	}
	deadline := time.Now().Add(10 * time.Second)
	var st netlog.Stats
	for {
		st = p.Stats()
		if st.Read == 500 && st.InFlight == 0 && st.Parked == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Every record is accounted for: exported, failed after retries, or
	// dropped at the bound.
	if st.Read != 500 || st.Dropped < 300 || st.Emitted+st.Dropped != 500 || st.Exported+st.Failed+st.InFlight != st.Emitted || st.Exported != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestDrainExportsEverythingRead(t *testing.T) {
	cfg, rcv, _ := tlsConfig(t)
	rcv.Start(t)
	cfg.Endpoint = rcv.Addr
	cfg.ExportInterval = time.Hour // only the drain exports
	cfg.Buffer = 20000
	src := netlog.NewMemSource(20000)
	p := start(t, cfg, src)
	ev := event(egress.HookConnect4, egress.RedirectProxy, afInet, 6, netip.MustParseAddrPort("203.0.113.4:443"), netip.MustParseAddrPort("172.30.0.200:15001"))
	const n = 10000
	for i := 0; i < n; i++ {
		ev.Pid = uint32(i)
		src.Put(netlog.Encode(&ev))
	}
	// A bound for a loaded CI machine under -race (it takes ~4 s there with
	// both cores busy): the test is about completeness, not speed.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep := p.Drain(ctx)
	if rep.Err != nil || !rep.ReadAll || rep.Read != n || rep.Exported != n || rep.Dropped != 0 {
		t.Fatalf("drain %+v", rep)
	}
	if got := rcv.Count(); got != n {
		t.Fatalf("receiver has %d of %d", got, n)
	}
	seen := map[int64]bool{}
	for _, r := range rcv.Records() {
		seen[r.Attrs["pid"].(int64)] = true
	}
	if len(seen) != n {
		t.Fatalf("%d distinct records of %d", len(seen), n)
	}
}

// waitStats polls until ok (the exporter counts after the receiver has
// answered) or 5s pass, and returns the last stats.
func waitStats(p *netlog.Pipeline, ok func(netlog.Stats) bool) netlog.Stats {
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := p.Stats()
		if ok(st) || time.Now().After(deadline) {
			return st
		}
		time.Sleep(5 * time.Millisecond)
	}
}
