package netprobe

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is the stand-in's stdout in these tests: written by its
// goroutines, read by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// loopbackStandin serves cfg on 127.0.0.1 until the test ends.
func loopbackStandin(t *testing.T, cfg StandinConfig) (*Standin, *lockedBuffer) {
	t.Helper()
	cfg.Bind = netip.MustParseAddr("127.0.0.1")
	out := &lockedBuffer{}
	s, err := ListenStandin(cfg, out)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s, out
}

// probe runs attempts in-process and returns their outcomes (without the
// done line).
func probe(t *testing.T, attempts ...string) []Outcome {
	t.Helper()
	cfg := ProbeConfig{Timeout: 2 * time.Second}
	for _, s := range attempts {
		a, err := ParseAttempt(s)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Attempts = append(cfg.Attempts, a)
	}
	var out bytes.Buffer
	RunProbe(context.Background(), cfg, &out)
	outs := ParseOutcomes(out.String())
	if len(outs) != len(attempts)+1 || outs[len(outs)-1].Kind != "done" {
		t.Fatalf("want %d outcomes and a done line, got:\n%s", len(attempts), out.String())
	}
	return outs[:len(attempts)]
}

// waitRecords polls the stand-in's output until n records (ready excluded)
// are there.
func waitRecords(t *testing.T, out *lockedBuffer, n int) []Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var rs []Record
		for _, r := range ParseRecords(out.String()) {
			if r.Event != "ready" {
				rs = append(rs, r)
			}
		}
		if len(rs) >= n || time.Now().After(deadline) {
			if len(rs) < n {
				t.Fatalf("want %d records, got:\n%s", n, out.String())
			}
			return rs
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func requireLinux(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the probe's attempts are Linux only")
	}
}

