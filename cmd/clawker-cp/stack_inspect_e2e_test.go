package main_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	docker "github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/cptest/netprobe"
	"github.com/clawker/clawker-cp/pkg/settings"
	"github.com/clawker/clawker-cp/pkg/sibling"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// TLS inspection end to end: a clawker-cp on the host runs the real DNS
// and proxy siblings; the test's "internet" on the network's gateway is a
// DNS authority and an HTTPS server whose certificate chains to a CA of
// this test, given to the proxy as firewall.upstream_ca. The agent (a probe
// container labelled as one) trusts the firewall CA the control plane made
// when the first path rule arrived: the test copies it in, as `clawker run`
// does for real agents.
func TestFirewallStackInspectionEndToEnd(t *testing.T) {
	d := cptest.RequireDocker(t)
	stackDir := cptest.StackDir(t)
	net0 := cptest.NewTestNet(t, d, cptest.NewRunID(), cptest.TestNetOptions{})
	gw := net0.Gateway

	// The internet: inspect.test and plain.test at the gateway, one HTTPS
	// server for both with a leaf of this test's own CA.
	auth := cptest.StartAuthority(t, gw, map[string][]netip.Addr{"inspect.test": {gw}, "plain.test": {gw}})
	caPEM, leaf, leafFP := cptest.UpstreamCert(t, "inspect.test", "plain.test")
	var mu sync.Mutex
	served := map[string]int{} // method+path the upstream served
	srvMux := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		mu.Lock()
		served[r.Method+" "+r.URL.Path]++
		mu.Unlock()
		fmt.Fprintf(rw, "upstream %s %s %s\n", r.Host, r.Method, r.URL.Path)
	})
	ln, err := net.Listen("tcp4", net.JoinHostPort(gw.String(), "443"))
	if err != nil {
		t.Fatalf("listening on %s:443: %v", gw, err)
	}
	hs := &http.Server{Handler: srvMux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{leaf}}}
	go func() { _ = hs.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { hs.Close() })
	servedCount := func(k string) int {
		mu.Lock()
		defer mu.Unlock()
		return served[k]
	}

	home := cptest.NewCPHome(t, fmt.Sprintf(
		"firewall: {enable: true, proxy_port: %d, upstream_dns: [%q], private_destinations: [%q], upstream_ca: %q}\ncontrol_plane: {watcher: {enable: false}}\n",
		proxyPort, auth.Addr.String(), gw.String(), caPEM))
	var labels []string
	for k, v := range net0.Labels {
		labels = append(labels, k+"="+v)
	}
	cp := cptest.StartCP(t, home, cpBinary(t), "CLAWKER_CP_DEBUG_PIN_DIR="+cptest.TestPinDir(t), "CLAWKER_CP_DEBUG_NETWORK="+net0.Name,
		"CLAWKER_CP_ORY_DIR="+cptest.OryDir(t), "CLAWKER_CP_STACK_DIR="+stackDir, "CLAWKER_DEBUG_LABELS="+strings.Join(labels, ","))
	cp.WaitHealthy(t, 90*time.Second)
	s, err := settings.Load(home.SettingsFile(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	admin, err := adminclient.Dial(ctx, home.Paths(t), s, adminclient.WithOAuth())
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	r := &stackRig{d: d, net: net0, home: home, cp: cp, admin: admin}

	res := r.addRules(t,
		&adminv1.EgressRule{Dst: "inspect.test", PathRules: []*adminv1.PathRule{{Path: "/v1/", Methods: []string{"GET"}}}},
		&adminv1.EgressRule{Dst: "plain.test"},
	)
	for i, st := range res.GetStatuses() {
		if st != adminv1.RuleStatus_RULE_STATUS_ADDED {
			t.Fatalf("rule %d: %v, want ADDED", i, st)
		}
	}
	// The first path rule made the firewall CA, in the rules directory.
	var fw *certs.FirewallCA
	cptest.WaitFor(t, 10*time.Second, "the firewall CA", func() (bool, string) {
		fw, err = certs.LoadFirewallCA(home.Paths(t).FirewallDir)
		return err == nil, fmt.Sprint(err)
	})
	r.startAgent(t)
	copyIntoContainer(t, d, r.agent.ID, "firewall-ca.crt", fw.CertPEM)
	const trust = ",ca=/firewall-ca.crt"

	t.Run("allowed path: 200 from the real upstream through the re-encrypted leg, a leaf of the firewall CA", func(t *testing.T) {
		var o = r.try(t, "https:inspect.test,path=/v1/items"+trust)
		if !o.OK || o.Status != 200 || o.Reply != "upstream inspect.test GET /v1/items" {
			t.Fatalf("https inspect.test/v1/items: %+v", o)
		}
		if o.Cert == leafFP {
			t.Fatal("the agent saw the upstream's own leaf: the name was not inspected")
		}
		if servedCount("GET /v1/items") != 1 {
			t.Fatalf("the upstream served %v", served)
		}
	})
	t.Run("denied path: 403 naming host, method, path and the allow command; nothing reaches the upstream", func(t *testing.T) {
		o := r.try(t, "https:inspect.test,path=/admin/keys"+trust)
		if !o.OK || o.Status != 403 || !strings.Contains(o.Reply, "GET https://inspect.test/admin/keys denied") {
			t.Fatalf("https inspect.test/admin/keys: %+v", o)
		}
		// Normalisation: a dot segment does not slip past /v1/.
		if o := r.try(t, "https:inspect.test,path=/v1/../admin/keys"+trust); o.Status != 403 {
			t.Fatalf("/v1/../admin/keys: %+v, want 403", o)
		}
		if n := servedCount("GET /admin/keys"); n != 0 {
			t.Fatalf("the upstream served /admin/keys %d times", n)
		}
	})
	t.Run("the refusal in firewall denied, where path", func(t *testing.T) {
		var g *adminv1.DeniedGroup
		cptest.WaitFor(t, 10*time.Second, "the path refusal in firewall denied", func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			res, err := r.admin.FirewallDenied(ctx, &adminv1.FirewallDeniedRequest{})
			if err != nil {
				return false, err.Error()
			}
			for _, x := range res.GetGroups() {
				if x.GetWhere() == "path" && x.GetName() == "inspect.test" && x.GetPath() == "/admin/keys" {
					g = x
				}
			}
			// The proxy batches its refusals to the control plane: wait
			// for both (the plain and the dot-segment form).
			return g.GetCount() >= 2, fmt.Sprint(res.GetGroups())
		})
		want := "clawker firewall add inspect.test --path /admin/keys --action allow --methods GET"
		if g.GetMethod() != "GET" || g.GetProto() != "https" || g.GetAllow() != want || g.GetCount() != 2 ||
			len(g.GetAgents()) != 1 || g.GetAgents()[0] != "fwtest/probe" {
			t.Fatalf("group %v, want 2 GET refusals by fwtest/probe allowed by %q", g, want)
		}
	})
	t.Run("running the suggested command lets the next request through", func(t *testing.T) {
		// The allow line of the group above, as the CLI would send it.
		args := strings.Fields("clawker firewall add inspect.test --path /admin/keys --action allow --methods GET")
		rule := &adminv1.EgressRule{Dst: args[3]}
		pr := &adminv1.PathRule{}
		for i := 4; i+1 < len(args); i += 2 {
			switch args[i] {
			case "--path":
				pr.Path = args[i+1]
			case "--action":
				pr.Action = args[i+1]
			case "--methods":
				pr.Methods = strings.Split(args[i+1], ",")
			default:
				t.Fatalf("flag %s in the suggested command", args[i])
			}
		}
		rule.PathRules = []*adminv1.PathRule{pr}
		if st := r.addRules(t, rule).GetStatuses(); len(st) != 1 || st[0] != adminv1.RuleStatus_RULE_STATUS_MODIFIED {
			t.Fatalf("adding the suggested path rule: %v, want MODIFIED", st)
		}
		var o netprobe.Outcome
		cptest.WaitFor(t, 10*time.Second, "/admin/keys allowed", func() (bool, string) {
			o = r.try(t, "https:inspect.test,path=/admin/keys"+trust)
			return o.Status == 200, fmt.Sprintf("%+v", o)
		})
		if o.Reply != "upstream inspect.test GET /admin/keys" || servedCount("GET /admin/keys") != 1 {
			t.Fatalf("after the rule: %+v, upstream served %d", o, servedCount("GET /admin/keys"))
		}
	})
	t.Run("a name without path rules stays passthrough", func(t *testing.T) {
		o := r.try(t, "https:plain.test,path=/anything")
		if !o.OK || o.Status != 200 || o.Cert != leafFP {
			t.Fatalf("https plain.test: %+v, want the upstream's own leaf %s", o, leafFP)
		}
	})
	t.Run("the proxy image carries the host's roots", func(t *testing.T) {
		logs := sibling.LogTail(context.Background(), d, firewall.SiblingName(net0.Name, "proxy"), 200)
		if strings.Contains(logs, "no system roots") || !strings.Contains(logs, "firewall.upstream_ca adds its roots") ||
			!strings.Contains(logs, "firewall CA "+fw.Fingerprint[:16]) {
			t.Fatalf("proxy log:\n%s", logs)
		}
	})
}

// copyIntoContainer puts one file at /name in a running container.
func copyIntoContainer(t *testing.T, d *docker.Client, id, name string, data []byte) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write(data)
	tw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := d.CopyToContainer(ctx, id, docker.CopyToContainerOptions{DestinationPath: "/", Content: &buf}); err != nil {
		t.Fatalf("copying %s into %s: %v", name, id, err)
	}
}
