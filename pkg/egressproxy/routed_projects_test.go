package egressproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// sshLikeFrom is sshLike from the loopback source src, as an agent at that
// address would connect.
func sshLikeFrom(src, addr string) (banner, answer string, err error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr)
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

// The kernel's routes to a dedicated listener are global, so agents of
// every project may reach it: the listener decides each connection by its
// source address's project (sources 127.0.0.2 alpha, 127.0.0.3 beta), and
// re-decides live ones on a swap by the same.
func TestRoutedListenerDecidesBySourceProject(t *testing.T) {
	const host = "127.0.0.67"
	w := routedWorld(t, host)
	servers := map[string]*countingListener{}
	for _, n := range []string{"alpha.test", "beta.test", "shared.test"} {
		servers[n] = bannerServer(t, n)
	}
	w.host("alpha.test", 2222, servers["alpha.test"].Addr().String())
	w.host("beta.test", 2222, servers["beta.test"].Addr().String())
	w.host("shared.test", 2300, servers["shared.test"].Addr().String())
	alphaRule := egressrules.Rule{Dst: "alpha.test", Proto: egressrules.TCP, Port: egressrules.Port(2222), Projects: []string{"alpha"}}
	entries := []egressrules.Entry{
		{ID: 1, Rule: alphaRule},
		{ID: 2, Rule: egressrules.Rule{Dst: "beta.test", Proto: egressrules.SSH, Port: egressrules.Port(2222), Projects: []string{"beta"}}},
		{ID: 3, Rule: tcpRule("shared.test", 2300, 2300)},
	}
	agents := map[string]string{"127.0.0.2": "alpha", "127.0.0.3": "beta"}
	w.setProjectsPolicy(agents, entries...)
	lAlpha, lBeta, lShared := listenerFor(t, w, host, 1, 2222), listenerFor(t, w, host, 2, 2222), listenerFor(t, w, host, 3, 2300)

	cases := []struct {
		src, listener, name string
		allow               bool
	}{
		{"127.0.0.2", lAlpha, "alpha.test", true},
		{"127.0.0.3", lAlpha, "alpha.test", false},
		{"127.0.0.1", lAlpha, "alpha.test", false}, // no project: the global rules
		{"127.0.0.3", lBeta, "beta.test", true},
		{"127.0.0.2", lBeta, "beta.test", false},
		{"127.0.0.2", lShared, "shared.test", true},
		{"127.0.0.3", lShared, "shared.test", true},
		{"127.0.0.1", lShared, "shared.test", true},
	}
	for _, c := range cases {
		before := servers[c.name].accepts.Load()
		banner, answer, err := sshLikeFrom(c.src, c.listener)
		if c.allow {
			if err != nil || banner != "SSH-2.0-"+c.name+"\r\n" || answer != c.name+" got hello\n" {
				t.Errorf("%s -> %s listener: %q %q %v", c.src, c.name, banner, answer, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s -> %s listener: passed (%q), want refused", c.src, c.name, banner)
		}
		if servers[c.name].accepts.Load() != before {
			t.Errorf("%s -> %s listener: the server was reached", c.src, c.name)
		}
	}
	l := w.waitLog(func(l logLine) bool {
		return l.Proto == "tcp" && l.Host == "alpha.test" && strings.HasPrefix(l.Src, "127.0.0.3:")
	})
	if l.Verdict != "denied" || !strings.Contains(l.Reason, "no rule allows alpha.test on tcp/2222") {
		t.Errorf("log of beta's refusal on alpha's listener: %+v", l)
	}

	// alpha's live connection survives a swap keeping its rule and is
	// reset by one moving the rule to beta; the listener does not move,
	// and beta now passes on it.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 2 * time.Second}
	live, err := d.Dial("tcp", lAlpha)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	live.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(live)
	if b, err := br.ReadString('\n'); err != nil || b != "SSH-2.0-alpha.test\r\n" {
		t.Fatalf("banner %q %v", b, err)
	}
	w.setProjectsPolicy(agents, entries...)
	io.WriteString(live, "hello\n")
	if got, err := br.ReadString('\n'); err != nil || got != "alpha.test got hello\n" {
		t.Fatalf("after a swap keeping the rule: %q %v", got, err)
	}
	moved := append([]egressrules.Entry(nil), entries...)
	moved[0].Rule.Projects = []string{"beta"}
	w.setProjectsPolicy(agents, moved...)
	if _, err := io.ReadAll(br); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("alpha's live connection after its rule moved to beta: %v, want a reset", err)
	}
	if now := listenerFor(t, w, host, 1, 2222); now != lAlpha {
		t.Errorf("the rule's listener moved from %s to %s when its projects changed", lAlpha, now)
	}
	if _, _, err := sshLikeFrom("127.0.0.2", lAlpha); err == nil {
		t.Errorf("alpha passed after its rule moved to beta")
	}
	if banner, _, err := sshLikeFrom("127.0.0.3", lAlpha); err != nil || banner != "SSH-2.0-alpha.test\r\n" {
		t.Errorf("beta after the rule moved to it: %q %v", banner, err)
	}
}
