package cptest

import (
	"context"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"testing"
	"time"

	docker "github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/cptest/netprobe"
)

func TestFreeSubnets(t *testing.T) {
	pool := netip.MustParsePrefix("10.9.0.0/22")
	taken := []netip.Prefix{netip.MustParsePrefix("10.9.1.128/25"), netip.MustParsePrefix("10.9.3.7/32"), netip.MustParsePrefix("192.168.0.0/16")}
	got := freeSubnets(pool, taken, 3)
	want := []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24"), netip.MustParsePrefix("10.9.2.0/24")}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := freeSubnets(pool, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, 0); len(got) != 0 {
		t.Errorf("under a covering route: %v", got)
	}
	if got := freeSubnets(netip.MustParsePrefix("10.9.0.0/25"), nil, 0); got != nil {
		t.Errorf("a pool smaller than a /24: %v", got)
	}
}

// The tools of the container-level firewall tests, without any firewall:
// a probe container reaches the stand-ins at .200 and .201 of a network of
// the test's own, gets their answers, is recorded by them, and reports
// failures (refused, timed out, not permitted) by errno.
func TestNetprobeWithoutFirewall(t *testing.T) {
	d := RequireDocker(t)
	n := NewTestNet(t, d, NewRunID(), TestNetOptions{})
	checkTestNetwork(t, d, n)
	proxy, dns := n.StartFirewallStandins(t, netprobe.DefaultProxyPort, 16443)
	px, dn := n.ProxyIP().String(), n.DNSIP().String()
	answer := []string{netprobe.DefaultDNSAnswer.String()}

	t.Run("root", func(t *testing.T) {
		t.Parallel()
		tcp := "tcp:" + px + ":15001"
		route := "tcp:" + px + ":16443"
		mapped := "tcp:[::ffff:" + px + "]:15001"
		dnsUDP := "dns:" + dn
		dnsNamed := "dns:" + dn + ",name=Example.Test,connect"
		dnsTCP := "dnstcp:" + dn
		notDNS := "udp:" + dn + ":53,send=not a query"
		refused := "tcp:" + px + ":15002"
		nobody := "tcp:" + n.Addr(250).String() + ":80,timeout=1s" // never handed out: outside .0/25
		udpRefused := "udp:" + px + ":15001,connect"
		raw := "socket:raw"
		asNobody := tcp + ",uid=65534"
		v6 := "tcp:[::1]:1" // the container's own loopback: nothing leaves it
		attempts := []string{tcp, route, mapped, dnsUDP, dnsNamed, dnsTCP, notDNS, refused, nobody, udpRefused, raw, asNobody, v6}
		p, res := n.RunProbe(t, ProbeSpec{Args: attempts})
		if res.ExitCode != 0 || res.Done.Reason != "end" || len(res.Outcomes) != len(attempts) {
			t.Fatalf("probe run: exit %d, done %+v, %d outcomes\n%s%s", res.ExitCode, res.Done, len(res.Outcomes), res.Stdout, res.Stderr)
		}
		t.Logf("probe at %v:\n%s", p.IP, res.Stdout)
		if !n.Subnet.Contains(p.IP) {
			t.Fatalf("probe address %v is not on %s", p.IP, n.Subnet)
		}

		o := res.Must(t, tcp)
		if !o.OK || o.Reply != "standin proxy 15001" || o.Remote != px+":15001" || o.LocalAddr().Addr() != p.IP || o.UID != 0 {
			t.Errorf("%s: %+v", tcp, o)
		}
		r := proxy.WaitRecord(t, 10*time.Second, "the probe's connection", SentBy(o))
		if r.PeerIP() != p.IP || r.Local != px+":15001" || r.LocalPort != 15001 || r.Event != "tcp" || r.Reply != o.Reply {
			t.Errorf("record %+v of outcome %+v", r, o)
		}
		if o := res.Must(t, route); !o.OK || o.Reply != "standin proxy 16443" {
			t.Errorf("%s: %+v", route, o)
		}
		if o := res.Must(t, mapped); o.Errno != "EAFNOSUPPORT" && (!o.OK || o.Reply != "standin proxy 15001" || o.Remote != "[::ffff:"+px+"]:15001") {
			t.Errorf("%s: %+v", mapped, o)
		}

		o = res.Must(t, dnsUDP)
		if !o.OK || !reflect.DeepEqual(o.Answers, answer) || o.Remote != dn+":53" || o.RCode != 0 {
			t.Errorf("%s: %+v", dnsUDP, o)
		}
		r = dns.WaitRecord(t, 10*time.Second, "the probe's query", func(r netprobe.Record) bool {
			return r.Event == "dns" && r.Proto == "udp" && r.PeerAddr().Port() == o.LocalAddr().Port()
		})
		if r.PeerIP() != p.IP || r.QName != netprobe.DefaultDNSName || r.QType != "A" || !reflect.DeepEqual(r.Answers, answer) || r.LocalPort != 53 {
			t.Errorf("record %+v of outcome %+v", r, o)
		}
		o = res.Must(t, dnsNamed)
		if !o.OK || !o.Connected || !reflect.DeepEqual(o.Answers, answer) {
			t.Errorf("%s: %+v", dnsNamed, o)
		}
		dns.WaitRecord(t, 10*time.Second, "the named query", func(r netprobe.Record) bool {
			return r.QName == "example.test" && r.PeerIP() == p.IP
		})
		o = res.Must(t, dnsTCP)
		if !o.OK || !reflect.DeepEqual(o.Answers, answer) || o.Remote != dn+":53" {
			t.Errorf("%s: %+v", dnsTCP, o)
		}
		dns.WaitRecord(t, 10*time.Second, "the query over TCP", func(r netprobe.Record) bool {
			return r.Event == "dns" && r.Proto == "tcp" && r.Peer == o.Local
		})
		if o := res.Must(t, notDNS); !o.OK || o.Reply != "standin dns 53" {
			t.Errorf("%s: %+v", notDNS, o)
		}

		// Failures, reported by errno: a live host without a listener
		// refuses; an address nobody holds does not answer at all.
		if o := res.Must(t, refused); o.OK || o.Connected || o.Errno != "ECONNREFUSED" || o.Syscall != "connect" {
			t.Errorf("%s: %+v", refused, o)
		}
		if o := res.Must(t, nobody); o.OK || o.Connected || o.Errno != "ETIMEDOUT" || !o.Timeout || o.Syscall != "connect" || o.Millis < 900 {
			t.Errorf("%s: %+v", nobody, o)
		}
		if o := res.Must(t, udpRefused); o.OK || o.Errno != "ECONNREFUSED" || o.Syscall != "recvfrom" {
			t.Errorf("%s: %+v", udpRefused, o)
		}
		// Docker's default capabilities hold CAP_NET_RAW.
		if o := res.Must(t, raw); !o.OK {
			t.Errorf("%s: %+v", raw, o)
		}
		o = res.Must(t, asNobody)
		if !o.OK || o.UID != 65534 || o.GID != 65534 || o.Reply != "standin proxy 15001" {
			t.Errorf("%s: %+v", asNobody, o)
		}
		proxy.WaitRecord(t, 10*time.Second, "the connection made as uid 65534", SentBy(o))
		// An IPv6 connect is attempted on an AF_INET6 socket and fails by
		// errno (refused, or no IPv6 in the container).
		if o := res.Must(t, v6); o.OK || o.Errno == "" || o.Syscall != "connect" {
			t.Errorf("%s: %+v", v6, o)
		}
	})

	// Like an agent: not root, no capabilities.
	t.Run("unprivileged", func(t *testing.T) {
		t.Parallel()
		tcp := "tcp:" + px + ":15001"
		asRoot := tcp + ",uid=0"
		_, res := n.RunProbe(t, ProbeSpec{Args: []string{tcp, "socket:raw", "socket:ping", asRoot}, User: "65534:65534", CapDrop: []string{"ALL"}})
		t.Logf("unprivileged probe:\n%s", res.Stdout)
		if o := res.Must(t, tcp); !o.OK || o.UID != 65534 || o.Reply != "standin proxy 15001" {
			t.Errorf("%s: %+v", tcp, o)
		}
		if o := res.Must(t, "socket:raw"); o.OK || o.Errno != "EPERM" || o.Syscall != "socket" {
			t.Errorf("socket:raw: %+v", o)
		}
		// A ping socket needs no capability: Docker opens
		// net.ipv4.ping_group_range to every group. A firewall test that
		// expects sock_create to deny it relies on this baseline.
		if o := res.Must(t, "socket:ping"); !o.OK {
			t.Errorf("socket:ping: %+v", o)
		}
		if o := res.Must(t, asRoot); o.OK || o.Errno != "EPERM" || o.Syscall != "setuid" {
			t.Errorf("%s: %+v", asRoot, o)
		}
	})

	// -loop until told to stop: by a stop file, or by SIGTERM.
	t.Run("loop", func(t *testing.T) {
		t.Parallel()
		tcp := "tcp:" + px + ":15001"
		p := n.StartProbe(t, ProbeSpec{Args: []string{"-loop", "-interval", "50ms", "-stop-file", "/stop", tcp, "dns:" + dn}})
		p.WaitOutcomes(t, 30*time.Second, "three rounds", func(outs []netprobe.Outcome) bool { return len(outs) >= 6 })
		p.Touch(t, "/stop")
		res := p.Wait(t, 30*time.Second)
		if res.Done.Reason != "stop-file" || res.ExitCode != 0 {
			t.Fatalf("loop ended with %+v, exit %d", res.Done, res.ExitCode)
		}
		for i, o := range res.Outcomes {
			if !o.OK || o.Seq != int64(i+1) || o.Round != i/2+1 {
				t.Errorf("outcome %d: %+v", i, o)
			}
		}
		seen := map[string]bool{}
		for _, r := range proxy.Records(t) {
			if r.PeerIP() == p.IP {
				seen[r.Data] = true
			}
		}
		for _, o := range res.Outcomes {
			if o.Kind == "tcp" && !seen[o.Sent] {
				t.Errorf("the proxy stand-in did not record %q", o.Sent)
			}
		}

		hold := n.StartProbe(t, ProbeSpec{Args: []string{"-hold"}})
		ex := ExecProbe(t, d, hold.ID, "65534", "dns:"+dn, tcp)
		if ex.ExitCode != 0 || ex.Done.Reason != "end" || len(ex.Outcomes) != 2 {
			t.Fatalf("exec'd probe: %+v", ex)
		}
		for _, o := range ex.Outcomes {
			if !o.OK || o.UID != 65534 || o.LocalAddr().Addr().IsValid() && o.Kind == "tcp" && o.LocalAddr().Addr() != hold.IP {
				t.Errorf("exec'd %s: %+v", o.What, o)
			}
		}
		hold.Stop(t)
		if res := hold.Wait(t, 30*time.Second); res.Done.Reason != "signal" || res.ExitCode != 0 || len(res.Outcomes) != 0 {
			t.Errorf("held probe after SIGTERM: %+v", res)
		}
	})
}