func TestStandinAnswersAndRecordsTheProbe(t *testing.T) {
	requireLinux(t)
	s, out := loopbackStandin(t, StandinConfig{Name: "proxy", TCPPorts: []int{0}, UDPPorts: []int{0}, DNSPort: -1,
		DNSRecords: map[string]netip.Addr{"pinned.test": netip.MustParseAddr("192.0.2.7")}})
	tcp, udp := s.TCPAddrs()[0], s.UDPAddrs()[0]
	dnsTCP, dnsUDP := s.TCPAddrs()[1], s.UDPAddrs()[1]
	ready := ParseRecords(out.String())
	if len(ready) != 1 || ready[0].Event != "ready" || len(ready[0].Listen) != 4 || ready[0].Seq != 1 {
		t.Fatalf("ready record: %+v", ready)
	}

	outs := probe(t,
		"tcp:"+tcp.String(),
		"udp:"+udp.String(),
		"dns:"+dnsUDP.String(),
		"dnstcp:"+dnsTCP.String()+",name=Pinned.Test.",
		"dns:"+dnsUDP.String()+",type=AAAA,connect",
		"tcp:"+dnsTCP.String()+",send=hello dns",
		"udp:"+dnsUDP.String()+",send=not dns",
	)
	for _, o := range outs {
		if !o.OK || o.Errno != "" || o.UID != syscallUID() {
			t.Errorf("%s: %+v", o.What, o)
		}
	}
	if o := outs[0]; o.Reply != Banner("proxy", int(tcp.Port())) || !o.Connected || o.Remote != tcp.String() || o.Seq != 1 || o.Round != 1 {
		t.Errorf("tcp: %+v", o)
	}
	if o := outs[1]; o.Reply != Banner("proxy", int(udp.Port())) || o.Remote != udp.String() {
		t.Errorf("udp: %+v", o)
	}
	if o := outs[2]; !reflect.DeepEqual(o.Answers, []string{DefaultDNSAnswer.String()}) || o.Remote != dnsUDP.String() || o.Sent != "A "+DefaultDNSName {
		t.Errorf("dns: %+v", o)
	}
	if o := outs[3]; !reflect.DeepEqual(o.Answers, []string{"192.0.2.7"}) {
		t.Errorf("dnstcp with a pinned name: %+v", o)
	}
	if o := outs[4]; len(o.Answers) != 0 || o.RCode != 0 || !o.Connected {
		t.Errorf("AAAA: %+v", o)
	}
	if o := outs[5]; o.Reply != Banner("proxy", int(dnsTCP.Port())) {
		t.Errorf("a line to the DNS TCP port: %+v", o)
	}
	if o := outs[6]; o.Reply != Banner("proxy", int(dnsUDP.Port())) {
		t.Errorf("a non-DNS datagram to the DNS port: %+v", o)
	}

	rs := waitRecords(t, out, len(outs))
	find := func(f func(Record) bool) Record {
		t.Helper()
		for _, r := range rs {
			if f(r) {
				return r
			}
		}
		t.Fatalf("no such record in:\n%s", out.String())
		return Record{}
	}
	// What the stand-in saw matches what the probe did: its address and
	// the line it sent.
	r := find(func(r Record) bool { return r.Event == "tcp" && r.LocalPort == int(tcp.Port()) })
	if r.Peer != outs[0].Local || r.Data != outs[0].Sent || r.Data != "probe 1 tcp:"+tcp.String() || r.Local != tcp.String() || r.Reply != outs[0].Reply {
		t.Errorf("tcp record %+v for outcome %+v", r, outs[0])
	}
	r = find(func(r Record) bool { return r.Event == "udp" && r.LocalPort == int(udp.Port()) })
	// An unconnected UDP socket's own address is the wildcard: the port
	// is what matches.
	if r.PeerAddr().Port() != outs[1].LocalAddr().Port() || r.Data != outs[1].Sent {
		t.Errorf("udp record %+v for outcome %+v", r, outs[1])
	}
	r = find(func(r Record) bool { return r.Event == "dns" && r.Proto == "udp" && r.QType == "A" })
	if r.PeerAddr().Port() != outs[2].LocalAddr().Port() || r.QName != DefaultDNSName || !reflect.DeepEqual(r.Answers, outs[2].Answers) {
		t.Errorf("dns record %+v for outcome %+v", r, outs[2])
	}
	r = find(func(r Record) bool { return r.Event == "dns" && r.Proto == "tcp" })
	if r.QName != "pinned.test" || r.Peer != outs[3].Local {
		t.Errorf("dnstcp record %+v", r)
	}
	find(func(r Record) bool { return r.Event == "dns" && r.QType == "AAAA" && len(r.Answers) == 0 })
	find(func(r Record) bool {
		return r.Event == "tcp" && r.LocalPort == int(dnsTCP.Port()) && r.Data == "hello dns"
	})
	find(func(r Record) bool {
		return r.Event == "udp" && r.LocalPort == int(dnsUDP.Port()) && r.Data == "not dns"
	})
	for i, r := range ParseRecords(out.String()) {
		if r.Seq != int64(i+1) || r.Standin != "proxy" || r.Time.IsZero() {
			t.Errorf("record %d: %+v", i, r)
		}
	}
}

func syscallUID() int { return os.Getuid() }

// closedPort is a loopback port nobody listens on (bound, then released).
func closedPort(t *testing.T, network string) netip.AddrPort {
	t.Helper()
	var ap netip.AddrPort
	switch network {
	case "tcp":
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ap = l.Addr().(*net.TCPAddr).AddrPort()
		l.Close()
	default:
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ap = c.LocalAddr().(*net.UDPAddr).AddrPort()
		c.Close()
	}
	return ap
}

func TestProbeReportsFailuresByErrno(t *testing.T) {
	requireLinux(t)
	tcp, udp := closedPort(t, "tcp"), closedPort(t, "udp")
	outs := probe(t,
		"tcp:"+tcp.String(),
		"udp:"+udp.String()+",connect,timeout=2s",
		"udp:"+udp.String()+",timeout=150ms",
		"socket:inet/stream/tcp",
		"socket:999/stream/0",
	)
	if o := outs[0]; o.OK || o.Connected || o.Errno != "ECONNREFUSED" || o.Syscall != "connect" || o.Timeout {
		t.Errorf("tcp to a closed port: %+v", o)
	}
	// A connected UDP socket hears the ICMP port unreachable.
	if o := outs[1]; o.OK || !o.Connected || o.Errno != "ECONNREFUSED" || o.Syscall != "recvfrom" {
		t.Errorf("connected udp to a closed port: %+v", o)
	}
	// An unconnected one does not: it times out, reported as such.
	if o := outs[2]; o.OK || o.Errno != "ETIMEDOUT" || !o.Timeout || o.Syscall != "recvfrom" || o.Millis < 140 || o.Millis > 1500 {
		t.Errorf("unconnected udp to a closed port: %+v", o)
	}
	if o := outs[3]; !o.OK {
		t.Errorf("tcp socket: %+v", o)
	}
	if o := outs[4]; o.OK || o.Errno != "EAFNOSUPPORT" || o.Syscall != "socket" {
		t.Errorf("socket of an unknown family: %+v", o)
	}
}

