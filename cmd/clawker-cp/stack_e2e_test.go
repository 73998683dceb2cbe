package main_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	docker "github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/cptest/netprobe"
	"github.com/clawker/clawker-cp/pkg/settings"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// The firewall stack end to end: a clawker-cp process on the host that
// builds and runs the real DNS and proxy siblings on a test network, and a
// test "internet" on that network's gateway: a DNS authority (which
// firewall.upstream_dns points at, so nothing falls back to a real
// resolver) and HTTPS/HTTP servers. The gateway is a private address, so
// firewall.private_destinations allows exactly it. Agents are probe
// containers labelled purpose=agent; no packet goes anywhere but the test
// network and its gateway.

// world is the test's internet on the gateway.
type world struct {
	gw       netip.Addr
	auth     *cptest.Authority
	certFP   string // SHA-256 of the HTTPS server's leaf
	mu       sync.Mutex
	sni      map[string]int // ClientHellos seen, by SNI
	hosts    map[string]int // HTTP requests, by Host
	bigBytes int64
}

func (w *world) seenSNI(name string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sni[name]
}

func (w *world) seenHost(name string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.hosts[name]
}

var worldNames = []string{"allowed.test", "www.wild.test", "wild.test", "deep.a.wild.test", "blocked.wild.test", "unlisted.test", "late.test", "meta.test", "cut.test"}

func startWorld(t testing.TB, gw netip.Addr) *world {
	t.Helper()
	w := &world{gw: gw, sni: map[string]int{}, hosts: map[string]int{}, bigBytes: 256 << 20}
	recs := map[string][]netip.Addr{}
	for _, n := range worldNames {
		recs[n] = []netip.Addr{gw}
	}
	// An allowed name pointing at the cloud metadata address: never
	// dialled, because the floor drops the answer.
	recs["meta.test"] = []netip.Addr{netip.MustParseAddr("169.254.169.254")}
	w.auth = cptest.StartAuthority(t, gw, recs)

	cert, fp := testServerCert(t, worldNames)
	w.certFP = fp
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(rw http.ResponseWriter, r *http.Request) {
		w.mu.Lock()
		w.hosts[r.Host]++
		w.mu.Unlock()
		fmt.Fprintf(rw, "hello from %s\n", r.Host)
	})
	mux.HandleFunc("/big", func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Length", fmt.Sprint(w.bigBytes))
		chunk := make([]byte, 64<<10)
		for sent := int64(0); sent < w.bigBytes; sent += int64(len(chunk)) {
			if _, err := rw.Write(chunk); err != nil {
				return
			}
			// A slow download: a transfer that spans the rule changes.
			time.Sleep(2 * time.Millisecond)
		}
	})
	tlsLn, err := net.Listen("tcp4", net.JoinHostPort(gw.String(), "443"))
	if err != nil {
		t.Fatalf("listening on %s:443: %v", gw, err)
	}
	httpLn, err := net.Listen("tcp4", net.JoinHostPort(gw.String(), "80"))
	if err != nil {
		t.Fatalf("listening on %s:80: %v", gw, err)
	}
	tlsSrv := &http.Server{Handler: mux, TLSConfig: &tls.Config{
		Certificates: []tls.Certificate{cert},
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			w.mu.Lock()
			w.sni[h.ServerName]++
			w.mu.Unlock()
			return nil, nil
		},
	}}
	plain := &http.Server{Handler: mux}
	go func() { _ = tlsSrv.ServeTLS(tlsLn, "", "") }()
	go func() { _ = plain.Serve(httpLn) }()
	t.Cleanup(func() { tlsSrv.Close(); plain.Close() })
	return w
}

// testServerCert is a leaf for names from a CA made here.
func testServerCert(t testing.TB, names []string) (tls.Certificate, string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "stack test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, hex.EncodeToString(sum[:])
}

type stackRig struct {
	d     *docker.Client
	net   *cptest.TestNet
	world *world
	home  *cptest.Home
	cp    *cptest.Process
	admin *adminclient.Client
	agent *cptest.ProbeContainer
}

