package main_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	docker "github.com/moby/moby/client"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/cptest/netprobe"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/settings"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// The firewall end to end: a clawker-cp process on the host, with the
// firewall enabled, a pin dir of its own and a test network as its agent
// network; stand-ins for the stack at .200 (proxy) and .201 (DNS); an
// "outside" host that is this test process listening on the network's
// gateway (which the programs treat like any address outside the subnet);
// and agent containers (labelled purpose=agent) whose attempts are made by
// exec, so they run inside the container's cgroup. No packet leaves for an
// address the test did not create: the network is internal, and every
// target is a stand-in, the gateway listener, or an address nobody holds.
// On the network an enforced agent reaches only the stack and the CP's two
// ports; TCP to the gateway goes to the proxy like any outside address,
// anything else to it is refused.
//
// These tests are not parallel: the CP enforces every purpose=agent
// container on the host, so it must not run beside tests with agents of
// their own.

const proxyPort = 15001

// farAddr is outside the test network and held by nobody (TEST-NET-2):
// only the proxy rewrite makes a TCP attempt there answer.
const farAddr = "198.51.100.7:443"

// broadcastOf is an IPv4 prefix's broadcast address.
func broadcastOf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= ^uint32(0) >> p.Bits()
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// outsideHost is a TCP and UDP listener on the gateway that answers with a
// line and records who reached it.
type outsideHost struct {
	tcp   net.Listener
	udp   net.PacketConn
	mu    sync.Mutex
	peers []netip.Addr
}

func listenOutside(t *testing.T, ip netip.Addr) *outsideHost {
	t.Helper()
	ln, err := net.Listen("tcp4", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		t.Fatalf("listening on the gateway %s: %v", ip, err)
	}
	pc, err := net.ListenPacket("udp4", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	h := &outsideHost{tcp: ln, udp: pc}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.record(c.RemoteAddr())
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_, _ = bufio.NewReader(c).ReadString('\n')
				fmt.Fprintln(c, "outside host")
			}()
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			h.record(from)
			_, _ = pc.WriteTo([]byte("outside host\n"), from)
		}
	}()
	return h
}

func (h *outsideHost) record(a net.Addr) {
	ap, _ := netip.ParseAddrPort(a.String())
	h.mu.Lock()
	h.peers = append(h.peers, ap.Addr().Unmap())
	h.mu.Unlock()
}

// reachedBy counts the connections and datagrams from ip.
func (h *outsideHost) reachedBy(ip netip.Addr) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, p := range h.peers {
		if p == ip {
			n++
		}
	}
	return n
}

// reached counts every connection and datagram, from anywhere.
func (h *outsideHost) reached() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.peers)
}

func (h *outsideHost) tcpTarget() string { return "tcp:" + h.tcp.Addr().String() }
func (h *outsideHost) udpTarget() string { return "udp:" + h.udp.LocalAddr().String() }

type fwRig struct {
	d       *docker.Client
	net     *cptest.TestNet
	proxy   *cptest.StandinContainer
	dns     *cptest.StandinContainer
	outside *outsideHost
	home    *cptest.Home
	bin     string
	pinDir  string
	cp      *cptest.Process
}

var agentLabels = map[string]string{
	dockerx.LabelManaged: "true", dockerx.LabelPurpose: dockerx.PurposeAgent,
	dockerx.LabelProject: "fwtest", dockerx.LabelAgent: "probe",
}

func newFWRig(t *testing.T) *fwRig {
	t.Helper()
	d := cptest.RequireDocker(t)
	r := &fwRig{d: d, bin: cpBinary(t), pinDir: cptest.TestPinDir(t)}
	r.net = cptest.NewTestNet(t, d, cptest.NewRunID(), cptest.TestNetOptions{})
	r.proxy, r.dns = r.net.StartFirewallStandins(t, proxyPort)
	r.outside = listenOutside(t, r.net.Gateway)
	r.home = cptest.NewCPHome(t, fmt.Sprintf("firewall: {enable: true, proxy_port: %d}\ncontrol_plane: {watcher: {enable: false}}\n", proxyPort))
	r.startCP(t)
	return r
}

