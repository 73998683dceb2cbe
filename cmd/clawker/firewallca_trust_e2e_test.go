package main_test

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/agentrun"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/clawkercli"
	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/cptest/netprobe"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/testkit"
)

// TestFirewallCATrustEndToEnd: the trust `clawker run` gives an agent is
// the trust the real proxy's leaves need. A clawker carrying the firewall
// siblings brings up the CP in its container, which runs the real DNS and
// proxy siblings on clawker-net; the test's "internet" on the network's
// gateway is a DNS authority (firewall.upstream_dns) and an HTTPS server
// with a leaf of the test's own CA (firewall.upstream_ca). inspect.test has
// a path rule, so the proxy inspects it. An agent of the real `clawker run`,
// whose image has a root of its own, verifies the proxy's leaf through
// $SSL_CERT_FILE (allowed path 200 from the upstream, denied path 403) and
// not through the image's roots alone. After `clawker firewall rotate-ca`
// (which lists it as still trusting the old CA) the old agent fails the
// handshake, while a new agent verifies the new leaves.
func TestFirewallCATrustEndToEnd(t *testing.T) {
	d := cptest.RequireDocker(t)
	run := cptest.NewRunID()
	e := &e2e{d: d, run: run, labels: cptest.TestLabels(run)}
	if c, ok := e.cpExists(t); ok {
		testkit.SkipOrFail(t, fmt.Sprintf("a %s container exists on this host (labels %v); this test needs the name: remove it first", cpboot.ContainerName, c.Config.Labels))
	}
	t.Cleanup(func() { cptest.RemoveLabelled(t, d, e.labels) })
	bins := cptest.BuildClawkerWithStack(t)
	e.bin, e.hash = bins["clawker"], bundleHash(t, bins)
	e.home = cptest.NewHome(t)
	flushProductionPinsAfter(t)

	// A first CP, firewall off, makes clawker-net: the world is on its
	// gateway, and the firewall's settings name it.
	e.writeSettings(t, "")
	e.mustUp(t, coldUpTimeout)
	n := cptest.AttachTestNet(t, d, run, cpboot.NetworkName)
	e.removeCP(t)
	gw := n.Gateway
	const host = "inspect.test"
	auth := cptest.StartAuthority(t, gw, map[string][]netip.Addr{host: {gw}})
	upstreamCA, upstreamLeaf, upstreamFP := cptest.UpstreamCert(t, host)
	ln, err := net.Listen("tcp4", net.JoinHostPort(gw.String(), "443"))
	if err != nil {
		t.Fatalf("listening on %s:443: %v", gw, err)
	}
	hs := &http.Server{
		Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(rw, "upstream %s %s\n", r.Method, r.URL.Path)
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{upstreamLeaf}},
	}
	go func() { _ = hs.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { hs.Close() })

	e.writeSettings(t, fmt.Sprintf("firewall: {enable: true, upstream_dns: [%q], private_destinations: [%q], upstream_ca: %q}",
		auth.Addr.String(), gw.String(), upstreamCA))
	e.mustUp(t, coldUpTimeout)
	// Runs first (cleanups run last first): the drain lifts the pins
	// before the flush above looks.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s", e.cpLogs(t, 80))
		}
		if r := e.clawker(t, 3*time.Minute, "controlplane", "down", "--force"); r.Code != 0 {
			t.Errorf("down --force: exit %d\n%s", r.Code, r.Stderr)
		}
	})
	if r := e.clawker(t, cmdTimeout, "firewall", "add", host, "--path", "/v1/", "--action", "allow"); r.Code != 0 {
		t.Fatalf("firewall add %s --path /v1/: exit %d\n%s", host, r.Code, r.Stderr)
	}

	// The agents' image: the probe and a root of its own.
	rootFile := filepath.Join(t.TempDir(), "roots.pem")
	if err := os.WriteFile(rootFile, testImageRoot(t), 0o644); err != nil {
		t.Fatal(err)
	}
	const imageRoots = "/etc/ssl/certs/ca-certificates.crt"
	ref := "clawker-test-trust:" + run
	cptest.BuildImage(t, d, ref, cptest.ScratchImage{
		Files:  map[string]string{"probe": cptest.NetprobeBinaries(t)["probe"], strings.TrimPrefix(imageRoots, "/"): rootFile},
		Cmd:    []string{cptest.ProbePath, "-hold"},
		Labels: cptest.TestLabels(run),
	})
	fwDir := filepath.Join(e.home.DataHome, "clawker", "firewall")

	old := trustAgent(t, e, "old", ref)
	ca, err := certs.LoadFirewallCA(fwDir)
	if err != nil {
		t.Fatal(err)
	}
	allowed := "https:" + host + ",path=/v1/items,ca=" + old.bundle
	o := old.waitProbe(t, e, allowed, func(o netprobe.Outcome) bool { return o.OK && o.Status == 200 })
	if o.Reply != "upstream GET /v1/items" || o.Cert == upstreamFP {
		t.Fatalf("allowed path through the bundle: %+v, want the upstream's reply under a leaf that is not the upstream's own (%s)", o, upstreamFP)
	}
	if o := old.probe(t, e, "https:"+host+",path=/admin/keys,ca="+old.bundle); !o.OK || o.Status != 403 || !strings.Contains(o.Reply, "GET https://"+host+"/admin/keys denied") {
		t.Errorf("denied path through the bundle: %+v, want the proxy's 403", o)
	}
	if o := old.probe(t, e, "https:"+host+",path=/v1/items,ca="+imageRoots); o.OK || o.Syscall != "tls" {
		t.Errorf("allowed path through the image's roots alone: %+v, want a tls failure (the leaf is the proxy's)", o)
	}

	rot := e.clawker(t, cmdTimeout, "firewall", "rotate-ca", "--format", "json")
	if rot.Code != 0 {
		t.Fatalf("firewall rotate-ca: exit %d\n%s", rot.Code, rot.Stderr)
	}
	var rr clawkercli.RotateCAReport
	if err := json.Unmarshal([]byte(rot.Stdout), &rr); err != nil {
		t.Fatalf("rotate-ca --format json: %v\n%s", err, rot.Stdout)
	}
	if rr.PreviousFingerprint != ca.Fingerprint || rr.Fingerprint == ca.Fingerprint || !slices.Contains(rr.StillTrustingOld, "fw/old") {
		t.Fatalf("rotate-ca: %+v; want %s replaced and fw/old still trusting it", rr, ca.Fingerprint)
	}

	fresh := trustAgent(t, e, "new", ref)
	if got := fresh.label; got != rr.Fingerprint {
		t.Errorf("the new agent trusts CA %s, want the rotated %s", got, rr.Fingerprint)
	}
	o = fresh.waitProbe(t, e, "https:"+host+",path=/v1/items,ca="+fresh.bundle, func(o netprobe.Outcome) bool { return o.OK && o.Status == 200 })
	if o.Reply != "upstream GET /v1/items" {
		t.Errorf("new agent, allowed path: %+v", o)
	}
	if o := old.probe(t, e, allowed); o.OK || o.Syscall != "tls" || !strings.Contains(o.Error, "certificate") {
		t.Errorf("old agent after rotate-ca: %+v, want a failed verification", o)
	}
	t.Logf("CA %s -> %s; fw/old refused the new leaves, fw/new verified them", rr.PreviousFingerprint[:12], rr.Fingerprint[:12])
}