func newStackRig(t testing.TB) *stackRig { return newStackRigWith(t, "") }

// newStackRigWith is newStackRig with firewallExtra (", key: value" pairs)
// added to the firewall settings.
func newStackRigWith(t testing.TB, firewallExtra string) *stackRig {
	t.Helper()
	d := cptest.RequireDocker(t)
	stackDir := cptest.StackDir(t)
	r := &stackRig{d: d}
	r.net = cptest.NewTestNet(t, d, cptest.NewRunID(), cptest.TestNetOptions{})
	r.world = startWorld(t, r.net.Gateway)
	r.home = cptest.NewCPHome(t, fmt.Sprintf(
		"firewall: {enable: true, proxy_port: %d, upstream_dns: [%q], private_destinations: [%q]%s}\ncontrol_plane: {watcher: {enable: false}}\n",
		proxyPort, r.world.auth.Addr.String(), r.net.Gateway.String(), firewallExtra))
	var labels []string
	for k, v := range r.net.Labels {
		labels = append(labels, k+"="+v)
	}
	r.cp = cptest.StartCP(t, r.home, cpBinary(t), "CLAWKER_CP_DEBUG_PIN_DIR="+cptest.TestPinDir(t), "CLAWKER_CP_DEBUG_NETWORK="+r.net.Name,
		"CLAWKER_CP_ORY_DIR="+cptest.OryDir(t), "CLAWKER_CP_STACK_DIR="+stackDir, "CLAWKER_DEBUG_LABELS="+strings.Join(labels, ","))
	r.cp.WaitHealthy(t, 90*time.Second)
	s, err := settings.Load(r.home.SettingsFile(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r.admin, err = adminclient.Dial(ctx, r.home.Paths(t), s, adminclient.WithOAuth())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.admin.Close() })
	return r
}

func (r *stackRig) addRules(t testing.TB, rules ...*adminv1.EgressRule) *adminv1.FirewallAddRulesResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := r.admin.FirewallAddRules(ctx, &adminv1.FirewallAddRulesRequest{Rules: rules})
	if err != nil {
		t.Fatalf("FirewallAddRules: %v", err)
	}
	return res
}

func (r *stackRig) removeRule(t testing.TB, rule *adminv1.EgressRule) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := r.admin.FirewallRemoveRule(ctx, &adminv1.FirewallRemoveRuleRequest{Dst: rule.Dst, Proto: rule.Proto, Port: rule.Port})
	if err != nil || res.GetStatus() != adminv1.RuleStatus_RULE_STATUS_REMOVED {
		t.Fatalf("FirewallRemoveRule %s: %v %v", rule.Dst, res.GetStatus(), err)
	}
}

func (r *stackRig) status(t testing.TB) *adminv1.FirewallStatusResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := r.admin.FirewallStatus(ctx, &adminv1.FirewallStatusRequest{})
	if err != nil {
		t.Fatalf("FirewallStatus: %v", err)
	}
	return st
}

func (r *stackRig) startAgent(t testing.TB) {
	t.Helper()
	labels := map[string]string{}
	for k, v := range agentLabels {
		labels[k] = v
	}
	r.agent = r.net.StartProbe(t, cptest.ProbeSpec{Args: []string{"-hold"}, Labels: labels})
	cptest.WaitFor(t, 30*time.Second, "the agent enforced", func() (bool, string) {
		for _, a := range r.status(t).GetAgents() {
			if a.GetContainerId() == r.agent.ID {
				return true, ""
			}
		}
		return false, "not yet"
	})
}

func (r *stackRig) try(t testing.TB, attempt string) netprobe.Outcome {
	t.Helper()
	return cptest.ExecProbe(t, r.d, r.agent.ID, "", "-timeout", "5s", attempt).Must(t, attempt)
}

