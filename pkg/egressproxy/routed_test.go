package egressproxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// The routed listeners bind fixed ports (egressrules.RouteListenerFirst..),
// so each test binds them on a loopback address of its own.

// routedWorld is the loopback world with the dedicated listeners on at
// host.
func routedWorld(t testing.TB, host string) *world {
	t.Helper()
	w := newWorld(t)
	if err := w.proxy.ListenRoutesBeside(host+":15001", host+":15002"); err != nil {
		t.Fatal(err)
	}
	return w
}

// bannerServer speaks first, like an ssh server: a banner line, then it
// echoes every line it is sent prefixed with its name.
func bannerServer(t testing.TB, name string) *countingListener {
	return rawServer(t, func(c net.Conn) {
		io.WriteString(c, "SSH-2.0-"+name+"\r\n")
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(c, name+" got "+line)
		}
	})
}

// listenerFor is the dedicated listener of (rule id, port) the proxy opened.
func listenerFor(t testing.TB, w *world, host string, id uint32, port uint16) string {
	t.Helper()
	for lp, l := range w.proxy.RouteListeners() {
		if l.RuleID == id && l.Port == port {
			return net.JoinHostPort(host, strconv.Itoa(int(lp)))
		}
	}
	t.Fatalf("no listener for rule %d port %d among %v", id, port, w.proxy.RouteListeners())
	return ""
}

// sshLike connects to addr, reads the banner, sends one line and reads the
// answer.
func sshLike(addr string) (banner, answer string, err error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	br := bufio.NewReader(c)
	if banner, err = br.ReadString('\n'); err != nil {
		return "", "", err
	}
	if _, err = io.WriteString(c, "hello\n"); err != nil {
		return banner, "", err
	}
	answer, err = br.ReadString('\n')
	return banner, answer, err
}

func tcpRule(name string, lo, hi uint16) egressrules.Rule {
	return egressrules.Rule{Dst: name, Proto: egressrules.TCP, Port: egressrules.PortRange{Lo: lo, Hi: hi}}
}

func TestRoutedTCPListenerReachesItsRulesHostOnTheAgentsPort(t *testing.T) {
	const host = "127.0.0.61"
	w := routedWorld(t, host)
	git := bannerServer(t, "git")
	w.host("git.test", 2222, git.Addr().String())
	other := bannerServer(t, "other")
	w.host("other.test", 2222, other.Addr().String())
	w.setPolicy(loopback,
		egressrules.Rule{Dst: "git.test", Proto: egressrules.SSH, Port: egressrules.Port(2222)}, // 1
		httpsRule("other.test"), // 2: resolvable, no tcp rule
	)
	addr := listenerFor(t, w, host, 1, 2222)
	banner, answer, err := sshLike(addr)
	if err != nil || banner != "SSH-2.0-git\r\n" || answer != "git got hello\n" {
		t.Fatalf("through the ssh listener: %q %q %v", banner, answer, err)
	}
	l := w.waitLog(func(l logLine) bool { return l.Proto == "ssh" })
	if l.Verdict != "allowed" || l.Host != "git.test" || !strings.HasSuffix(l.Upstream, ":2222") || l.Rule != "git.test:ssh:2222" {
		t.Errorf("access log %+v", l)
	}
	if n := len(w.proxy.RouteListeners()); n != 1 {
		t.Errorf("%d listeners, want 1 (the https rule on 443 stays on the catch-all)", n)
	}
	if other.accepts.Load() != 0 {
		t.Errorf("the other name's server was reached")
	}
}

func TestRoutedListenerFollowsThePolicy(t *testing.T) {
	const host = "127.0.0.62"
	w := routedWorld(t, host)
	git := bannerServer(t, "git")
	w.host("git.test", 2222, git.Addr().String())
	allow := tcpRule("git.test", 2222, 2222)
	w.setPolicy(loopback, allow)
	addr := listenerFor(t, w, host, 1, 2222)

	// A live connection, then a more specific deny of the same dst:
	// refused at accept, and the live one reset.
	live, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	br := bufio.NewReader(live)
	live.SetDeadline(time.Now().Add(3 * time.Second))
	if b, err := br.ReadString('\n'); err != nil || b != "SSH-2.0-git\r\n" {
		t.Fatalf("banner %q %v", b, err)
	}
	w.setPolicy(loopback, allow, egressrules.Rule{Dst: "git.test", Proto: egressrules.TCP, Port: egressrules.PortRange{Lo: 2000, Hi: 2999}, Action: egressrules.Deny})
	if addr2 := listenerFor(t, w, host, 1, 2222); addr2 != addr {
		t.Errorf("listener moved from %s to %s on an unrelated change", addr, addr2)
	}
	if _, err := io.ReadAll(br); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("live connection after the deny: %v, want a reset", err)
	}
	accepts := git.accepts.Load()
	if _, _, err := sshLike(addr); err == nil {
		t.Errorf("a new connection passed the deny")
	}
	if git.accepts.Load() != accepts {
		t.Errorf("the server was reached after the deny")
	}
	w.waitLog(func(l logLine) bool {
		return l.Verdict == "denied" && strings.Contains(l.Reason, "denied by git.test:tcp:2000-2999")
	})

	// The rule removed: its listener closes.
	w.setPolicy(loopback, httpsRule("git.test"))
	if n := len(w.proxy.RouteListeners()); n != 0 {
		t.Fatalf("%d listeners after the rule's removal", n)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("the removed rule's listener still accepts")
	}
}

