package main_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/cptest/netprobe"
	"github.com/clawker/clawker-cp/pkg/egressrules"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// Routed rules end to end: the real stack rig (CP, DNS and proxy siblings,
// the test's internet on the gateway) with ssh-like servers on the gateway
// at ports other than 443. An agent reaches them by name: its DNS answer
// gives the address the name's identity in the kernel, whose route for
// (identity, port) sends the connect to the proxy's dedicated listener for
// that rule and port, which dials the name on that port.

// bannerServers speak first, like ssh: "SSH-2.0-clawkertest-<port>", then
// they record each line they are sent.
type bannerServers struct {
	mu      sync.Mutex
	accepts map[uint16]int
	lines   map[uint16][]string
}

func (b *bannerServers) accepted(port uint16) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.accepts[port]
}

func (b *bannerServers) got(port uint16) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.lines[port]...)
}

func startBannerServers(t testing.TB, ip netip.Addr, ports ...uint16) *bannerServers {
	t.Helper()
	b := &bannerServers{accepts: map[uint16]int{}, lines: map[uint16][]string{}}
	for _, port := range ports {
		ln, err := net.Listen("tcp4", netip.AddrPortFrom(ip, port).String())
		if err != nil {
			t.Fatalf("listening on %s:%d: %v", ip, port, err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				b.mu.Lock()
				b.accepts[port]++
				b.mu.Unlock()
				go func() {
					defer c.Close()
					c.SetDeadline(time.Now().Add(30 * time.Second))
					fmt.Fprintf(c, "SSH-2.0-clawkertest-%d\r\n", port)
					br := bufio.NewReader(c)
					for {
						line, err := br.ReadString('\n')
						if err != nil {
							return
						}
						b.mu.Lock()
						b.lines[port] = append(b.lines[port], strings.TrimSpace(line))
						b.mu.Unlock()
						io.WriteString(c, "ok\r\n")
					}
				}()
			}
		}()
	}
	return b
}

func banner(port uint16) string { return fmt.Sprintf("SSH-2.0-clawkertest-%d", port) }

// probe runs attempts in one exec (so a dns attempt's answer is in the
// kernel before the connects that follow) and returns their outcomes.
func (r *stackRig) probe(t testing.TB, attempts ...string) map[string]netprobe.Outcome {
	t.Helper()
	res := cptest.ExecProbe(t, r.d, r.agent.ID, "", append([]string{"-timeout", "5s"}, attempts...)...)
	out := map[string]netprobe.Outcome{}
	for _, a := range attempts {
		out[a] = res.Must(t, a)
	}
	return out
}