// background runs one long attempt from a goroutine of the test: it must
// not call t.Fatal there, so a missing outcome comes back as a failure.
func (r *stackRig) background(attempt string) netprobe.Outcome {
	res, err := cptest.ExecProbeErr(r.d, r.agent.ID, "", "-timeout", "60s", attempt)
	if err != nil {
		return netprobe.Outcome{Error: err.Error()}
	}
	o, ok := res.Find(attempt)
	if !ok {
		return netprobe.Outcome{Error: "no outcome: " + res.Stdout + res.Stderr}
	}
	return o
}

func TestFirewallStackEndToEnd(t *testing.T) {
	r := newStackRig(t)
	st := r.status(t)
	if len(st.GetStack()) != 2 {
		t.Fatalf("status stack %+v, want the DNS and proxy members", st.GetStack())
	}
	for _, m := range st.GetStack() {
		if !m.GetHealthy() || m.GetContainerId() == "" {
			t.Errorf("member %+v, want healthy with a container", m)
		}
	}
	t.Run("every listening socket of the siblings is a documented one", func(t *testing.T) {
		for _, m := range st.GetStack() {
			ap, err := netip.ParseAddrPort(m.GetAddress())
			if err != nil {
				t.Fatalf("member %+v: %v", m, err)
			}
			// docs/ARCHITECTURE.md, "Listeners": DNS on 53 (UDP and TCP);
			// the proxy on its catch-all port, one per route, and /healthz.
			want := map[string]bool{}
			if ap.Port() == 53 {
				want["udp 53"], want["tcp 53"] = false, false
			} else {
				want[fmt.Sprintf("tcp %d", ap.Port())] = false
				want[fmt.Sprintf("tcp %d", firewall.ProxyHealthPort(ap.Port()))] = false
			}
			ls := cptest.ContainerListeners(t, r.d, m.GetContainerId())
			for _, l := range ls {
				if l.Addr.Addr() == dockerEmbeddedDNS {
					continue // Docker's resolver in every container of a user-defined network
				}
				key := fmt.Sprintf("%s %d", l.Proto, l.Addr.Port())
				if _, ok := want[key]; !ok || !l.Addr.Addr().IsUnspecified() {
					t.Errorf("%s: listener %s is not a documented one", m.GetName(), l)
					continue
				}
				want[key] = true
			}
			for k, seen := range want {
				if !seen {
					t.Errorf("%s: no listener %s among %v", m.GetName(), k, ls)
				}
			}
			t.Logf("%s listens on %v", m.GetName(), ls)
		}
	})
	res := r.addRules(t,
		&adminv1.EgressRule{Dst: "allowed.test"},
		&adminv1.EgressRule{Dst: "allowed.test", Proto: "http"},
		&adminv1.EgressRule{Dst: ".wild.test"},
		&adminv1.EgressRule{Dst: "blocked.wild.test", Action: "deny"},
		&adminv1.EgressRule{Dst: "meta.test"},
	)
	for i, s := range res.GetStatuses() {
		if s != adminv1.RuleStatus_RULE_STATUS_ADDED {
			t.Fatalf("rule %d: %v, want ADDED", i, s)
		}
	}
	r.startAgent(t)
	gw := r.net.Gateway.String()

	t.Run("allowed name over HTTPS, the server's own certificate", func(t *testing.T) {
		o := r.try(t, "https:allowed.test")
		if !o.OK || o.Status != 200 || o.Reply != "hello from allowed.test" {
			t.Fatalf("https allowed.test: %+v", o)
		}
		if o.Cert != r.world.certFP {
			t.Fatalf("certificate %s, want the server's own %s (no MITM)", o.Cert, r.world.certFP)
		}
	})
	t.Run("allowed name over HTTP", func(t *testing.T) {
		if o := r.try(t, "http:allowed.test"); !o.OK || o.Status != 200 || o.Reply != "hello from allowed.test" {
			t.Fatalf("http allowed.test: %+v", o)
		}
	})
	t.Run("wildcard covers apex and depth, the exact deny wins", func(t *testing.T) {
		for _, n := range []string{"wild.test", "www.wild.test", "deep.a.wild.test"} {
			if o := r.try(t, "https:"+n); !o.OK || o.Status != 200 {
				t.Errorf("https %s: %+v, want allowed by .wild.test", n, o)
			}
		}
		o := r.try(t, "https:blocked.wild.test")
		if o.OK || o.Syscall != "resolve" {
			t.Errorf("https blocked.wild.test: %+v, want a resolve failure (NXDOMAIN)", o)
		}
	})
	t.Run("unlisted name: NXDOMAIN, and dialled by IP nothing reaches the server", func(t *testing.T) {
		before := r.world.auth.Queries("unlisted.test")
		o := r.try(t, "dns:"+r.net.DNSIP().String()+",name=unlisted.test")
		if !o.OK || o.RCode != 3 {
			t.Fatalf("dns unlisted.test: %+v, want NXDOMAIN (rcode 3)", o)
		}
		if n := r.world.auth.Queries("unlisted.test") - before; n != 0 {
			t.Errorf("the upstream was asked %d times about an unlisted name", n)
		}
		if o := r.try(t, "https:unlisted.test,ip="+gw); o.OK {
			t.Errorf("https unlisted.test by IP: %+v, want refused", o)
		}
		if n := r.world.seenSNI("unlisted.test"); n != 0 {
			t.Errorf("the server saw %d ClientHellos for unlisted.test", n)
		}
		o = r.try(t, "http:unlisted.test,ip="+gw)
		if o.Status != 403 || !strings.Contains(o.Reply, "unlisted.test") {
			t.Errorf("http unlisted.test by IP: %+v, want 403 naming the host", o)
		}
		if n := r.world.seenHost("unlisted.test"); n != 0 {
			t.Errorf("the server saw %d requests for unlisted.test", n)
		}
	})
	t.Run("firewall denied names the refusals, and its command allows the next attempt", func(t *testing.T) {
		var groups []*adminv1.DeniedGroup
		cptest.WaitFor(t, 5*time.Second, "the DNS and proxy refusals of unlisted.test reported", func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			res, err := r.admin.FirewallDenied(ctx, &adminv1.FirewallDeniedRequest{Project: "fwtest"})
			if err != nil {
				return false, err.Error()
			}
			groups = res.GetGroups()
			seen := map[string]bool{}
			for _, g := range groups {
				if g.GetName() == "unlisted.test" {
					seen[g.GetWhere()+"/"+g.GetProto()] = true
				}
			}
			return seen["dns/"] && seen["proxy/https"] && seen["proxy/http"], fmt.Sprint(groups)
		})
		for _, g := range groups {
			if g.GetName() != "unlisted.test" {
				continue
			}
			if len(g.GetAgents()) != 1 || g.GetAgents()[0] != "fwtest/probe" {
				t.Errorf("group %v: agents %v, want fwtest/probe", g.GetWhere(), g.GetAgents())
			}
			want := "clawker firewall add unlisted.test"
			if g.GetProto() == "http" {
				want += " --proto http"
			}
			if g.GetAllow() != want {
				t.Errorf("group %s/%s: allow %q, want %q", g.GetWhere(), g.GetProto(), g.GetAllow(), want)
			}
		}
		// What the suggested command adds, the next attempt gets through.
		rule := &adminv1.EgressRule{Dst: "unlisted.test", Proto: "http"}
		r.addRules(t, rule)
		if o := r.try(t, "http:unlisted.test,ip="+gw); !o.OK || o.Status != 200 {
			t.Errorf("http unlisted.test after the suggested add: %+v", o)
		}
		r.removeRule(t, rule)
		// Another project's filter sees none of it.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if res, err := r.admin.FirewallDenied(ctx, &adminv1.FirewallDeniedRequest{Project: "other"}); err != nil || len(res.GetGroups()) != 0 {
			t.Errorf("denied for project other: %v %v, want none", res.GetGroups(), err)
		}
	})
	t.Run("AAAA is empty, UDP other than DNS is refused", func(t *testing.T) {
		o := r.try(t, "dns:"+r.net.DNSIP().String()+",name=allowed.test,type=AAAA")
		if !o.OK || o.RCode != 0 || len(o.Answers) != 0 {
			t.Errorf("AAAA allowed.test: %+v, want an empty NOERROR", o)
		}
		if o := r.try(t, "udp:"+gw+":9"); o.OK || o.Errno != "EPERM" {
			t.Errorf("udp to the gateway: %+v, want EPERM", o)
		}
	})
	t.Run("firewall denied shows the kernel's refusals, and the IP rule it suggests allows the next attempt", func(t *testing.T) {
		// A container on the agent network that is not an agent: refused
		// (deny-subnet) until a rule names its address.
		collector := r.net.Addr(150)
		r.net.StartStandin(t, collector, netprobe.StandinConfig{Name: "collector", TCPPorts: []int{8080}})
		tcpTarget := "tcp:" + collector.String() + ":8080"
		if o := r.try(t, tcpTarget); o.OK || o.Errno != "EPERM" {
			t.Fatalf("tcp to a container that is no agent: %+v, want EPERM", o)
		}
		if o := r.try(t, "udp:"+gw+":9"); o.OK || o.Errno != "EPERM" {
			t.Fatalf("udp to the gateway: %+v, want EPERM", o)
		}
		var udp, tcp *adminv1.DeniedGroup
		cptest.WaitFor(t, 5*time.Second, "the kernel's refusals in firewall denied", func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			res, err := r.admin.FirewallDenied(ctx, &adminv1.FirewallDeniedRequest{Project: "fwtest"})
			if err != nil {
				return false, err.Error()
			}
			udp, tcp = nil, nil
			for _, g := range res.GetGroups() {
				switch {
				case g.GetWhere() == "kernel" && g.GetName() == gw+":9":
					udp = g
				case g.GetWhere() == "kernel" && g.GetName() == collector.String()+":8080":
					tcp = g
				}
			}
			return udp != nil && tcp != nil, fmt.Sprint(res.GetGroups())
		})
		for _, g := range []*adminv1.DeniedGroup{udp, tcp} {
			if len(g.GetAgents()) != 1 || g.GetAgents()[0] != "fwtest/probe" {
				t.Errorf("kernel group %s: agents %v, want fwtest/probe", g.GetName(), g.GetAgents())
			}
		}
		// This rig's CP runs on the host, at the gateway: UDP to it is
		// refused as a CP port (deny-cp); with the CP at .202 it would be
		// deny-gateway, and anywhere else deny-udp. No rule opens any.
		if udp.GetProto() != "udp" || !slices.Contains([]string{"deny-cp", "deny-gateway", "deny-udp"}, udp.GetReason()) || !strings.HasPrefix(udp.GetAllow(), "none:") {
			t.Errorf("the UDP refusal: %v", udp)
		}
		want := "clawker firewall add " + collector.String() + " --proto tcp --port 8080"
		if tcp.GetProto() != "tcp" || tcp.GetReason() != "deny-subnet" || !strings.Contains(tcp.GetAllow(), want) {
			t.Errorf("the refusal on the agent network: %v, want the allow line to hold %q", tcp, want)
		}
		rule := &adminv1.EgressRule{Dst: collector.String(), Proto: "tcp", Port: "8080"}
		r.addRules(t, rule)
		if o := r.try(t, tcpTarget); !o.OK || o.Reply != netprobe.Banner("collector", 8080) {
			t.Errorf("tcp to the container after the suggested add: %+v, want its banner", o)
		}
		r.removeRule(t, rule)
		if o := r.try(t, tcpTarget); o.OK || o.Errno != "EPERM" {
			t.Errorf("after the rule was removed: %+v, want EPERM", o)
		}
	})
	t.Run("an allowed name resolving into the metadata range is not reachable", func(t *testing.T) {
		o := r.try(t, "dns:"+r.net.DNSIP().String()+",name=meta.test")
		if !o.OK || len(o.Answers) != 0 {
			t.Errorf("dns meta.test: %+v, want no address (the floor drops 169.254.169.254)", o)
		}
	})
	t.Run("an IP rule passes TCP to the address without the proxy; an IP deny rule is EPERM", func(t *testing.T) {
		// The gateway is a private destination of this rig, so a rule
		// naming it opens it. The server sees the ClientHello of a name
		// no rule allows: the connection went straight to it, not through
		// the proxy, which would have refused it before dialling.
		attempt := "https:unlisted.test,ip=" + gw
		before := r.world.seenSNI("unlisted.test")
		if o := r.try(t, attempt); o.OK || r.world.seenSNI("unlisted.test") != before {
			t.Fatalf("before the rule: %+v (the server saw %d ClientHellos), want refused by the proxy", o, r.world.seenSNI("unlisted.test")-before)
		}
		ipRule := &adminv1.EgressRule{Dst: gw, Proto: "tcp", Port: "443"}
		r.addRules(t, ipRule)
		_ = r.try(t, attempt) // the certificate is not unlisted.test's: the handshake may fail after the server saw it
		if n := r.world.seenSNI("unlisted.test") - before; n != 1 {
			t.Errorf("with the IP rule the server saw %d ClientHellos for unlisted.test, want 1 (straight through)", n)
		}
		r.removeRule(t, ipRule)
		deny := &adminv1.EgressRule{Dst: gw, Proto: "tcp", Port: "443", Action: "deny"}
		r.addRules(t, deny)
		if o := r.try(t, "https:allowed.test,ip="+gw); o.OK || o.Errno != "EPERM" {
			t.Errorf("with an IP deny rule: %+v, want EPERM from the kernel", o)
		}
		r.removeRule(t, deny)
		if o := r.try(t, "https:allowed.test"); !o.OK || o.Status != 200 {
			t.Errorf("after the deny rule was removed: %+v", o)
		}
	})
	t.Run("add allows the next connection, remove refuses it", func(t *testing.T) {
		if o := r.try(t, "https:late.test"); o.OK {
			t.Fatalf("https late.test before its rule: %+v", o)
		}
		rule := &adminv1.EgressRule{Dst: "late.test"}
		r.addRules(t, rule)
		if o := r.try(t, "https:late.test"); !o.OK || o.Status != 200 {
			t.Fatalf("https late.test right after FirewallAddRules answered: %+v", o)
		}
		r.removeRule(t, rule)
		if o := r.try(t, "https:late.test,ip="+gw); o.OK {
			t.Fatalf("https late.test after removal: %+v", o)
		}
	})
	t.Run("a download runs across ten changes of other rules", func(t *testing.T) {
		done := make(chan netprobe.Outcome, 1)
		go func() { done <- r.background("https:allowed.test,path=/big,read=" + fmt.Sprint(r.world.bigBytes)) }()
		time.Sleep(500 * time.Millisecond) // the transfer is under way
		for i := range 10 {
			rule := &adminv1.EgressRule{Dst: fmt.Sprintf("other%d.example.org", i)}
			r.addRules(t, rule)
			if i%2 == 1 {
				r.removeRule(t, rule)
			}
		}
		o := <-done
		if !o.OK || o.Bytes != r.world.bigBytes {
			t.Fatalf("download across rule changes: %+v, want all %d bytes", o, r.world.bigBytes)
		}
	})
	t.Run("removing the rule cuts a running download within 1s", func(t *testing.T) {
		rule := &adminv1.EgressRule{Dst: "cut.test"}
		r.addRules(t, rule)
		done := make(chan netprobe.Outcome, 1)
		go func() { done <- r.background("https:cut.test,path=/big,read=" + fmt.Sprint(r.world.bigBytes)) }()
		time.Sleep(time.Second)
		removed := time.Now()
		r.removeRule(t, rule)
		o := <-done
		if o.OK {
			t.Fatalf("the download survived the removal of its rule: %+v", o)
		}
		ended := o.Time.Add(time.Duration(o.Millis * float64(time.Millisecond)))
		if cut := ended.Sub(removed); cut > time.Second {
			t.Fatalf("cut %s after the removal, want within 1s (%+v)", cut, o)
		} else {
			t.Logf("cut %s after FirewallRemoveRule was sent, after %d bytes", cut, o.Bytes)
		}
	})
	// KILL: the container dies. STOP: it hangs, still "running" to Docker,
	// and only its health checks fail (three in a row recreate it).
	for _, c := range []struct{ role, signal, what string }{
		{"proxy", "KILL", "killed"}, {"dns", "KILL", "killed"}, {"proxy", "STOP", "hung (SIGSTOP)"}, {"dns", "STOP", "hung (SIGSTOP)"},
	} {
		role := c.role
		t.Run("the "+role+" sibling "+c.what+" is recreated; nothing passes meanwhile", func(t *testing.T) {
			name := r.net.Name + "-" + role
			member := map[string]string{"proxy": "proxy", "dns": "DNS"}[role]
			st := r.status(t)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if _, err := r.d.ContainerKill(ctx, name, docker.ContainerKillOptions{Signal: c.signal}); err != nil {
				t.Fatalf("SIG%s to %s: %v", c.signal, name, err)
			}
			// Right after the kill, bounded so that a connect waiting for
			// the recreated sibling does not count as passing meanwhile.
			if o := cptest.ExecProbe(t, r.d, r.agent.ID, "", "-timeout", "400ms", "https:allowed.test").Must(t, "https:allowed.test"); o.OK {
				t.Errorf("https allowed.test with the %s dead: %+v, want refused (fail closed)", role, o)
			}
			var before string
			for _, m := range st.GetStack() {
				if strings.Contains(m.GetName(), member) {
					before = m.GetContainerId()
				}
			}
			// The ✗ may last only a second before the new container is
			// healthy: the log line says it was seen failing.
			r.cp.WaitForLine(t, 10*time.Second, func(l map[string]any) bool {
				return l["event"] == "firewall_stack_unavailable" && strings.Contains(fmt.Sprint(l["member"]), member)
			})
			cptest.WaitFor(t, 60*time.Second, "the "+role+" healthy again in a new container", func() (bool, string) {
				for _, m := range r.status(t).GetStack() {
					if strings.Contains(m.GetName(), member) {
						return m.GetHealthy() && m.GetContainerId() != before, fmt.Sprintf("healthy %v container %.12s error %s", m.GetHealthy(), m.GetContainerId(), m.GetError())
					}
				}
				return false, "no such member"
			})
			if o := r.try(t, "https:allowed.test"); !o.OK || o.Status != 200 {
				t.Fatalf("https allowed.test after the %s came back: %+v", role, o)
			}
		})
	}
}