func TestRoutedRangeListenerPerPort(t *testing.T) {
	const host = "127.0.0.63"
	w := routedWorld(t, host)
	for p := uint16(7000); p <= 7002; p++ {
		srv := bannerServer(t, "port"+strconv.Itoa(int(p)))
		w.host("range.test", p, srv.Addr().String())
	}
	w.setPolicy(loopback, tcpRule("range.test", 7000, 7002))
	if n := len(w.proxy.RouteListeners()); n != 3 {
		t.Fatalf("%d listeners, want one per port of the range", n)
	}
	for p := uint16(7000); p <= 7002; p++ {
		banner, _, err := sshLike(listenerFor(t, w, host, 1, p))
		if want := "SSH-2.0-port" + strconv.Itoa(int(p)) + "\r\n"; err != nil || banner != want {
			t.Errorf("port %d: %q %v, want %q", p, banner, err, want)
		}
	}
}

func TestRoutedHTTPSListenerDecidesTheSNIOnItsPort(t *testing.T) {
	const host = "127.0.0.64"
	w := routedWorld(t, host)
	cert := w.ca.leaf(t, "api.tls.test")
	srv := rawServer(t, func(c net.Conn) {
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		if tc.Handshake() == nil {
			io.WriteString(tc, "hello from 8443\n")
		}
	})
	w.host("api.tls.test", 8443, srv.Addr().String())
	w.host("other.test", 8443, srv.Addr().String())
	w.setPolicy(loopback, egressrules.Rule{Dst: ".tls.test", Proto: egressrules.HTTPS, Port: egressrules.Port(8443)}, httpsRule("other.test"))
	addr := listenerFor(t, w, host, 1, 8443)

	dial := func(sni string) (string, error) {
		raw, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return "", err
		}
		defer raw.Close()
		raw.SetDeadline(time.Now().Add(3 * time.Second))
		tc := tls.Client(raw, &tls.Config{ServerName: sni, RootCAs: w.ca.pool})
		if err := tc.Handshake(); err != nil {
			return "", err
		}
		return bufio.NewReader(tc).ReadString('\n')
	}
	if got, err := dial("api.tls.test"); err != nil || got != "hello from 8443\n" {
		t.Fatalf("api.tls.test:8443 through its listener: %q %v (the server's own certificate must verify)", got, err)
	}
	// other.test is allowed on 443 only: not on this listener's port.
	accepts := srv.accepts.Load()
	if _, err := dial("other.test"); err == nil {
		t.Errorf("other.test passed the 8443 listener")
	}
	if srv.accepts.Load() != accepts {
		t.Errorf("the server was reached for other.test")
	}
	w.waitLog(func(l logLine) bool {
		return l.Verdict == "denied" && l.Host == "other.test" && strings.Contains(l.Reason, "https/8443")
	})

	// Path rules are enforced by inspection, which this listener does not
	// do: the name is refused here rather than passed through unchecked.
	w.setPolicy(loopback, egressrules.Rule{Dst: ".tls.test", Proto: egressrules.HTTPS, Port: egressrules.Port(8443),
		PathRules: []egressrules.PathRule{{Path: "/v1/"}}})
	addr = listenerFor(t, w, host, 1, 8443)
	accepts = srv.accepts.Load()
	if _, err := dial("api.tls.test"); err == nil {
		t.Errorf("a name with path rules passed the 8443 listener uninspected")
	}
	if srv.accepts.Load() != accepts {
		t.Errorf("the server was reached for a name with path rules")
	}
	w.waitLog(func(l logLine) bool { return l.Verdict == "denied" && strings.Contains(l.Reason, "port 443 only") })
}

// BenchmarkRoutedConnect: a fresh connection to an ssh-like server (its
// banner read) through the name's dedicated listener, against the same
// connection made to the server directly. The routed one adds the DNS
// lookup (a fake resolver here), the floor check, the upstream dial and the
// splice goroutines.
func BenchmarkRoutedConnect(b *testing.B) {
	const host = "127.0.0.65"
	w := routedWorld(b, host)
	srv := rawServer(b, func(c net.Conn) {
		io.WriteString(c, "SSH-2.0-bench\r\n")
		io.Copy(io.Discard, c)
	})
	w.host("git.test", 2222, srv.Addr().String())
	w.setPolicy(loopback, tcpRule("git.test", 2222, 2222))
	routed := listenerFor(b, w, host, 1, 2222)
	connect := func(b *testing.B, addr string) {
		buf := make([]byte, 64)
		for b.Loop() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Read(buf); err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	}
	b.Run("direct", func(b *testing.B) { connect(b, srv.Addr().String()) })
	b.Run("routed", func(b *testing.B) { connect(b, routed) })
}