func TestFirewallStackRoutedRulesEndToEnd(t *testing.T) {
	r := newStackRig(t)
	gw := r.net.Gateway
	// ssh.test is served on the gateway; other.test resolves (it has an
	// https rule) to a TEST-NET address no one serves: the kernel decides
	// by address, so the other name needs its own.
	otherIP := netip.MustParseAddr("198.51.100.7")
	r.world.auth.Set("ssh.test", gw)
	r.world.auth.Set("other.test", otherIP)
	srv := startBannerServers(t, gw, 2222, 2300, 2301, 2302, 2303)
	// HTTPS on 8443 for the same name (a name's rules share its identity).
	cert, certFP := testServerCert(t, []string{"ssh.test"})
	tlsLn, err := net.Listen("tcp4", netip.AddrPortFrom(gw, 8443).String())
	if err != nil {
		t.Fatal(err)
	}
	tlsSrv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(rw, "hello on 8443 from %s\n", r.Host)
	}), TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	go func() { _ = tlsSrv.ServeTLS(tlsLn, "", "") }()
	t.Cleanup(func() { tlsSrv.Close() })

	r.addRules(t,
		&adminv1.EgressRule{Dst: "ssh.test", Proto: "ssh", Port: "2222"},
		&adminv1.EgressRule{Dst: "ssh.test", Proto: "tcp", Port: "2300-2302"},
		&adminv1.EgressRule{Dst: "other.test"},
		&adminv1.EgressRule{Dst: "ssh.test", Port: "8443"},
	)
	// 1 ssh port + 3 range ports + 1 https port, under ssh.test's lowest id.
	cptest.WaitFor(t, 10*time.Second, "the rules' routes in the kernel", func() (bool, string) {
		n := r.status(t).GetRouteCount()
		return n == 5, fmt.Sprintf("%d routes", n)
	})
	t.Run("the proxy listens on one dedicated port per routed rule and port", func(t *testing.T) {
		var proxyID string
		for _, m := range r.status(t).GetStack() {
			if ap, err := netip.ParseAddrPort(m.GetAddress()); err == nil && ap.Port() == proxyPort {
				proxyID = m.GetContainerId()
			}
		}
		if proxyID == "" {
			t.Fatalf("no proxy member in %v", r.status(t).GetStack())
		}
		cptest.WaitFor(t, 5*time.Second, "5 route listeners in the proxy", func() (bool, string) {
			var routed []string
			for _, l := range cptest.ContainerListeners(t, r.d, proxyID) {
				if p := l.Addr.Port(); l.Proto == "tcp" && p >= egressrules.RouteListenerFirst && p < egressrules.RouteListenerFirst+egressrules.RouteListenerCount {
					if !l.Addr.Addr().IsUnspecified() {
						return false, "bound to " + l.String()
					}
					routed = append(routed, l.String())
				}
			}
			return len(routed) == 5, fmt.Sprint(routed)
		})
	})
	t.Run("a range too large for its listeners is refused naming the port", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := r.admin.FirewallAddRules(ctx, &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{
			{Dst: "big.test", Proto: "tcp", Port: "3000-3016"},
		}})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `port "3000-3016"`) || !strings.Contains(err.Error(), "at most 16") {
			t.Fatalf("FirewallAddRules of a 17-port tcp range: %v, want InvalidArgument naming the port and the limit", err)
		}
	})
	r.startAgent(t)
	dnsIP := r.net.DNSIP().String()

	t.Run("before the name is resolved the address is not routed", func(t *testing.T) {
		o := r.try(t, fmt.Sprintf("tcp:%s:2222", gw))
		if o.OK && o.Reply == banner(2222) {
			t.Fatalf("tcp %s:2222 without a DNS answer reached the server: %+v", gw, o)
		}
		t.Logf("refused: %s %s", o.Syscall, o.Error)
		if n := srv.accepted(2222); n != 0 {
			t.Errorf("the server accepted %d connections", n)
		}
	})
	t.Run("ssh-like server on 2222 reached by name", func(t *testing.T) {
		resolve := "dns:" + dnsIP + ",name=ssh.test"
		connect := fmt.Sprintf("tcp:%s:2222,send=hello-2222", gw)
		out := r.probe(t, resolve, connect)
		if d := out[resolve]; !d.OK || len(d.Answers) != 1 || d.Answers[0] != gw.String() {
			t.Fatalf("dns ssh.test: %+v, want %s", d, gw)
		}
		if o := out[connect]; !o.OK || strings.TrimSpace(o.Reply) != banner(2222) {
			t.Fatalf("tcp ssh.test:2222: %+v, want the banner %q", o, banner(2222))
		}
		cptest.WaitFor(t, 5*time.Second, "the agent's line at the server", func() (bool, string) {
			got := srv.got(2222)
			return len(got) == 1 && got[0] == "hello-2222", fmt.Sprint(got)
		})
	})
	t.Run("a port range: each port its own listener, a port outside refused", func(t *testing.T) {
		attempts := []string{"dns:" + dnsIP + ",name=ssh.test"}
		for p := 2300; p <= 2303; p++ {
			attempts = append(attempts, fmt.Sprintf("tcp:%s:%d", gw, p))
		}
		out := r.probe(t, attempts...)
		for p := uint16(2300); p <= 2302; p++ {
			if o := out[fmt.Sprintf("tcp:%s:%d", gw, p)]; !o.OK || strings.TrimSpace(o.Reply) != banner(p) {
				t.Errorf("tcp ssh.test:%d: %+v, want %q", p, o, banner(p))
			}
		}
		if o := out[fmt.Sprintf("tcp:%s:2303", gw)]; o.OK && strings.TrimSpace(o.Reply) == banner(2303) {
			t.Errorf("tcp ssh.test:2303 (no rule) reached the server: %+v", o)
		}
		if n := srv.accepted(2303); n != 0 {
			t.Errorf("the 2303 server accepted %d connections", n)
		}
	})
	t.Run("https on 8443 by name: the SNI decided on that port, the server's own certificate", func(t *testing.T) {
		o := r.try(t, "https:ssh.test:8443")
		if !o.OK || o.Status != 200 || o.Reply != "hello on 8443 from ssh.test:8443" {
			t.Fatalf("https ssh.test:8443: %+v", o)
		}
		if o.Cert != certFP {
			t.Errorf("certificate %s, want the server's own %s (no MITM)", o.Cert, certFP)
		}
	})
	// (No TLS attempt to other.test: the catch-all would dial its address
	// on 443, which is not the test's.)
	t.Run("the same port on another name that resolves is refused", func(t *testing.T) {
		resolve := "dns:" + dnsIP + ",name=other.test"
		connect := fmt.Sprintf("tcp:%s:2222", otherIP)
		out := r.probe(t, resolve, connect)
		if d := out[resolve]; !d.OK || len(d.Answers) != 1 || d.Answers[0] != otherIP.String() {
			t.Fatalf("dns other.test: %+v, want %s", d, otherIP)
		}
		o := out[connect]
		if o.OK && o.Reply != "" {
			t.Errorf("tcp other.test:2222: %+v, want refused (its rule is https only)", o)
		}
		t.Logf("refused: %s %s", o.Syscall, o.Error)
	})
	// The ssh rule has ssh.test's lowest id, the identity its address
	// carries: once it is removed the address takes the range rule's id
	// (the DNS owner forgets removed ids), under which the range's routes
	// now are.
	t.Run("removing the rule closes its route, the name's other rule still routes", func(t *testing.T) {
		before := srv.accepted(2222)
		r.removeRule(t, &adminv1.EgressRule{Dst: "ssh.test", Proto: "ssh", Port: "2222"})
		cptest.WaitFor(t, 10*time.Second, "the ssh route gone", func() (bool, string) {
			n := r.status(t).GetRouteCount()
			return n == 4, fmt.Sprintf("%d routes", n)
		})
		// No new DNS answer: the rewrite is the control plane's (it runs
		// beside the route sync, so it may land a moment after it).
		other := fmt.Sprintf("tcp:%s:2301", gw)
		cptest.WaitFor(t, 5*time.Second, "ssh.test:2301 routed under the range rule's id", func() (bool, string) {
			o := r.probe(t, other)[other]
			return o.OK && strings.TrimSpace(o.Reply) == banner(2301), fmt.Sprintf("%+v", o)
		})
		connect := fmt.Sprintf("tcp:%s:2222", gw)
		if o := r.probe(t, connect)[connect]; o.OK && strings.TrimSpace(o.Reply) == banner(2222) {
			t.Errorf("tcp ssh.test:2222 after its rule's removal: %+v", o)
		}
		if n := srv.accepted(2222) - before; n != 0 {
			t.Errorf("the server accepted %d connections after the removal", n)
		}
	})
}