// A sibling that cannot be created (its address is taken on the network)
// fails the control plane's start-up with the reason.
func TestFirewallStackThatCannotStartFailsStartup(t *testing.T) {
	d := cptest.RequireDocker(t)
	stackDir := cptest.StackDir(t)
	n := cptest.NewTestNet(t, d, cptest.NewRunID(), cptest.TestNetOptions{})
	// Something else holds the DNS sibling's address.
	n.StartProbe(t, cptest.ProbeSpec{Args: []string{"-hold"}, IP: n.DNSIP()})
	home := cptest.NewCPHome(t, "firewall: {enable: true, upstream_dns: [\"127.0.0.1:53\"]}\ncontrol_plane: {watcher: {enable: false}}\n")
	var labels []string
	for k, v := range n.Labels {
		labels = append(labels, k+"="+v)
	}
	p := cptest.StartCP(t, home, cpBinary(t), "CLAWKER_CP_DEBUG_PIN_DIR="+cptest.TestPinDir(t), "CLAWKER_CP_DEBUG_NETWORK="+n.Name,
		"CLAWKER_CP_STACK_DIR="+stackDir, "CLAWKER_DEBUG_LABELS="+strings.Join(labels, ","))
	if code := p.MustExit(t, 90*time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	failed := p.Events("startup_failed")
	if len(failed) != 1 {
		t.Fatalf("startup_failed lines %v, want one", failed)
	}
	e, _ := failed[0]["error"].(string)
	for _, want := range []string{"DNS server", n.Name + "-dns", n.DNSIP().String(), "docker logs"} {
		if !strings.Contains(e, want) {
			t.Errorf("startup_failed error %q does not contain %q", e, want)
		}
	}
}

// BenchmarkRuleAddToEnforced: from the FirewallAddRules answer to the
// first connection through the proxy allowed by the new rule, dialled from
// the host straight at the proxy's catch-all with that SNI (no agent exec
// in the measurement). Reports p50/p99 of that gap and of the
// FirewallAddRules call itself.
func BenchmarkRuleAddToEnforced(b *testing.B) {
	r := newStackRig(b)
	proxy := net.JoinHostPort(r.net.ProxyIP().String(), fmt.Sprint(proxyPort))
	var gaps, calls []time.Duration
	for i := 0; b.Loop(); i++ {
		name := "allowed.test"
		rule := &adminv1.EgressRule{Dst: name}
		start := time.Now()
		r.addRules(b, rule)
		answered := time.Now()
		for {
			if handshake(proxy, name) == nil {
				break
			}
			if time.Since(answered) > 5*time.Second {
				b.Fatalf("no connection allowed 5s after FirewallAddRules answered")
			}
		}
		gaps = append(gaps, time.Since(answered))
		calls = append(calls, answered.Sub(start))
		r.removeRule(b, rule)
		if err := handshake(proxy, name); err == nil {
			b.Fatal("a connection was allowed after the rule's removal was answered")
		}
	}
	report := func(ds []time.Duration, unit string) {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		b.ReportMetric(float64(ds[len(ds)/2].Microseconds()), unit+"-p50-µs")
		b.ReportMetric(float64(ds[(len(ds)*99)/100].Microseconds()), unit+"-p99-µs")
	}
	report(gaps, "enforced")
	report(calls, "addrules")
}

// handshake completes a TLS handshake with SNI name through addr.
func handshake(addr, name string) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, &tls.Config{ServerName: name, InsecureSkipVerify: true})
	if err != nil {
		return err
	}
	return c.Close()
}

