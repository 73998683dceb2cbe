package cptest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	docker "github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/cptest/netprobe"
)

// Helpers for container-level firewall tests: a labelled network of the
// test's own, a FROM scratch image holding the netprobe programs, stand-ins
// for the firewall stack at its fixed addresses (.200 the egress proxy,
// .201 DNS) and probe containers whose outcomes are read from their logs.
//
//	d := cptest.RequireDocker(t)
//	n := cptest.NewTestNet(t, d, cptest.NewRunID(), cptest.TestNetOptions{})
//	proxy, dns := n.StartFirewallStandins(t)
//	res := n.RunProbe(t, cptest.ProbeSpec{Args: []string{"tcp:" + n.ProxyIP().String() + ":15001"}})
//	o := res.Must(t, "tcp:"+n.ProxyIP().String()+":15001")
//	proxy.WaitRecord(t, 10*time.Second, "the probe's connection", cptest.SentBy(o))

// Package paths of the netprobe programs, and where the image holds them.
const (
	StandinPkg  = "github.com/clawker/clawker-cp/pkg/cptest/netprobe/cmd/standin"
	ProbePkg    = "github.com/clawker/clawker-cp/pkg/cptest/netprobe/cmd/probe"
	StandinPath = "/standin"
	ProbePath   = "/probe"
)

// Host octets of the firewall stack's fixed addresses on an agent network
// (pkg/cpboot's ProxyHostOctet, DNSHostOctet, CPHostOctet).
const (
	ProxyOctet = 200
	DNSOctet   = 201
	CPOctet    = 202
)

// TestNetPool is where NewTestNet takes its /24 subnets: far from Docker's
// default pools (172.17-31.0.0/16, 192.168.0.0/16) and from the usual home
// and cloud ranges; what the host or Docker already uses is skipped.
var TestNetPool = netip.MustParsePrefix("10.213.0.0/16")

// ContainerWaitTimeout bounds how long the helpers wait for a stand-in to
// be ready or a probe container to exit.
var ContainerWaitTimeout = time.Minute

// NetprobeBinaries builds cmd/standin and cmd/probe (once per test
// process) and returns "standin" and "probe" to their paths, e.g. to put
// the probe in an agent image of one's own.
func NetprobeBinaries(t testing.TB) map[string]string {
	t.Helper()
	return BuildBinaries(t, StandinPkg, ProbePkg)
}

// BuildNetprobeImage builds an image FROM scratch holding StandinPath and
// ProbePath (CMD /probe -hold), labelled TestLabels(runID), and returns its
// reference: clawker-test-netprobe:<content hash>-<run id>. The run id in
// the tag keeps a concurrent run's cleanup from untagging it.
func BuildNetprobeImage(t testing.TB, d *docker.Client, runID string) string {
	t.Helper()
	bins := NetprobeBinaries(t)
	h := sha256.New()
	for _, name := range []string{"standin", "probe"} {
		b, err := os.ReadFile(bins[name])
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(h, "%s %d\n", name, len(b))
		h.Write(b)
	}
	ref := "clawker-test-netprobe:" + hex.EncodeToString(h.Sum(nil))[:12] + "-" + runID
	ctx, cancel := context.WithTimeout(context.Background(), DockerCallTimeout)
	defer cancel()
	if _, err := d.ImageInspect(ctx, ref); err == nil {
		return ref
	}
	BuildImage(t, d, ref, ScratchImage{
		Files:  map[string]string{"standin": bins["standin"], "probe": bins["probe"]},
		Cmd:    []string{ProbePath, "-hold"},
		Labels: TestLabels(runID),
	})
	return ref
}

// TestNetOptions shape NewTestNet's network.
type TestNetOptions struct {
	// Routable gives the network a way out (Docker's default bridge with
	// masquerading). Without it the network is internal: containers reach
	// each other and nothing else, so a probe's packet cannot leave the
	// test's own network by mistake.
	Routable bool
}

// TestNet is a Docker network of a test, with the netprobe image.
type TestNet struct {
	D       *docker.Client
	RunID   string
	Labels  map[string]string // TestLabels(RunID): on everything created
	Name    string
	ID      string
	Subnet  netip.Prefix
	Gateway netip.Addr
	Image   string // BuildNetprobeImage's
}