// checkTestNetwork checks what NewTestNet promises of the network.
func checkTestNetwork(t *testing.T, d *docker.Client, n *TestNet) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), DockerCallTimeout)
	defer cancel()
	res, err := d.NetworkInspect(ctx, n.ID, docker.NetworkInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nw := res.Network
	if nw.Labels[LabelTest] != n.RunID || !nw.Internal || len(nw.IPAM.Config) != 1 {
		t.Fatalf("network %s: labels %v, internal %v, IPAM %+v", n.Name, nw.Labels, nw.Internal, nw.IPAM.Config)
	}
	c := nw.IPAM.Config[0]
	if c.Subnet != n.Subnet || n.Subnet.Bits() != 24 || !TestNetPool.Contains(n.Subnet.Addr()) || c.Gateway != n.Addr(1) {
		t.Errorf("IPAM %+v for %+v", c, n)
	}
	for _, o := range []int{ProxyOctet, DNSOctet, CPOctet} {
		if !c.IPRange.IsValid() || c.IPRange.Contains(n.Addr(byte(o))) {
			t.Errorf("dynamic range %v holds .%d", c.IPRange, o)
		}
	}
	all, err := d.NetworkList(ctx, docker.NetworkListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, other := range all.Items {
		for _, oc := range other.IPAM.Config {
			if other.ID != n.ID && oc.Subnet.IsValid() && oc.Subnet.Overlaps(n.Subnet) {
				t.Errorf("network %s (%v) overlaps %s", other.Name, oc.Subnet, n.Subnet)
			}
		}
	}
	if slices.ContainsFunc(hostRoutes(), func(p netip.Prefix) bool { return p.Overlaps(n.Subnet) && p != n.Subnet }) {
		t.Errorf("a host route overlaps %s: %v", n.Subnet, hostRoutes())
	}
}

func TestParseProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"00000000:0035":                         "0.0.0.0:53",
		"CA0012AC:1D11":                         "172.18.0.202:7441",
		"00000000000000000000000000000000:01BB": "[::]:443",
		"0000000000000000FFFF00000100007F:0050": "[::ffff:127.0.0.1]:80",
		"B80D0120000000000000000001000000:0016": "[2001:db8::1]:22",
	} {
		got, err := parseProcAddr(in)
		if err != nil || got.String() != want {
			t.Errorf("parseProcAddr(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0100007F", "zz00007F:0050", "0100007F:zz", "01007F:0050"} {
		if _, err := parseProcAddr(bad); err == nil {
			t.Errorf("parseProcAddr(%q): no error", bad)
		}
	}
}

// TestNetnsListeners finds a listener this test opens, in its own
// namespace, with its exact address and protocol.
func TestNetnsListeners(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer pc.Close()
	ls, err := NetnsListeners(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{
		"tcp " + ln.Addr().String():      false,
		"udp " + pc.LocalAddr().String(): false,
	}
	for _, l := range ls {
		if _, ok := want[l.String()]; ok {
			want[l.String()] = true
			if !l.Loopback() {
				t.Errorf("%s: not loopback", l)
			}
		}
	}
	for k, seen := range want {
		if !seen {
			t.Errorf("%s not listed in %v", k, ls)
		}
	}
}
