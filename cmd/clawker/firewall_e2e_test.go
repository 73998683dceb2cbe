package main_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/clawkercli"
	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/cptest/netprobe"
	"github.com/clawker/clawker-cp/pkg/egress"
)

// flushProductionPinsAfter removes, when the test ends, the pins a CP of
// this test left under the production pin dir, provided the dir did not
// exist before (then it is not ours to touch).
func flushProductionPinsAfter(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(egress.DefaultPinDir); err == nil {
		t.Fatalf("%s exists before the test: a control plane outside this test enforces on this host; not touching it", egress.DefaultPinDir)
	}
	t.Cleanup(func() {
		if err := egress.FlushPins(egress.DefaultPinDir); err != nil {
			t.Errorf("flushing %s: %v", egress.DefaultPinDir, err)
		}
	})
}

// testFirewallInContainer is the production path of the firewall: the CP
// in its container (bpffs and cgroups bind-mounted, pins on the host's
// bpffs) with firewall.enable true, stand-ins for the stack at clawker-net's
// .200 and .201, and `clawker run` of an agent whose command is a probe.
// clawkerd is told to wait for enforcement (firewall on), so the probe's
// first attempt is already enforced: its outside connection reaches the
// proxy stand-in, its DNS query the DNS stand-in, its UDP is refused. The
// outside host is this test listening on clawker-net's gateway. Then
// `controlplane down` refuses while the agent runs, and with --force the
// drain lifts everything clawker pinned.
func testFirewallInContainer(t *testing.T, e *e2e) {
	flushProductionPinsAfter(t)
	// A CP of the previous case may run with the firewall off: start anew.
	e.removeCP(t)
	e.writeSettings(t, "firewall: {enable: true}")
	defer e.writeSettings(t, "")

	// The network exists once a CP was brought up (earlier cases did).
	n := cptest.AttachTestNet(t, e.d, e.run, cpboot.NetworkName)
	n.StartFirewallStandins(t, 15001)
	ln, err := net.Listen("tcp4", net.JoinHostPort(n.Gateway.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	reached := make(chan string, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			reached <- c.RemoteAddr().String()
			_, _ = bufio.NewReader(c).ReadString('\n')
			fmt.Fprintln(c, "outside host")
			c.Close()
		}
	}()
	udp, err := net.ListenPacket("udp4", net.JoinHostPort(n.Gateway.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()

	e.mustUp(t, cmdTimeout)
	outTCP, outUDP, dnsAny := "tcp:"+ln.Addr().String(), "udp:"+udp.LocalAddr().String(), "dns:"+n.Gateway.String()
	res := e.clawker(t, cmdTimeout, "run", "--project", "fw", "--agent", "probe", "--format", "json", n.Image,
		cptest.ProbePath, "-timeout", "2s", outTCP, dnsAny, outUDP)
	if res.Code != 0 {
		t.Fatalf("clawker run: exit %d\n%s\n%s", res.Code, res.Stderr, e.cpLogs(t, 30))
	}
	var rep clawkercli.RunReport
	if err := json.Unmarshal([]byte(res.Stdout), &rep); err != nil {
		t.Fatalf("run --format json: %v\n%s", err, res.Stdout)
	}
	id := rep.Agent.ID
	cptest.WaitFor(t, time.Minute, "the probe agent to exit", func() (bool, string) {
		c := e.inspect(t, id)
		return c.State != nil && !c.State.Running, ""
	})
	stdout, stderr := cptest.ContainerOutput(t, e.d, id)
	out := netprobe.ParseOutcomes(stdout)
	find := func(what string) netprobe.Outcome {
		for _, o := range out {
			if o.What == what {
				return o
			}
		}
		t.Fatalf("no outcome for %s; agent stdout:\n%s\nstderr:\n%s\n%s", what, stdout, stderr, e.cpLogs(t, 30))
		return netprobe.Outcome{}
	}
	if o := find(outTCP); !o.OK || o.Reply != netprobe.Banner("proxy", 15001) {
		t.Errorf("outside TCP from the agent: %+v, want the proxy stand-in", o)
	}
	if o := find(dnsAny); !o.OK || len(o.Answers) != 1 || o.Answers[0] != netprobe.DefaultDNSAnswer.String() {
		t.Errorf("DNS from the agent: %+v, want the DNS stand-in's answer", o)
	}
	if o := find(outUDP); o.OK || o.Errno != "EPERM" {
		t.Errorf("UDP from the agent: %+v, want EPERM", o)
	}
	select {
	case peer := <-reached:
		t.Errorf("the outside host was reached directly by %s", peer)
	default:
	}
	// clawkerd heard enforced=true before it started the command.
	lines, _ := cptest.ParseJSONLines(stderr)
	var order []string
	for _, l := range lines {
		switch ev, _ := l["event"].(string); ev {
		case "registered":
			order = append(order, fmt.Sprintf("registered enforced=%v", l["enforced"]))
		case "agent_command_started", "waiting_for_enforcement":
			order = append(order, ev)
		}
	}
	if len(order) < 2 || order[len(order)-1] != "agent_command_started" || order[len(order)-2] != "registered enforced=true" {
		t.Errorf("clawkerd events %q: want registered enforced=true right before agent_command_started", order)
	}

	// An agent that runs holds the CP up: down refuses, --force drains.
	hold := e.clawker(t, cmdTimeout, "run", "--project", "fw", "--agent", "hold", "--format", "json", n.Image, cptest.ProbePath, "-hold")
	if hold.Code != 0 {
		t.Fatalf("clawker run (hold): exit %d\n%s", hold.Code, hold.Stderr)
	}
	var holdRep clawkercli.RunReport
	if err := json.Unmarshal([]byte(hold.Stdout), &holdRep); err != nil {
		t.Fatalf("run --format json: %v\n%s", err, hold.Stdout)
	}
	_, holdCgroup, err := egress.ContainerCgroup(holdRep.Agent.ID)
	if err != nil {
		t.Fatal(err)
	}
	cptest.WaitFor(t, 30*time.Second, "the hold agent enforced (its links listed by the kernel)", func() (bool, string) {
		ks, err := egress.KernelObjects("")
		if err != nil {
			return false, err.Error()
		}
		return len(ks.LinksOn(holdCgroup)) == egress.LinksPerCgroup, fmt.Sprintf("%d links of %d", len(ks.LinksOn(holdCgroup)), egress.LinksPerCgroup)
	})
	checkAgentTrustsFirewallCA(t, e, holdRep.Agent.ID)
	testCutInContainer(t, e, holdRep.Agent.ID, outTCP, reached)
	checkCPListeners(t, e)
	if r := e.clawker(t, cmdTimeout, "controlplane", "down"); r.Code == 0 || !strings.Contains(r.Stderr, "--force") || !strings.Contains(r.Stderr, "fw.hold") {
		t.Errorf("down with an agent running: exit %d\n%s", r.Code, r.Stderr)
	}
	if r := e.clawker(t, 3*time.Minute, "controlplane", "down", "--force"); r.Code != 0 {
		t.Fatalf("down --force: exit %d\n%s\n%s", r.Code, r.Stderr, e.cpLogs(t, 30))
	}
	ks, err := egress.KernelObjects(egress.DefaultPinDir)
	if err != nil {
		t.Fatal(err)
	}
	if ks.PinDirExists || len(ks.Pins) != 0 {
		t.Errorf("after down --force: pins %v remain", ks.Pins)
	}
	// On the running agent's cgroup (other tests' cgroups are theirs).
	for _, l := range ks.LinksOn(holdCgroup) {
		t.Errorf("after down --force: a clawker link remains on the agent's cgroup: %+v", l)
	}
	if t.Failed() {
		t.Logf("%s", e.cpLogs(t, 80))
	}
	for _, name := range []string{"fw.probe", "fw.hold"} {
		if r := e.clawker(t, cmdTimeout, "rm", "-f", "--project", "fw", "--agent", strings.TrimPrefix(name, "fw.")); r.Code != 0 {
			t.Errorf("rm %s: %s", name, r.Stderr)
		}
	}
}

// testCutInContainer: a connection the hold agent opened while its
// firewall was disabled is cut by `firewall enable`, by a CP in its
// container, whose own /proc shows no task of the agent: it enters the
// agent's network namespace through the host's /proc (--host-proc).
func testCutInContainer(t *testing.T, e *e2e, agentID, outTCP string, reached <-chan string) {
	t.Helper()
	if r := e.clawker(t, cmdTimeout, "firewall", "disable", "--project", "fw", "--agent", "hold"); r.Code != 0 {
		t.Fatalf("firewall disable: exit %d\n%s", r.Code, r.Stderr)
	}
	held := outTCP + ",nosend,timeout=20s"
	type result struct {
		res cptest.ProbeResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := cptest.ExecProbeErr(e.d, agentID, "", "-timeout", "20s", held)
		done <- result{res, err}
	}()
	select {
	case <-reached:
	case <-time.After(15 * time.Second):
		t.Fatalf("the probe did not reach the outside host while the firewall was disabled\n%s", e.cpLogs(t, 30))
	}
	start := time.Now()
	if r := e.clawker(t, cmdTimeout, "firewall", "enable", "--project", "fw", "--agent", "hold"); r.Code != 0 {
		t.Fatalf("firewall enable: exit %d\n%s", r.Code, r.Stderr)
	}
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		o := r.res.Must(t, held)
		if o.OK || o.Errno != "ECONNABORTED" {
			t.Errorf("connection opened while disabled, after enable: %+v, want ECONNABORTED\n%s", o, e.cpLogs(t, 30))
		}
		t.Logf("enable to cut, seen by the agent through the CLI: %v", time.Since(start))
	case <-time.After(20 * time.Second):
		t.Fatalf("the connection opened while disabled survived the enable\n%s", e.cpLogs(t, 30))
	}
}

// checkCPListeners lists every listening socket in the CP's container and
// checks it against the documented set (docs/ARCHITECTURE.md,
// "Listeners"): on the container's address only the ports the CLI, the
// siblings and agents use; everything else on 127.0.0.1. The kernel
// refuses agents all but the agent and Hydra public ports anyway; this
// keeps what is not meant for another container from listening on its
// address at all.
func checkCPListeners(t *testing.T, e *e2e) {
	t.Helper()
	p := e.home.Ports(t)
	public := map[int]string{}
	for _, k := range []string{"health_port", "admin_port", "agent_port", "stack_port", "hydra_public_port", "oathkeeper_port"} {
		public[p["control_plane."+k]] = k
	}
	internal := map[int]string{}
	for _, k := range []string{"hydra_admin_port", "kratos_public_port", "kratos_admin_port", "oathkeeper_api_port"} {
		internal[p["control_plane."+k]] = k
	}
	seen := map[string]bool{}
	ls := cptest.ContainerListeners(t, e.d, cpboot.ContainerName)
	loopback := 0
	for _, l := range ls {
		a := l.Addr.Addr().Unmap()
		switch {
		case a == netip.MustParseAddr("127.0.0.11"):
			// Docker's embedded resolver, in every container of a
			// user-defined network.
		case l.Proto != "tcp":
			t.Errorf("CP listener %s: the CP listens on no UDP port", l)
		case a == netip.MustParseAddr("127.0.0.1"):
			loopback++
			if k, ok := internal[int(l.Addr.Port())]; ok {
				seen[k] = true
			}
		case a.IsUnspecified():
			k, ok := public[int(l.Addr.Port())]
			if !ok {
				t.Errorf("CP listener %s: not one of the documented ports on the container's address %v", l, public)
			}
			seen[k] = true
		default:
			t.Errorf("CP listener %s: neither 127.0.0.1 nor the container's address", l)
		}
	}
	// stack_port listens only when the CP runs the stack itself
	// (--stack-dir): these tests' bundles carry none (stand-ins at .200
	// and .201), so it may not be required here.
	need := []string{"health_port", "admin_port", "agent_port"}
	if seen["hydra_admin_port"] { // the bundle carries Ory
		need = append(need, "hydra_public_port", "oathkeeper_port", "hydra_admin_port", "kratos_public_port", "kratos_admin_port", "oathkeeper_api_port")
	}
	for _, k := range need {
		if !seen[k] {
			t.Errorf("no CP listener for control_plane.%s (%d) among %v", k, p["control_plane."+k], ls)
		}
	}
	t.Logf("CP listeners: %v (%d on loopback)", ls, loopback)
}