var testNetSeq atomic.Int64

// NewTestNet creates a bridge network labelled TestLabels(runID), named
// clawker-test-net-<run id>-<n>, with a /24 of TestNetPool that overlaps no
// Docker network, host address or host route, the gateway at .1 and a
// dynamic range of .0/25 (so .200 to .202 stay free for static addresses),
// and builds the netprobe image. Everything labelled with the run id is
// removed when the test ends.
func NewTestNet(t testing.TB, d *docker.Client, runID string, opts TestNetOptions) *TestNet {
	t.Helper()
	labels := TestLabels(runID)
	t.Cleanup(func() { RemoveLabelled(t, d, labels) })
	name := fmt.Sprintf("clawker-test-net-%s-%d", runID, testNetSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), DockerCallTimeout)
	defer cancel()
	taken, err := takenPrefixes(ctx, d)
	if err != nil {
		t.Fatalf("cptest: %v", err)
	}
	var lastErr error
	for _, subnet := range freeSubnets(TestNetPool, taken, rand.IntN(1<<16)) {
		gw := subnet.Addr().Next()
		cfg := network.IPAMConfig{Subnet: subnet, Gateway: gw, IPRange: netip.PrefixFrom(subnet.Addr(), 25)}
		res, err := d.NetworkCreate(ctx, name, docker.NetworkCreateOptions{
			Driver:   "bridge",
			Internal: !opts.Routable,
			IPAM:     &network.IPAM{Driver: "default", Config: []network.IPAMConfig{cfg}},
			Labels:   labels,
		})
		if err != nil {
			// Another test run took the subnet since the listing.
			if strings.Contains(strings.ToLower(err.Error()), "overlap") {
				lastErr = err
				continue
			}
			t.Fatalf("cptest: creating network %s (subnet %s): %v", name, subnet, err)
		}
		n := &TestNet{D: d, RunID: runID, Labels: labels, Name: name, ID: res.ID, Subnet: subnet, Gateway: gw}
		n.Image = BuildNetprobeImage(t, d, runID)
		return n
	}
	t.Fatalf("cptest: no free /24 in %s for network %s (last error: %v)", TestNetPool, name, lastErr)
	return nil
}

// AttachTestNet is a TestNet for an existing network (one a control plane
// under test created, say): its IPv4 subnet and gateway are read back, the
// netprobe image is built, and what the helpers create on it is labelled
// TestLabels(runID) and removed when the test ends; the network itself is
// the creator's. Static addresses need a network created with an explicit
// subnet.
func AttachTestNet(t testing.TB, d *docker.Client, runID, networkName string) *TestNet {
	t.Helper()
	labels := TestLabels(runID)
	t.Cleanup(func() { RemoveLabelled(t, d, labels) })
	ctx, cancel := context.WithTimeout(context.Background(), DockerCallTimeout)
	defer cancel()
	res, err := d.NetworkInspect(ctx, networkName, docker.NetworkInspectOptions{})
	if err != nil {
		t.Fatalf("cptest: inspecting network %s: %v", networkName, err)
	}
	n := &TestNet{D: d, RunID: runID, Labels: labels, Name: res.Network.Name, ID: res.Network.ID}
	for _, c := range res.Network.IPAM.Config {
		if c.Subnet.Addr().Is4() && c.Gateway.Is4() {
			n.Subnet, n.Gateway = c.Subnet.Masked(), c.Gateway
			break
		}
	}
	if !n.Subnet.IsValid() {
		t.Fatalf("cptest: network %s has no IPv4 subnet with a gateway: %+v", networkName, res.Network.IPAM.Config)
	}
	n.Image = BuildNetprobeImage(t, d, runID)
	return n
}

// Addr is the network's address with the last octet replaced (the subnet
// is at least a /24).
func (n *TestNet) Addr(octet byte) netip.Addr {
	b := n.Subnet.Addr().As4()
	b[3] = octet
	return netip.AddrFrom4(b)
}

