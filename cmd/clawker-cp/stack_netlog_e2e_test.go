package main_test

import (
	"context"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	docker "github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/netlog"
	"github.com/clawker/clawker-cp/pkg/netlog/netlogtest"
	"github.com/clawker/clawker-cp/pkg/settings"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// The siblings' log lines end to end: a real CP with its real DNS and
// proxy siblings and monitoring.otlp_endpoint set to a real receiver in
// this process. Their startup lines, the proxy's access line of an
// agent's HTTPS request and the DNS query-log line of its lookup arrive
// as clawker-dns / clawker-proxy records;
// the proxy container removed under the CP (the stack owner recreates
// it) is followed again: its successor's lines arrive, none twice.
func TestFirewallStackSiblingLogsEndToEnd(t *testing.T) {
	d := cptest.RequireDocker(t)
	stackDir := cptest.StackDir(t)
	r := &stackRig{d: d}
	r.net = cptest.NewTestNet(t, d, cptest.NewRunID(), cptest.TestNetOptions{})
	r.world = startWorld(t, r.net.Gateway)
	r.home = cptest.NewHome(t)
	m := r.home.EnsureAuth(t)
	rcv := netlogtest.NewReceiver(t, m, "127.0.0.1:0")
	rcv.Start(t)
	caFile := filepath.Join(t.TempDir(), "collector-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.CA.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	r.home.WriteSettingsWithPorts(t, fmt.Sprintf(
		"firewall: {enable: true, proxy_port: %d, upstream_dns: [%q], private_destinations: [%q]}\ncontrol_plane: {watcher: {enable: false}}\n"+
			"monitoring: {otlp_endpoint: %q, otlp_ca: %q}\n",
		proxyPort, r.world.auth.Addr.String(), r.net.Gateway.String(), rcv.Addr, caFile))
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

	memberID := func(dns bool) string {
		for _, mb := range r.status(t).GetStack() {
			if strings.HasSuffix(mb.GetAddress(), ":53") == dns && mb.GetHealthy() {
				return mb.GetContainerId()
			}
		}
		return ""
	}
	proxyID, dnsID := memberID(false), memberID(true)
	if proxyID == "" || dnsID == "" {
		t.Fatalf("stack %+v", r.status(t).GetStack())
	}
	// find waits for a record of svc from container id that ok accepts.
	find := func(what, svc, id string, ok func(netlogtest.Record) bool) netlogtest.Record {
		t.Helper()
		var got netlogtest.Record
		cptest.WaitFor(t, 60*time.Second, what, func() (bool, string) {
			n := 0
			for _, rec := range rcv.Records() {
				if rec.Service == svc {
					n++
					if rec.Attrs["container.id"] == id && ok(rec) {
						got = rec
						return true, ""
					}
				}
			}
			return false, fmt.Sprintf("%d records of %s, none such", n, svc)
		})
		return got
	}
	body := func(prefix string) func(netlogtest.Record) bool {
		return func(rec netlogtest.Record) bool { return strings.Contains(rec.Log.Body.GetStringValue(), prefix) }
	}
	find("the DNS sibling's startup line", netlog.ServiceDNS, dnsID, body("clawker-dns:"))
	find("the proxy's startup line", netlog.ServiceProxy, proxyID, body("clawker-proxy: listening on"))

	r.addRules(t, &adminv1.EgressRule{Dst: "allowed.test"})
	r.startAgent(t)
	access := func(rec netlogtest.Record) bool {
		return rec.Log.EventName == netlog.EventProxyConnection && rec.Attrs["host"] == "allowed.test"
	}
	if o := r.try(t, "https:allowed.test"); !o.OK || o.Status != 200 {
		t.Fatalf("https allowed.test: %+v", o)
	}
	rec := find("the proxy's access line", netlog.ServiceProxy, proxyID, access)
	if src, _ := rec.Attrs["src"].(string); src == "" || rec.Attrs["verdict"] == "" || rec.Attrs["log.iostream"] != "stdout" || rec.Scope != netlog.SiblingScopeName {
		t.Fatalf("access record %+v", rec.Attrs)
	}
	if down, _ := rec.Attrs["bytes_down"].(int64); down <= 0 {
		t.Fatalf("access record bytes_down %v", rec.Attrs["bytes_down"])
	}
	if _, ok := rec.Attrs["duration_ms"]; !ok {
		t.Fatalf("access record without duration_ms: %v", rec.Attrs)
	}
	// The agent's lookup of the name: a dns.query record from the DNS
	// sibling's query log (--query-log, set because an endpoint is).
	find("the agent's lookup in the DNS query log", netlog.ServiceDNS, dnsID, func(rec netlogtest.Record) bool {
		return rec.Log.EventName == netlog.EventDNSQuery && rec.Attrs["name"] == "allowed.test" && rec.Attrs["qtype"] == "A" &&
			rec.Attrs["client"] == r.agent.IP.String() && rec.Attrs["verdict"] == "allowed" && rec.Attrs["rcode"] == "NOERROR"
	})

	// The proxy goes away under the CP; the stack owner brings a new one.
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rcancel()
	if _, err := d.ContainerRemove(rctx, proxyID, docker.ContainerRemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	var newID string
	cptest.WaitFor(t, 90*time.Second, "a new proxy sibling", func() (bool, string) {
		newID = memberID(false)
		return newID != "" && newID != proxyID, "proxy " + newID
	})
	find("the new proxy's startup line", netlog.ServiceProxy, newID, body("clawker-proxy: listening on"))
	if o := r.try(t, "https:allowed.test"); !o.OK || o.Status != 200 {
		t.Fatalf("https allowed.test through the new proxy: %+v", o)
	}
	find("the new proxy's access line", netlog.ServiceProxy, newID, access)

	// No line twice: each is one (container, daemon timestamp, stream).
	type key struct {
		id     any
		ts     uint64
		stream any
	}
	seen := map[key]int{}
	for _, rec := range rcv.Records() {
		if rec.Service == netlog.ServiceDNS || rec.Service == netlog.ServiceProxy {
			seen[key{rec.Attrs["container.id"], rec.Log.TimeUnixNano, rec.Attrs["log.iostream"]}]++
		}
	}
	for k, n := range seen {
		if n > 1 {
			t.Errorf("line %v arrived %d times", k, n)
		}
	}
	listening := 0
	for _, rec := range rcv.Records() {
		if rec.Service == netlog.ServiceProxy && body("clawker-proxy: listening on")(rec) {
			listening++
		}
	}
	if listening != 2 {
		t.Errorf("%d proxy startup lines for two proxy containers", listening)
	}
}