// trustedAgent is an agent of `clawker run` and the bundle its container's
// SSL_CERT_FILE names.
type trustedAgent struct {
	id, bundle, label string
}

func trustAgent(t *testing.T, e *e2e, name, ref string) trustedAgent {
	t.Helper()
	res := e.clawker(t, cmdTimeout, "run", "--project", "fw", "--agent", name, "--format", "json", ref)
	if res.Code != 0 {
		t.Fatalf("clawker run fw/%s: exit %d\n%s\n%s", name, res.Code, res.Stderr, e.cpLogs(t, 30))
	}
	t.Cleanup(func() {
		if r := e.clawker(t, cmdTimeout, "rm", "-f", "--project", "fw", "--agent", name); r.Code != 0 {
			t.Errorf("rm fw/%s: %s", name, r.Stderr)
		}
	})
	var rep clawkercli.RunReport
	if err := json.Unmarshal([]byte(res.Stdout), &rep); err != nil {
		t.Fatalf("run --format json: %v\n%s", err, res.Stdout)
	}
	c := e.inspect(t, rep.Agent.ID)
	a := trustedAgent{id: rep.Agent.ID, label: c.Config.Labels[dockerx.LabelFirewallCA]}
	for _, kv := range c.Config.Env {
		if v, ok := strings.CutPrefix(kv, "SSL_CERT_FILE="); ok {
			a.bundle = v
		}
	}
	if a.bundle != agentrun.FirewallCABundlePath {
		t.Fatalf("fw/%s: SSL_CERT_FILE=%q, want %s", name, a.bundle, agentrun.FirewallCABundlePath)
	}
	return a
}

func (a trustedAgent) probe(t *testing.T, e *e2e, attempt string) netprobe.Outcome {
	t.Helper()
	return cptest.ExecProbe(t, e.d, a.id, "", "-timeout", "5s", attempt).Must(t, attempt)
}

// waitProbe repeats attempt until ok holds (the agent's enforcement and the
// proxy's CA arrive asynchronously), failing with the last outcome.
func (a trustedAgent) waitProbe(t *testing.T, e *e2e, attempt string, ok func(netprobe.Outcome) bool) netprobe.Outcome {
	t.Helper()
	var o netprobe.Outcome
	cptest.WaitFor(t, time.Minute, attempt, func() (bool, string) {
		o = a.probe(t, e, attempt)
		return ok(o), fmt.Sprintf("%+v", o)
	})
	return o
}