// ProxyIP is .200, the egress proxy's address.
func (n *TestNet) ProxyIP() netip.Addr { return n.Addr(ProxyOctet) }

// DNSIP is .201, the DNS server's address.
func (n *TestNet) DNSIP() netip.Addr { return n.Addr(DNSOctet) }

// CPIP is .202, the control plane's address.
func (n *TestNet) CPIP() netip.Addr { return n.Addr(CPOctet) }

// freeSubnets lists the /24s of pool that overlap nothing in taken,
// beginning at the start-th (modulo their number) so that concurrent runs
// try different subnets first.
func freeSubnets(pool netip.Prefix, taken []netip.Prefix, start int) []netip.Prefix {
	pool = pool.Masked()
	if !pool.Addr().Is4() || pool.Bits() > 24 {
		return nil
	}
	count := 1 << (24 - pool.Bits())
	b := pool.Addr().As4()
	base := binary.BigEndian.Uint32(b[:])
	var out []netip.Prefix
	for i := range count {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], base+uint32((start+i)%count)<<8)
		p := netip.PrefixFrom(netip.AddrFrom4(a), 24)
		free := true
		for _, q := range taken {
			if p.Overlaps(q) {
				free = false
				break
			}
		}
		if free {
			out = append(out, p)
		}
	}
	return out
}

// takenPrefixes are the IPv4 subnets of every Docker network, the host's
// interface subnets, and its routes other than the default one.
func takenPrefixes(ctx context.Context, d *docker.Client) ([]netip.Prefix, error) {
	var out []netip.Prefix
	nets, err := d.NetworkList(ctx, docker.NetworkListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing Docker networks: %w", err)
	}
	for _, n := range nets.Items {
		for _, c := range n.IPAM.Config {
			if c.Subnet.IsValid() && c.Subnet.Addr().Is4() {
				out = append(out, c.Subnet.Masked())
			}
		}
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if p, ok := ipNetPrefix(ipn); ok {
					out = append(out, p)
				}
			}
		}
	}
	return append(out, hostRoutes()...), nil
}

func ipNetPrefix(ipn *net.IPNet) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(ipn.IP.To4())
	ones, bits := ipn.Mask.Size()
	if !ok || bits != 32 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip, ones).Masked(), true
}

// hostRoutes reads the IPv4 routes of /proc/net/route (none elsewhere);
// the default route is left out, as it overlaps everything.
func hostRoutes() []netip.Prefix {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []netip.Prefix
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 8 {
			continue
		}
		dst, err1 := strconv.ParseUint(fl[1], 16, 32)
		mask, err2 := strconv.ParseUint(fl[7], 16, 32)
		if err1 != nil || err2 != nil || mask == 0 {
			continue
		}
		// The kernel prints the words in host (little-endian) order.
		var a, m [4]byte
		binary.LittleEndian.PutUint32(a[:], uint32(dst))
		binary.LittleEndian.PutUint32(m[:], uint32(mask))
		ones, _ := net.IPMask(m[:]).Size()
		out = append(out, netip.PrefixFrom(netip.AddrFrom4(a), ones).Masked())
	}
	return out
}

var containerSeq atomic.Int64

// runSpec is what runContainer varies between its callers.
type runSpec struct {
	ip              netip.Addr
	cmd             []string
	user            string
	capAdd, capDrop []string
	restart         container.RestartPolicyMode
}