// BenchmarkDNSAllowedCached: A queries for an allowed, cached name sent
// from the host straight to the DNS sibling (each answer still reported to
// the CP before it leaves), against the same queries sent to the test's
// authority directly. Reports queries/s and per-query p50/p99.
func BenchmarkDNSAllowedCached(b *testing.B) {
	r := newStackRig(b)
	r.addRules(b, &adminv1.EgressRule{Dst: "allowed.test"})
	targets := map[string]string{
		"sibling":   net.JoinHostPort(r.net.DNSIP().String(), "53"),
		"authority": r.world.auth.Addr.String(),
	}
	for _, name := range []string{"sibling", "authority"} {
		addr := targets[name]
		b.Run(name, func(b *testing.B) {
			var mu sync.Mutex
			var lat []time.Duration
			start := time.Now()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				c, err := net.Dial("udp", addr)
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				q := dnsQueryA("allowed.test")
				buf := make([]byte, 1500)
				var mine []time.Duration
				for pb.Next() {
					t0 := time.Now()
					_ = c.SetDeadline(t0.Add(2 * time.Second))
					if _, err := c.Write(q); err != nil {
						b.Error(err)
						return
					}
					if _, err := c.Read(buf); err != nil {
						b.Error(err)
						return
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			elapsed := time.Since(start)
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			if len(lat) > 0 {
				b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "queries/s")
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(lat[(len(lat)*99)/100].Microseconds()), "p99-µs")
			}
		})
	}
}

// dnsQueryA is a minimal A query for name with a fixed id (each client
// socket has one query in flight at a time).
func dnsQueryA(name string) []byte {
	q := []byte{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, label := range strings.Split(name, ".") {
		q = append(q, byte(len(label)))
		q = append(q, label...)
	}
	return append(q, 0, 0, 1, 0, 1)
}

// dockerEmbeddedDNS is where Docker's resolver listens inside every
// container of a user-defined network (its ports are random).
var dockerEmbeddedDNS = netip.MustParseAddr("127.0.0.11")