func TestProbeV4MappedUsesAnInet6Socket(t *testing.T) {
	requireLinux(t)
	s, out := loopbackStandin(t, StandinConfig{Name: "p", TCPPorts: []int{0}})
	port := s.TCPAddrs()[0].Port()
	o := probe(t, "tcp:[::ffff:127.0.0.1]:"+strconv.Itoa(int(port)))[0]
	if o.Errno == "EAFNOSUPPORT" {
		t.Skip("no IPv6 in this kernel")
	}
	// The socket's own address is v4-mapped: an AF_INET6 socket made it.
	if !o.OK || !strings.HasPrefix(o.Local, "[::ffff:127.0.0.1]:") || o.Remote != "[::ffff:127.0.0.1]:"+strconv.Itoa(int(port)) {
		t.Fatalf("%+v", o)
	}
	if r := waitRecords(t, out, 1)[0]; r.PeerIP() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("record %+v", r)
	}
}

func TestProbeLoopStops(t *testing.T) {
	requireLinux(t)
	a, _ := ParseAttempt("sleep:1ms")
	run := func(ctx context.Context, cfg ProbeConfig) []Outcome {
		cfg.Attempts, cfg.Loop, cfg.Timeout, cfg.Interval = []Attempt{a, a}, true, time.Second, time.Millisecond
		var out lockedBuffer
		RunProbe(ctx, cfg, &out)
		return ParseOutcomes(out.String())
	}
	outs := run(context.Background(), ProbeConfig{Count: 3})
	if len(outs) != 7 || outs[6].Kind != "done" || outs[6].Reason != "count" || outs[5].Round != 3 || outs[5].Seq != 6 || outs[6].Seq != 7 {
		t.Fatalf("count=3: %+v", outs)
	}
	stop := filepath.Join(t.TempDir(), "stop")
	time.AfterFunc(50*time.Millisecond, func() { _ = writeFile(stop) })
	outs = run(context.Background(), ProbeConfig{StopFile: stop})
	if last := outs[len(outs)-1]; last.Reason != "stop-file" || len(outs) < 3 {
		t.Fatalf("stop file: %d outcomes, last %+v", len(outs), last)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	outs = run(ctx, ProbeConfig{})
	if last := outs[len(outs)-1]; last.Reason != "signal" {
		t.Fatalf("cancelled: last %+v", last)
	}
	outs = run(context.Background(), ProbeConfig{For: 30 * time.Millisecond})
	if last := outs[len(outs)-1]; last.Reason != "for" {
		t.Fatalf("-for: last %+v", last)
	}
}

func writeFile(p string) error { return os.WriteFile(p, nil, 0o600) }

func TestParseAttempt(t *testing.T) {
	a, err := ParseAttempt("udp:[::ffff:10.0.0.1]:5353,connect,send=hi there,timeout=3s,uid=1000")
	if err != nil {
		t.Fatal(err)
	}
	want := Attempt{Spec: a.Spec, Kind: "udp", Target: netip.MustParseAddrPort("[::ffff:10.0.0.1]:5353"), Send: "hi there",
		Connect: true, Timeout: 3 * time.Second, AsUser: true, UID: 1000, GID: 1000, Name: DefaultDNSName, QType: TypeA,
		childSpec: "udp:[::ffff:10.0.0.1]:5353,connect,send=hi there,timeout=3s"}
	if !reflect.DeepEqual(a, want) {
		t.Errorf("got  %+v\nwant %+v", a, want)
	}
	if a, _ := ParseAttempt("dns:10.0.0.201"); a.Target != netip.MustParseAddrPort("10.0.0.201:53") {
		t.Errorf("dns default port: %v", a.Target)
	}
	if a, _ := ParseAttempt("dnstcp:[2001:db8::1],type=AAAA,name=x.test,uid=0,gid=5"); a.Target != netip.MustParseAddrPort("[2001:db8::1]:53") || a.QType != TypeAAAA || a.GID != 5 {
		t.Errorf("dnstcp v6: %+v", a)
	}
	if a, _ := ParseAttempt("socket:ping"); a.Family != 2 || a.Type != 2 || a.Proto != 1 {
		t.Errorf("ping: %+v", a)
	}
	for _, bad := range []string{"tcp", "tcp:10.0.0.1", "ftp:203.0.113.4:21", "tcp:203.0.113.4:80,bogus", "tcp:203.0.113.4:80,nosend=1",
		"tcp:203.0.113.4:80,timeout", "dns:x", "socket:inet/stream", "socket:nope", "sleep:soon", "tcp:203.0.113.4:80,uid=-1", "dns:203.0.113.4,type=MX"} {
		if _, err := ParseAttempt(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestStandinFlagsRoundTrip(t *testing.T) {
	c := StandinConfig{Name: "dns", Bind: netip.MustParseAddr("10.0.0.201"), TCPPorts: []int{15001, 15002}, UDPPorts: []int{9},
		DNSPort: 53, DNSAnswer: netip.MustParseAddr("198.51.100.9"), DNSRecords: map[string]netip.Addr{"a.test": netip.MustParseAddr("192.0.2.1")},
		ReadTimeout: time.Second}
	got, err := ParseStandinFlags(c.Args())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Errorf("got  %+v\nwant %+v", got, c)
	}
	if _, err := ParseStandinFlags([]string{"-tcp", "70000"}); err == nil {
		t.Error("port 70000 parsed")
	}
	if _, err := ListenStandin(StandinConfig{Name: "x"}, &bytes.Buffer{}); err == nil {
		t.Error("a stand-in with nothing to listen on started")
	}
}

func TestDNSRoundTrip(t *testing.T) {
	q, err := BuildQuery(0xbeef, "Some.Name.test.", TypeA)
	if err != nil {
		t.Fatal(err)
	}
	pq, err := ParseQuestion(q)
	if err != nil || pq.ID != 0xbeef || pq.Name != "Some.Name.test" || pq.Type != TypeA || pq.End != len(q) {
		t.Fatalf("question %+v %v", pq, err)
	}
	ans := BuildAnswer(q, pq, []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")})
	r, err := ParseResponse(ans)
	if err != nil || r.ID != 0xbeef || r.RCode != 0 || !slices.Equal(r.Answers, []netip.Addr{netip.MustParseAddr("192.0.2.1")}) {
		t.Fatalf("response %+v %v", r, err)
	}
	if _, err := ParseResponse(q); err == nil {
		t.Error("a query parsed as a response")
	}
	if _, err := ParseQuestion([]byte("probe 1 tcp:203.0.113.4:53\n")); err == nil {
		t.Error("a probe line parsed as a DNS question")
	}
	if _, err := BuildQuery(1, "a..b", TypeA); err == nil {
		t.Error("an empty label built")
	}
}

// A client that sends nothing still gets the banner, after the read
// deadline, on the DNS port (where the client speaks first) as elsewhere.
func TestStandinAnswersSilentClients(t *testing.T) {
	requireLinux(t)
	s, out := loopbackStandin(t, StandinConfig{Name: "dns", TCPPorts: []int{0}, DNSPort: -1, ReadTimeout: 200 * time.Millisecond})
	plain, dns := s.TCPAddrs()[0], s.TCPAddrs()[1]
	outs := probe(t, "tcp:"+plain.String()+",nosend", "tcp:"+dns.String()+",nosend")
	for i, ap := range []netip.AddrPort{plain, dns} {
		if o := outs[i]; !o.OK || o.Reply != Banner("dns", int(ap.Port())) || o.Sent != "" {
			t.Errorf("%s: %+v", o.What, o)
		}
	}
	for _, r := range waitRecords(t, out, 2) {
		if r.Event != "tcp" || r.Data != "" {
			t.Errorf("record %+v", r)
		}
	}
}