// runContainer creates and starts a container of the netprobe image on n,
// named clawker-test-<role>-<run id>-<n>, at spec.ip when it is valid.
func (n *TestNet) runContainer(t testing.TB, role string, spec runSpec, extraLabels ...map[string]string) (id, name string) {
	t.Helper()
	labels := map[string]string{}
	for _, m := range append([]map[string]string{n.Labels}, extraLabels...) {
		for k, v := range m {
			labels[k] = v
		}
	}
	name = fmt.Sprintf("clawker-test-%s-%s-%d", role, n.RunID, containerSeq.Add(1))
	ep := &network.EndpointSettings{}
	if spec.ip.IsValid() {
		ep.IPAMConfig = &network.EndpointIPAMConfig{IPv4Address: spec.ip}
	}
	stop := 2
	ctx, cancel := context.WithTimeout(context.Background(), DockerCallTimeout)
	defer cancel()
	res, err := n.D.ContainerCreate(ctx, docker.ContainerCreateOptions{
		Name: name,
		Config: &container.Config{
			Image: n.Image, Cmd: spec.cmd, User: spec.user, Labels: labels, StopTimeout: &stop,
		},
		HostConfig: &container.HostConfig{
			NetworkMode:   container.NetworkMode(n.Name),
			CapAdd:        spec.capAdd,
			CapDrop:       spec.capDrop,
			RestartPolicy: container.RestartPolicy{Name: spec.restart},
			// The helpers read the programs' output from the log: a
			// daemon whose default driver cannot be read back must not
			// break them.
			LogConfig: container.LogConfig{Type: "json-file"},
		},
		NetworkingConfig: &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{n.Name: ep}},
	})
	if err != nil {
		t.Fatalf("cptest: creating container %s on %s (address %v): %v", name, n.Name, spec.ip, err)
	}
	if _, err := n.D.ContainerStart(ctx, res.ID, docker.ContainerStartOptions{}); err != nil {
		t.Fatalf("cptest: starting container %s: %v", name, err)
	}
	return res.ID, name
}

// containerIP is id's address on network.
func containerIP(t testing.TB, d *docker.Client, id, networkName string) netip.Addr {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), DockerCallTimeout)
	defer cancel()
	res, err := d.ContainerInspect(ctx, id, docker.ContainerInspectOptions{})
	if err != nil {
		t.Fatalf("cptest: inspecting container %s: %v", id, err)
	}
	if ns := res.Container.NetworkSettings; ns != nil {
		if ep := ns.Networks[networkName]; ep != nil {
			return ep.IPAddress
		}
	}
	return netip.Addr{}
}

// containerRunning says whether id runs, and its exit code when not.
func containerRunning(d *docker.Client, id string) (running bool, exitCode int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), DockerCallTimeout)
	defer cancel()
	res, err := d.ContainerInspect(ctx, id, docker.ContainerInspectOptions{})
	if err != nil {
		return false, 0, err
	}
	st := res.Container.State
	if st == nil {
		return false, 0, errors.New("no state")
	}
	return st.Running || st.Restarting, st.ExitCode, nil
}

// ContainerOutput is what container id wrote so far, stdout and stderr
// apart (from its log).
func ContainerOutput(t testing.TB, d *docker.Client, id string) (stdout, stderr string) {
	t.Helper()
	o, e, err := containerOutput(d, id)
	if err != nil {
		t.Fatalf("cptest: reading the log of container %s: %v", id, err)
	}
	return o, e
}

func containerOutput(d *docker.Client, id string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), DockerCallTimeout)
	defer cancel()
	rc, err := d.ContainerLogs(ctx, id, docker.ContainerLogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		return "", "", err
	}
	defer rc.Close()
	var o, e bytes.Buffer
	if _, err := stdcopy.StdCopy(&o, &e, rc); err != nil {
		return o.String(), e.String(), err
	}
	return o.String(), e.String(), nil
}

// StandinContainer is a stand-in running on a TestNet.
type StandinContainer struct {
	ID, Name string
	IP       netip.Addr
	Config   netprobe.StandinConfig
	d        *docker.Client
}

// StartStandin runs a stand-in with cfg at ip on n and waits until it
// reports every listener bound. labels are added to the run label (an
// agent's labels make it an enforced agent that listens).
func (n *TestNet) StartStandin(t testing.TB, ip netip.Addr, cfg netprobe.StandinConfig, labels ...map[string]string) *StandinContainer {
	t.Helper()
	id, name := n.runContainer(t, "standin-"+cfg.Name, runSpec{ip: ip, cmd: append([]string{StandinPath}, cfg.Args()...)}, labels...)
	s := &StandinContainer{ID: id, Name: name, IP: ip, Config: cfg, d: n.D}
	WaitFor(t, ContainerWaitTimeout, "stand-in "+name+" to be ready", func() (bool, string) {
		out, errOut, err := containerOutput(n.D, id)
		if err != nil {
			return false, err.Error()
		}
		for _, r := range netprobe.ParseRecords(out) {
			if r.Event == "ready" {
				return true, ""
			}
		}
		if running, code, err := containerRunning(n.D, id); err == nil && !running {
			t.Fatalf("cptest: stand-in %s exited (%d) before it was ready:\n%s%s", name, code, out, errOut)
		}
		return false, out + errOut
	})
	return s
}