func (r *fwRig) startCP(t *testing.T) {
	t.Helper()
	r.cp = cptest.StartCP(t, r.home, r.bin, "CLAWKER_CP_DEBUG_PIN_DIR="+r.pinDir, "CLAWKER_CP_DEBUG_NETWORK="+r.net.Name,
		"CLAWKER_CP_DEBUG_FAULTS=1", "CLAWKER_CP_ORY_DIR="+cptest.OryDir(t))
	r.cp.WaitHealthy(t, healthyTimeout)
}

func (r *fwRig) admin(t *testing.T) *adminclient.Client {
	t.Helper()
	s, err := settings.Load(r.home.SettingsFile(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := adminclient.Dial(ctx, r.home.Paths(t), s, adminclient.WithOAuth())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// enforcedCgroup waits until the CP reports the container enforced on a
// cgroup other than notOn, and returns that cgroup id.
func (r *fwRig) enforcedCgroup(t *testing.T, c *adminclient.Client, containerID string, notOn uint64) uint64 {
	t.Helper()
	var cgid uint64
	cptest.WaitFor(t, 30*time.Second, "container "+containerID[:12]+" enforced", func() (bool, string) {
		enforced, err := enforcedAgents(c)
		if err != nil {
			return false, err.Error()
		}
		if id, ok := enforced[containerID]; ok && id != notOn {
			cgid = id
			return true, ""
		}
		return false, fmt.Sprintf("%d agents enforced", len(enforced))
	})
	return cgid
}

// enforcedAgents is the CP's FirewallStatus as container id -> cgroup id.
func enforcedAgents(c *adminclient.Client) (map[string]uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.FirewallStatus(ctx, &adminv1.FirewallStatusRequest{})
	if err != nil {
		return nil, err
	}
	out := make(map[string]uint64, len(st.GetAgents()))
	for _, a := range st.GetAgents() {
		out[a.GetContainerId()] = a.GetCgroupId()
	}
	return out, nil
}

// hold starts a long-running container on the rig's network.
func (r *fwRig) hold(t *testing.T, labels map[string]string) *cptest.ProbeContainer {
	t.Helper()
	return r.net.StartProbe(t, cptest.ProbeSpec{Args: []string{"-hold"}, Labels: labels})
}

func (r *fwRig) exec(t *testing.T, c *cptest.ProbeContainer, attempts ...string) cptest.ProbeResult {
	t.Helper()
	return cptest.ExecProbe(t, r.d, c.ID, "", append([]string{"-timeout", "2s"}, attempts...)...)
}

// redirectedToProxy: the TCP exchange worked and the proxy stand-in on
// its catch-all port answered.
func redirectedToProxy(o netprobe.Outcome) bool {
	return o.OK && o.Reply == netprobe.Banner("proxy", proxyPort)
}

func reachedOutside(o netprobe.Outcome) bool { return o.OK && o.Reply == "outside host" }

func denied(o netprobe.Outcome) bool { return !o.OK && o.Errno == "EPERM" }

func TestFirewallEnforcesAgentContainers(t *testing.T) {
	r := newFWRig(t)
	admin := r.admin(t)
	agent := r.hold(t, agentLabels)
	other := r.hold(t, map[string]string{dockerx.LabelManaged: "true", dockerx.LabelPurpose: "other"})
	cgid := r.enforcedCgroup(t, admin, agent.ID, 0)
	t.Logf("agent %s enforced on cgroup %d", agent.Name, cgid)

	r.net.StartStandin(t, r.net.Addr(150), netprobe.StandinConfig{Name: "peer", TCPPorts: []int{8080}})
	outTCP, outUDP := r.outside.tcpTarget(), r.outside.udpTarget()
	mappedTCP := fmt.Sprintf("tcp:[::ffff:%s]:%d", r.net.Gateway, r.outside.tcp.Addr().(*net.TCPAddr).Port)
	farTCP, mappedFar := "tcp:"+farAddr, "tcp:[::ffff:198.51.100.7]:443"
	s, err := settings.Load(r.home.SettingsFile(t))
	if err != nil {
		t.Fatal(err)
	}
	cp := r.net.CPIP()
	cpAgentPort := fmt.Sprintf("tcp:%s:%d,timeout=500ms", cp, s.ControlPlane.AgentPort)
	cpAdminPort := fmt.Sprintf("tcp:%s:%d", cp, s.ControlPlane.AdminPort)
	bcast := broadcastOf(r.net.Subnet)
	bcastUDP, bcastMapped := "udp:"+bcast.String()+":9999", "udp:[::ffff:"+bcast.String()+"]:9999"
	networkUDP := "udp:" + r.net.Subnet.Addr().String() + ":9999"
	limitedUDP, limitedMapped := "udp:255.255.255.255:9999", "udp:[::ffff:255.255.255.255]:9999"
	multicastUDP := "udp:224.0.0.251:5353"
	peerAgent := r.hold(t, map[string]string{
		dockerx.LabelManaged: "true", dockerx.LabelPurpose: dockerx.PurposeAgent,
		dockerx.LabelProject: "fwtest", dockerx.LabelAgent: "peer",
	})
	r.enforcedCgroup(t, admin, peerAgent.ID, 0)
	peerAgentTCP := "tcp:" + netip.AddrPortFrom(peerAgent.IP, 8080).String()
	peerAgentUDP := "udp:" + netip.AddrPortFrom(peerAgent.IP, 9999).String()
	dnsAny := "dns:" + r.net.Gateway.String() // a resolver nobody runs
	peerTCP := "tcp:" + netip.AddrPortFrom(r.net.Addr(150), 8080).String()
	v6 := "tcp:[fd00:c1a:c4e::1]:443"

	t.Run("decisions", func(t *testing.T) {
		res := r.exec(t, agent, outTCP, mappedTCP, outTCP+",uid=1000", farTCP, mappedFar, peerTCP, peerAgentTCP, peerAgentUDP,
			cpAgentPort, cpAdminPort, bcastUDP, bcastMapped, networkUDP, limitedUDP, limitedMapped, multicastUDP,
			dnsAny, outUDP, "socket:raw", v6, "tcp:127.0.0.1:9,noread")
		checks := []struct {
			what string
			ok   func(netprobe.Outcome) bool
			want string
		}{
			{outTCP, redirectedToProxy, "TCP outside rewritten to the proxy's catch-all"},
			{mappedTCP, redirectedToProxy, "IPv4-mapped IPv6 follows the IPv4 rules"},
			{outTCP + ",uid=1000", redirectedToProxy, "a non-root uid is enforced like root"},
			{farTCP, redirectedToProxy, "TCP to an address off the network rewritten to the proxy"},
			{mappedFar, redirectedToProxy, "the same over IPv4-mapped IPv6"},
			// Changed on purpose: subnet peers were reached directly.
			{peerTCP, denied, "another address on the agent network is refused"},
			{peerAgentTCP, denied, "another agent is refused over TCP (agent_to_agent: deny)"},
			{peerAgentUDP, denied, "another agent is refused over UDP"},
			{cpAgentPort, func(o netprobe.Outcome) bool { return o.Errno != "EPERM" }, "the CP's agent port passes (nobody holds .202 here: not EPERM)"},
			{cpAdminPort, denied, "any other CP port is refused"},
			{bcastUDP, denied, "the subnet broadcast is refused"},
			{bcastMapped, denied, "the subnet broadcast is refused over IPv4-mapped IPv6"},
			{networkUDP, denied, "the network address is refused"},
			{limitedUDP, denied, "255.255.255.255 is refused"},
			{limitedMapped, denied, "::ffff:255.255.255.255 is refused"},
			{multicastUDP, denied, "multicast is refused"},
			{dnsAny, func(o netprobe.Outcome) bool {
				return o.OK && len(o.Answers) == 1 && o.Answers[0] == netprobe.DefaultDNSAnswer.String() &&
					o.RemoteAddr().Addr() == r.net.Gateway // the reply looks like it came from where it was sent
			}, "DNS to any address answered by the DNS sibling"},
			{outUDP, denied, "UDP other than DNS without a route is denied"},
			{"socket:raw", denied, "raw sockets are denied"},
			{v6, denied, "native IPv6 is denied"},
			{"tcp:127.0.0.1:9,noread", func(o netprobe.Outcome) bool { return o.Errno == "ECONNREFUSED" }, "loopback passes (refused by nobody listening, not EPERM)"},
		}
		for _, c := range checks {
			o := res.Must(t, c.what)
			if !c.ok(o) {
				t.Errorf("%s: %s; got ok=%v errno=%s reply=%q answers=%v remote=%s", c.what, c.want, o.OK, o.Errno, o.Reply, o.Answers, o.Remote)
			}
		}
		if n := r.outside.reachedBy(agent.IP); n != 0 {
			t.Errorf("the outside host was reached %d times by the enforced agent", n)
		}
		// The proxy stand-in saw the agent itself, with its original line.
		o := res.Must(t, outTCP)
		rec := r.proxy.WaitRecord(t, 10*time.Second, "the redirected connection", cptest.SentBy(o))
		if rec.PeerIP() != agent.IP {
			t.Errorf("proxy saw peer %s, want the agent %s", rec.PeerIP(), agent.IP)
		}
		r.dns.WaitRecord(t, 10*time.Second, "the redirected query", func(rec netprobe.Record) bool { return rec.PeerIP() == agent.IP })

		// A container that is not an agent is left alone.
		res = r.exec(t, other, outTCP, "socket:raw")
		if o := res.Must(t, outTCP); !reachedOutside(o) {
			t.Errorf("non-agent container: %+v, want the outside host reached directly", o)
		}
		if o := res.Must(t, "socket:raw"); !o.OK {
			t.Errorf("non-agent container raw socket: %+v", o)
		}
	})

	t.Run("child cgroup", func(t *testing.T) {
		// A process of the agent moved into a cgroup below the agent's
		// (a root agent with its own cgroup namespace could make one) is
		// enforced like the agent. The test makes the cgroup on the host.
		path, _, err := egress.ContainerCgroup(agent.ID)
		if err != nil {
			t.Fatal(err)
		}
		child := filepath.Join(path, "clawker-test-child")
		if err := os.Mkdir(child, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Remove(child) })
		in, err := r.d.ContainerInspect(context.Background(), agent.ID, docker.ContainerInspectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pid1 := strconv.Itoa(in.Container.State.Pid)
		before := r.outside.reachedBy(agent.IP)
		loop := startLoop(t, r.d, agent.ID, outUDP, farTCP)
		var moved time.Time
		cptest.WaitFor(t, 10*time.Second, "the looping probe moved into the child cgroup", func() (bool, string) {
			procs, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
			if err != nil {
				return false, err.Error()
			}
			for _, p := range strings.Fields(string(procs)) {
				if p != pid1 {
					moved = time.Now()
					if err := os.WriteFile(filepath.Join(child, "cgroup.procs"), []byte(p), 0); err != nil {
						return false, err.Error()
					}
				}
			}
			in, _ := os.ReadFile(filepath.Join(child, "cgroup.procs"))
			return len(strings.Fields(string(in))) > 0, "no process in the child yet"
		})
		time.Sleep(time.Second)
		after := 0
		for _, o := range loop.stop(t) {
			if !o.Time.After(moved) {
				continue
			}
			after++
			switch {
			case o.What == outUDP && !denied(o):
				t.Errorf("from the child cgroup: %+v, want EPERM", o)
			case o.What == farTCP && !redirectedToProxy(o):
				t.Errorf("from the child cgroup: %+v, want the proxy", o)
			}
		}
		if after == 0 {
			t.Fatal("no attempt ran from the child cgroup")
		}
		if n := r.outside.reachedBy(agent.IP) - before; n != 0 {
			t.Errorf("the outside host was reached %d times from the child cgroup", n)
		}
		t.Logf("%d attempts from the child cgroup, all enforced", after)
	})

	t.Run("bypass cut", func(t *testing.T) {
		// A TCP connection opened during a bypass is cut when it ends,
		// rather than living on: read by a probe that holds it open.
		ctx := context.Background()
		if _, err := admin.FirewallDisable(ctx, &adminv1.FirewallDisableRequest{ContainerId: agent.ID}); err != nil {
			t.Fatal(err)
		}
		done := make(chan cptest.ProbeResult, 1)
		held := outTCP + ",nosend,timeout=20s"
		go func() { done <- cptest.ExecProbe(t, r.d, agent.ID, "", "-timeout", "20s", held) }()
		cptest.WaitFor(t, 10*time.Second, "the probe connected to the outside host", func() (bool, string) {
			return r.outside.reachedBy(agent.IP) > 0, ""
		})
		start := time.Now()
		if _, err := admin.FirewallEnable(ctx, &adminv1.FirewallEnableRequest{ContainerId: agent.ID}); err != nil {
			t.Fatal(err)
		}
		select {
		case res := <-done:
			o := res.Must(t, held)
			took := time.Since(start)
			if o.OK || o.Errno != "ECONNABORTED" {
				t.Errorf("connection opened while disabled, after enable: %+v, want ECONNABORTED", o)
			}
			t.Logf("enable to cut, seen by the agent: %v (the probe's read failed with %s)", took, o.Errno)
		case <-time.After(15 * time.Second):
			t.Fatal("the connection opened while disabled survived the enable")
		}
	})

	t.Run("bypass and disable", func(t *testing.T) {
		ctx := context.Background()
		b, err := admin.FirewallBypass(ctx, &adminv1.FirewallBypassRequest{ContainerId: agent.ID, Timeout: durationpb.New(2 * time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		if o := r.exec(t, agent, outTCP).Must(t, outTCP); !reachedOutside(o) {
			t.Errorf("during a bypass: %+v, want the outside host", o)
		}
		time.Sleep(time.Until(b.GetUntil().AsTime()) + 200*time.Millisecond)
		if o := r.exec(t, agent, outTCP).Must(t, outTCP); !redirectedToProxy(o) {
			t.Errorf("after the bypass ended: %+v, want the proxy", o)
		}
		if _, err := admin.FirewallDisable(ctx, &adminv1.FirewallDisableRequest{ContainerId: agent.ID}); err != nil {
			t.Fatal(err)
		}
		if o := r.exec(t, agent, outUDP).Must(t, outUDP); !(o.OK && o.Reply == "outside host") {
			t.Errorf("disabled: %+v, want the outside host over UDP", o)
		}
		if _, err := admin.FirewallEnable(ctx, &adminv1.FirewallEnableRequest{ContainerId: agent.ID}); err != nil {
			t.Fatal(err)
		}
		if o := r.exec(t, agent, outUDP).Must(t, outUDP); !denied(o) {
			t.Errorf("enabled again: %+v, want EPERM", o)
		}
	})

	t.Run("eBPF owner restarted", func(t *testing.T) {
		// A panic restarts the owner with an empty container table; the
		// firewall enforces the running agents again, and the bypass order
		// after it finds the agent.
		postFault(t, r.cp, "ebpf", "panic", "")
		cptest.WaitFor(t, 10*time.Second, "the eBPF owner restarted", func() (bool, string) {
			return len(r.cp.Events("ebpf_loaded")) == 2, ""
		})
		if got := r.enforcedCgroup(t, admin, agent.ID, 0); got != cgid {
			t.Errorf("after the owner's restart the agent is on cgroup %d, want %d", got, cgid)
		}
		if _, err := admin.FirewallDisable(context.Background(), &adminv1.FirewallDisableRequest{ContainerId: agent.ID}); err != nil {
			t.Fatalf("disable after the owner's restart: %v", err)
		}
		if _, err := admin.FirewallEnable(context.Background(), &adminv1.FirewallEnableRequest{ContainerId: agent.ID}); err != nil {
			t.Fatal(err)
		}
		if o := r.exec(t, agent, outTCP).Must(t, outTCP); !redirectedToProxy(o) {
			t.Errorf("after the owner's restart: %+v, want the proxy", o)
		}
	})

	top := t
	t.Run("CP killed, restarted, agent restarted", func(t *testing.T) {
		ctx := context.Background()
		// A bypass armed just before the CP dies still ends on time.
		b, err := admin.FirewallBypass(ctx, &adminv1.FirewallBypassRequest{ContainerId: agent.ID, Timeout: durationpb.New(2 * time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.cp.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_, _ = r.cp.Wait(exitTimeout) // killed: no exit code
		if !r.cp.Exited() {
			t.Fatal("the CP survived SIGKILL")
		}
		time.Sleep(time.Until(b.GetUntil().AsTime()) + 200*time.Millisecond)
		before := r.outside.reachedBy(agent.IP)
		res := r.exec(t, agent, outTCP, outUDP)
		if o := res.Must(t, outTCP); !redirectedToProxy(o) {
			t.Errorf("CP dead, bypass expired: %+v, want the proxy", o)
		}
		if o := res.Must(t, outUDP); !denied(o) {
			t.Errorf("CP dead: UDP %+v, want EPERM", o)
		}

		// Attempts run without pause while no CP runs and while a new one
		// adopts the pins: none may reach the outside host.
		loop := startLoop(t, r.d, agent.ID, outTCP)
		time.Sleep(time.Second)
		r.startCP(top) // lives past this subtest
		admin = r.admin(top)
		if got := r.enforcedCgroup(t, admin, agent.ID, 0); got != cgid {
			t.Errorf("after re-adoption the agent is on cgroup %d, want %d", got, cgid)
		}
		time.Sleep(500 * time.Millisecond) // and a while under the new CP
		outcomes := loop.stop(t)
		if n := r.outside.reachedBy(agent.IP) - before; n != 0 {
			t.Errorf("the outside host was reached %d times while the CP restarted", n)
		}
		for _, o := range outcomes {
			if !redirectedToProxy(o) {
				t.Errorf("during re-adoption: %+v", o)
				break
			}
		}
		t.Logf("%d attempts during the CP restart, all redirected", len(outcomes))
		if len(r.cp.Events("ebpf_loaded")) != 1 {
			t.Errorf("no ebpf_loaded line from the new CP")
		}

		// docker restart: a new cgroup, enforced again without anyone asking.
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if _, err := r.d.ContainerRestart(rctx, agent.ID, docker.ContainerRestartOptions{}); err != nil {
			t.Fatal(err)
		}
		newCg := r.enforcedCgroup(t, admin, agent.ID, cgid)
		if o := r.exec(t, agent, outTCP).Must(t, outTCP); !redirectedToProxy(o) {
			t.Errorf("after docker restart: %+v, want the proxy", o)
		}
		cgid = newCg
	})

	t.Run("drain flushes everything", func(t *testing.T) {
		if err := r.cp.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := r.cp.MustExit(t, exitTimeout); code != 0 {
			t.Fatalf("exit %d", code)
		}
		ks, err := egress.KernelObjects(r.pinDir)
		if err != nil {
			t.Fatal(err)
		}
		if l := ks.LinksOn(cgid); len(l) != 0 || ks.PinDirExists {
			t.Errorf("after the drain: %d links on the agent's cgroup, pin dir exists=%v (%v)", len(l), ks.PinDirExists, ks.Pins)
		}
		if o := r.exec(t, agent, outTCP).Must(t, outTCP); !reachedOutside(o) {
			t.Errorf("after FlushAll: %+v, want the outside host (enforcement lifted)", o)
		}
	})
}

// probeLoop is a probe looping on attempts inside a container by exec,
// until stop.
type probeLoop struct {
	stopFile string
	d        *docker.Client
	id       string
	done     chan cptest.ProbeResult
}

func startLoop(t *testing.T, d *docker.Client, id string, attempts ...string) *probeLoop {
	t.Helper()
	l := &probeLoop{stopFile: "/stop-" + cptest.NewRunID(), d: d, id: id, done: make(chan cptest.ProbeResult, 1)}
	args := append([]string{"-timeout", "2s", "-loop", "-interval", "20ms", "-for", "2m", "-stop-file", l.stopFile}, attempts...)
	go func() { l.done <- cptest.ExecProbe(t, d, id, "", args...) }()
	return l
}

func (l *probeLoop) stop(t *testing.T) []netprobe.Outcome {
	t.Helper()
	cptest.TouchInContainer(t, l.d, l.id, l.stopFile)
	select {
	case res := <-l.done:
		return res.Outcomes
	case <-time.After(time.Minute):
		t.Fatal("the probe loop did not stop")
	}
	return nil
}