// StartProxyStandin runs the egress proxy's stand-in, named "proxy", at
// .200 on the TCP ports given (none: netprobe.DefaultProxyPort).
func (n *TestNet) StartProxyStandin(t testing.TB, ports ...int) *StandinContainer {
	t.Helper()
	if len(ports) == 0 {
		ports = []int{netprobe.DefaultProxyPort}
	}
	return n.StartStandin(t, n.ProxyIP(), netprobe.StandinConfig{Name: "proxy", TCPPorts: ports})
}

// StartDNSStandin runs the DNS server's stand-in, named "dns", at .201 on
// port 53, UDP and TCP, answering A queries with netprobe.DefaultDNSAnswer.
func (n *TestNet) StartDNSStandin(t testing.TB) *StandinContainer {
	t.Helper()
	return n.StartStandin(t, n.DNSIP(), netprobe.StandinConfig{Name: "dns", DNSPort: netprobe.DNSPort})
}

// StartFirewallStandins runs both: the proxy's at .200 on proxyPorts (the
// catch-all and route listeners; none: 15001) and DNS at .201.
func (n *TestNet) StartFirewallStandins(t testing.TB, proxyPorts ...int) (proxy, dns *StandinContainer) {
	t.Helper()
	return n.StartProxyStandin(t, proxyPorts...), n.StartDNSStandin(t)
}

// Records are the stand-in's records so far, the ready one left out.
func (s *StandinContainer) Records(t testing.TB) []netprobe.Record {
	t.Helper()
	out, _ := ContainerOutput(t, s.d, s.ID)
	return withoutReady(netprobe.ParseRecords(out))
}

func withoutReady(rs []netprobe.Record) []netprobe.Record {
	out := rs[:0]
	for _, r := range rs {
		if r.Event != "ready" {
			out = append(out, r)
		}
	}
	return out
}

// WaitRecord waits until the stand-in has a record match accepts, and
// returns the first such.
func (s *StandinContainer) WaitRecord(t testing.TB, timeout time.Duration, what string, match func(netprobe.Record) bool) netprobe.Record {
	t.Helper()
	var got netprobe.Record
	WaitFor(t, timeout, "stand-in "+s.Name+" to record "+what, func() (bool, string) {
		out, errOut, err := containerOutput(s.d, s.ID)
		if err != nil {
			return false, err.Error()
		}
		for _, r := range withoutReady(netprobe.ParseRecords(out)) {
			if match(r) {
				got = r
				return true, ""
			}
		}
		return false, "\n" + out + errOut
	})
	return got
}

// SentBy matches the record of what outcome o sent: the stand-in got o's
// line (which carries o's sequence number) from o's port.
func SentBy(o netprobe.Outcome) func(netprobe.Record) bool {
	return func(r netprobe.Record) bool {
		return r.Data == o.Sent && o.Sent != "" && r.PeerAddr().Port() == o.LocalAddr().Port()
	}
}

// ProbeSpec is a probe container to run on a TestNet.
type ProbeSpec struct {
	// Args are /probe's flags and attempts (see netprobe.Attempt).
	Args []string
	// IP is a static address on the network (zero: Docker picks one).
	IP netip.Addr
	// User is the container's user, "uid[:gid]" ("": root).
	User string
	// CapAdd and CapDrop change Docker's default capabilities ("ALL"
	// drops every one, as agent containers do).
	CapAdd, CapDrop []string
	// Labels are added to the run label (e.g. clawker's agent labels, so a
	// control plane under test enforces the probe as an agent).
	Labels map[string]string
	// Restart is the container's restart policy ("": none), e.g. "always"
	// for one a restarted daemon brings back.
	Restart container.RestartPolicyMode
}

// ProbeContainer is a started probe container.
type ProbeContainer struct {
	ID, Name string
	IP       netip.Addr
	d        *docker.Client
}

// ProbeResult is what a probe run printed.
type ProbeResult struct {
	// Outcomes are the attempts' lines in order; Done is the last line
	// (Kind "done", Reason why the run ended; zero when the run did not
	// end cleanly).
	Outcomes []netprobe.Outcome
	Done     netprobe.Outcome
	ExitCode int
	// Stdout and Stderr are the whole output, for failure messages.
	Stdout, Stderr string
}

func newProbeResult(stdout, stderr string, code int) ProbeResult {
	r := ProbeResult{ExitCode: code, Stdout: stdout, Stderr: stderr}
	for _, o := range netprobe.ParseOutcomes(stdout) {
		if o.Kind == "done" {
			r.Done = o
			continue
		}
		r.Outcomes = append(r.Outcomes, o)
	}
	return r
}

// Find is the first outcome of the attempt what (as given).
func (r ProbeResult) Find(what string) (netprobe.Outcome, bool) {
	for _, o := range r.Outcomes {
		if o.What == what {
			return o, true
		}
	}
	return netprobe.Outcome{}, false
}

// Must is Find, failing the test when the attempt has no outcome.
func (r ProbeResult) Must(t testing.TB, what string) netprobe.Outcome {
	t.Helper()
	o, ok := r.Find(what)
	if !ok {
		t.Fatalf("cptest: no outcome for %q; probe output:\n%s%s", what, r.Stdout, r.Stderr)
	}
	return o
}

// StartProbe starts a probe container on n; see RunProbe to wait for it.
func (n *TestNet) StartProbe(t testing.TB, spec ProbeSpec) *ProbeContainer {
	t.Helper()
	id, name := n.runContainer(t, "probe", runSpec{
		ip: spec.IP, cmd: append([]string{ProbePath}, spec.Args...), user: spec.User,
		capAdd: spec.CapAdd, capDrop: spec.CapDrop, restart: spec.Restart,
	}, spec.Labels)
	return &ProbeContainer{ID: id, Name: name, IP: containerIP(t, n.D, id, n.Name), d: n.D}
}

// RunProbe runs a probe container on n to its end (bounded by
// ContainerWaitTimeout) and returns what it printed.
func (n *TestNet) RunProbe(t testing.TB, spec ProbeSpec) (*ProbeContainer, ProbeResult) {
	t.Helper()
	p := n.StartProbe(t, spec)
	return p, p.Wait(t, ContainerWaitTimeout)
}

// Result is what the probe printed so far.
func (p *ProbeContainer) Result(t testing.TB) ProbeResult {
	t.Helper()
	out, errOut := ContainerOutput(t, p.d, p.ID)
	return newProbeResult(out, errOut, 0)
}

// WaitOutcomes waits until cond accepts the outcomes printed so far (the
// done line left out) and returns them: for -loop runs.
func (p *ProbeContainer) WaitOutcomes(t testing.TB, timeout time.Duration, what string, cond func([]netprobe.Outcome) bool) []netprobe.Outcome {
	t.Helper()
	var got []netprobe.Outcome
	WaitFor(t, timeout, "probe "+p.Name+": "+what, func() (bool, string) {
		out, errOut, err := containerOutput(p.d, p.ID)
		if err != nil {
			return false, err.Error()
		}
		got = newProbeResult(out, errOut, 0).Outcomes
		return cond(got), fmt.Sprintf("%d outcomes\n%s%s", len(got), tail(out, 10), errOut)
	})
	return got
}

// Stop sends SIGTERM, which ends a -loop or -hold run (Wait for the rest).
func (p *ProbeContainer) Stop(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), DockerCallTimeout)
	defer cancel()
	if _, err := p.d.ContainerKill(ctx, p.ID, docker.ContainerKillOptions{Signal: "SIGTERM"}); err != nil {
		t.Fatalf("cptest: SIGTERM to probe %s: %v", p.Name, err)
	}
}

// Touch creates the empty file path (absolute) in the container: a -loop
// run with -stop-file path ends at its next round.
func (p *ProbeContainer) Touch(t testing.TB, path string) { TouchInContainer(t, p.d, p.ID, path) }

// TouchInContainer creates the empty file path (absolute, in an existing
// directory) in container id, through the Docker API: no shell needed.
func TouchInContainer(t testing.TB, d *docker.Client, id, path string) {
	t.Helper()
	dir, base := "/", strings.TrimPrefix(path, "/")
	if i := strings.LastIndexByte(path, '/'); i > 0 {
		dir, base = path[:i], path[i+1:]
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: base, Mode: 0o644, Typeflag: tar.TypeReg, ModTime: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), DockerCallTimeout)
	defer cancel()
	if _, err := d.CopyToContainer(ctx, id, docker.CopyToContainerOptions{DestinationPath: dir, Content: &buf}); err != nil {
		t.Fatalf("cptest: creating %s in container %s: %v", path, id, err)
	}
}

// Wait waits until the probe container exits and returns what it printed.
func (p *ProbeContainer) Wait(t testing.TB, timeout time.Duration) ProbeResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	w := p.d.ContainerWait(ctx, p.ID, docker.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
	code := -1
	select {
	case r := <-w.Result:
		code = int(r.StatusCode)
	case err := <-w.Error:
		out, errOut, _ := containerOutput(p.d, p.ID)
		t.Fatalf("cptest: waiting for probe %s to exit: %v\n%s%s", p.Name, err, out, errOut)
	}
	out, errOut := ContainerOutput(t, p.d, p.ID)
	return newProbeResult(out, errOut, code)
}

// ExecProbe runs ProbePath with args in the running container id (as
// user, "" for the container's) and returns what it printed: for agent
// containers whose image holds the probe.
func ExecProbe(t testing.TB, d *docker.Client, id, user string, args ...string) ProbeResult {
	t.Helper()
	res, err := ExecProbeErr(d, id, user, args...)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// ExecProbeErr is ExecProbe for a goroutine other than the test's, where
// t.Fatal must not be called: failures come back as an error.
func ExecProbeErr(d *docker.Client, id, user string, args ...string) (ProbeResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ContainerWaitTimeout)
	defer cancel()
	ex, err := d.ExecCreate(ctx, id, docker.ExecCreateOptions{
		User: user, AttachStdout: true, AttachStderr: true, Cmd: append([]string{ProbePath}, args...),
	})
	if err != nil {
		return ProbeResult{}, fmt.Errorf("cptest: exec %s in %s: %w", ProbePath, id, err)
	}
	att, err := d.ExecAttach(ctx, ex.ID, docker.ExecAttachOptions{})
	if err != nil {
		return ProbeResult{}, fmt.Errorf("cptest: attaching to exec %s in %s: %w", ex.ID, id, err)
	}
	// The hijacked connection ignores ctx: close it when ctx ends, so a
	// hung probe cannot hang the test.
	var closeOnce sync.Once
	closeAtt := func() { closeOnce.Do(att.Close) }
	defer closeAtt()
	stopClose := context.AfterFunc(ctx, closeAtt)
	defer stopClose()
	var o, e bytes.Buffer
	_, copyErr := stdcopy.StdCopy(&o, &e, att.Reader)
	if ctx.Err() != nil {
		return ProbeResult{}, fmt.Errorf("cptest: exec %v in %s did not end within %s:\n%s%s", args, id, ContainerWaitTimeout, o.String(), e.String())
	}
	if copyErr != nil {
		return ProbeResult{}, fmt.Errorf("cptest: reading exec %s in %s: %w", ex.ID, id, copyErr)
	}
	code := -1
	deadline := time.Now().Add(10 * time.Second)
	for {
		ins, err := d.ExecInspect(ctx, ex.ID, docker.ExecInspectOptions{})
		if err == nil && !ins.Running {
			code = ins.ExitCode
			break
		}
		if time.Now().After(deadline) {
			return ProbeResult{}, fmt.Errorf("cptest: exec %s not reported ended within 10s (%v)", ex.ID, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return newProbeResult(o.String(), e.String(), code), nil
}
