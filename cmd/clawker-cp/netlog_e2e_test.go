package main_test

import (
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/netlog/netlogtest"
)

// The egress event log end to end: a clawker-cp process with the firewall
// on (the fwRig's network and stand-ins) and monitoring.otlp_endpoint set
// to a real OTLP/gRPC logs receiver in this process, TLS with the CP's
// server certificate and requiring a client certificate of the clawker CA
// (the CP presents clawker-netlogger). Agents are probe containers whose
// connects are made by exec inside their cgroup. Not parallel, like every
// test with agents: the CP enforces every agent container on the host.

// nlAttempts are one allowed, one redirected and one denied connect, and
// the attributes each record must carry besides the agent's.
type nlAttempt struct {
	what    string
	verdict string
	attrs   map[string]any
}

func nlAttempts(r *fwRig) []nlAttempt {
	proxy := r.net.ProxyIP().String()
	peer := r.net.Addr(150).String()
	return []nlAttempt{
		{"tcp:" + proxy + ":" + strconv.Itoa(proxyPort), "allow-target",
			map[string]any{"action": "allowed", "dst_ip": proxy, "dst_port": int64(proxyPort), "l4_proto": "tcp"}},
		{"tcp:" + farAddr, "redirect-proxy",
			map[string]any{"action": "redirected", "dst_ip": "198.51.100.7", "dst_port": int64(443), "new_ip": proxy, "new_port": int64(proxyPort), "l4_proto": "tcp"}},
		{"tcp:" + peer + ":8080", "deny-subnet",
			map[string]any{"action": "denied", "dst_ip": peer, "dst_port": int64(8080), "l4_proto": "tcp"}},
	}
}

// nlRecords are the receiver's connect records of one container.
func nlRecords(rcv *netlogtest.Receiver, containerID string) []netlogtest.Record {
	var out []netlogtest.Record
	for _, r := range rcv.Records() {
		if r.Attrs["container_id"] == containerID && r.Log.EventName == "ebpf.egress.connect" {
			out = append(out, r)
		}
	}
	return out
}

// checkAgentRecords waits for one record of each attempt by the agent
// and checks every attribute the issue names, exactly.
func checkAgentRecords(t *testing.T, rcv *netlogtest.Receiver, agent *cptest.ProbeContainer, project, name string, attempts []nlAttempt, cgid uint64) {
	t.Helper()
	byVerdict := map[string]netlogtest.Record{}
	cptest.WaitFor(t, 30*time.Second, "the records of "+name, func() (bool, string) {
		for _, r := range nlRecords(rcv, agent.ID) {
			if v, _ := r.Attrs["verdict"].(string); v != "" {
				if _, ok := byVerdict[v]; !ok {
					byVerdict[v] = r
				}
			}
		}
		for _, a := range attempts {
			if _, ok := byVerdict[a.verdict]; !ok {
				return false, fmt.Sprintf("%d records of %s, none %s (all: %d)", len(byVerdict), name, a.verdict, rcv.Count())
			}
		}
		return true, ""
	})
	for _, a := range attempts {
		r := byVerdict[a.verdict]
		want := map[string]any{"agent": name, "project": project, "container_id": agent.ID, "verdict": a.verdict,
			"cgroup_id": int64(cgid), "ipv6": false, "ipv4_mapped": false}
		for k, v := range a.attrs {
			want[k] = v
		}
		for k, v := range want {
			if r.Attrs[k] != v {
				t.Errorf("%s %s: %s = %v (%T), want %v", name, a.what, k, r.Attrs[k], r.Attrs[k], v)
			}
		}
		if _, ok := r.Attrs["new_ip"]; ok && a.attrs["action"] != "redirected" {
			t.Errorf("%s %s: new_ip on a record that was not redirected: %v", name, a.what, r.Attrs)
		}
		if r.Service != "ebpf-egress" || r.Scope != "clawker.netlogger" || r.ClientCN != certs.NetloggerCommonName || r.Host == "" {
			t.Errorf("%s %s: service %q scope %q client %q host %q", name, a.what, r.Service, r.Scope, r.ClientCN, r.Host)
		}
		if r.Log.SeverityText != "INFO" {
			t.Errorf("%s %s: severity %q", name, a.what, r.Log.SeverityText)
		}
	}
}

// scrapeMetrics reads the CP's GET /metrics.
func scrapeMetrics(t *testing.T, r *fwRig) string {
	t.Helper()
	resp, err := http.Get(r.cp.HealthURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v\n%s", resp.StatusCode, err, b)
	}
	return string(b)
}

// metric is one series' value in an exposition ("name" or
// `name{labels}` as printed), -1 when absent.
func metric(body, series string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return -1
	}
	return v
}

func TestNetlogEndToEnd(t *testing.T) {
	d := cptest.RequireDocker(t)
	r := &fwRig{d: d, bin: cpBinary(t), pinDir: cptest.TestPinDir(t)}
	r.net = cptest.NewTestNet(t, d, cptest.NewRunID(), cptest.TestNetOptions{})
	r.proxy, r.dns = r.net.StartFirewallStandins(t, proxyPort)

	r.home = cptest.NewHome(t)
	m := r.home.EnsureAuth(t)
	rcv := netlogtest.NewReceiver(t, m, "127.0.0.1:0")
	rcv.Start(t)
	caFile := filepath.Join(t.TempDir(), "collector-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.CA.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	monitoring := fmt.Sprintf("monitoring: {otlp_endpoint: %q, otlp_ca: %q, egress_events_per_second: 1000000}\n", rcv.Addr, caFile)
	base := fmt.Sprintf("firewall: {enable: true, proxy_port: %d}\ncontrol_plane: {watcher: {enable: false}}\n", proxyPort)
	r.home.WriteSettingsWithPorts(t, base+monitoring)

	labels := func(agent string) map[string]string {
		return map[string]string{dockerx.LabelManaged: "true", dockerx.LabelPurpose: dockerx.PurposeAgent,
			dockerx.LabelProject: "nltest", dockerx.LabelAgent: agent}
	}
	// Running before the CP: enforced from Docker's listing at start,
	// before the netlogger's first enrichment.
	early := r.hold(t, labels("early"))
	r.startCP(t)
	admin := r.admin(t)
	earlyCg := r.enforcedCgroup(t, admin, early.ID, 0)
	late := r.hold(t, labels("late"))
	lateCg := r.enforcedCgroup(t, admin, late.ID, 0)
	attempts := nlAttempts(r)
	var whats []string
	for _, a := range attempts {
		whats = append(whats, a.what)
	}

	t.Run("records", func(t *testing.T) {
		for _, c := range []struct {
			agent *cptest.ProbeContainer
			name  string
			cgid  uint64
		}{{early, "early", earlyCg}, {late, "late", lateCg}} {
			res := r.exec(t, c.agent, whats...)
			if o := res.Must(t, attempts[1].what); !redirectedToProxy(o) {
				t.Fatalf("%s: the redirected connect did not reach the proxy: %+v", c.name, o)
			}
			if o := res.Must(t, attempts[2].what); !denied(o) {
				t.Fatalf("%s: the denied connect: %+v", c.name, o)
			}
			checkAgentRecords(t, rcv, c.agent, "nltest", c.name, attempts, c.cgid)
		}
		cfg, err := egress.ReadPinnedConfig(r.pinDir, earlyCg)
		if err != nil || !cfg.Events {
			t.Errorf("events flag of the early agent's cgroup with an endpoint: %v %+v", err, cfg)
		}
		body := scrapeMetrics(t, r)
		for _, s := range []string{"clawker_ebpf_events_total", `clawker_firewall_decisions_total{action="denied"}`,
			`clawker_firewall_decisions_total{action="redirected"}`, "clawker_netlogger_records_exported_total",
			`clawker_grpc_handled_total{code="OK",method="FirewallStatus",server="admin",service="clawker.admin.v1.AdminService"}`} {
			if v := metric(body, s); v < 1 {
				t.Errorf("%s = %v, want at least 1", s, v)
			}
		}
		if v := metric(body, "clawker_netlogger_collector_up"); v != 1 {
			t.Errorf("collector_up %v", v)
		}
	})

	t.Run("collector away and back", func(t *testing.T) {
		rcv.Stop()
		r.cp.WaitForEvent(t, 30*time.Second, "netlogger_unavailable")
		// Enforcement does not wait on the collector.
		res := r.exec(t, late, whats...)
		if o := res.Must(t, attempts[1].what); !redirectedToProxy(o) {
			t.Errorf("redirect with the collector away: %+v", o)
		}
		if o := res.Must(t, attempts[2].what); !denied(o) {
			t.Errorf("deny with the collector away: %+v", o)
		}
		before := len(nlRecords(rcv, late.ID))
		r.cp.WaitFor(t, 10*time.Second, "collector_up 0 on /metrics", func() (bool, string) {
			v := metric(scrapeMetrics(t, r), "clawker_netlogger_collector_up")
			return v == 0, fmt.Sprint(v)
		})
		rcv.Start(t)
		r.cp.WaitForEvent(t, 30*time.Second, "netlogger_available")
		// What waited in the buffer arrives, and what comes next flows.
		r.exec(t, late, attempts[2].what)
		r.cp.WaitFor(t, 30*time.Second, "the buffered and the new records", func() (bool, string) {
			n := len(nlRecords(rcv, late.ID)) - before
			return n >= len(attempts)+1, fmt.Sprintf("%d new records of late", n)
		})
		if n := len(r.cp.Events("netlogger_unavailable")); n != 1 {
			t.Errorf("%d netlogger_unavailable lines for one outage", n)
		}
	})

	t.Run("SIGTERM right after a burst", func(t *testing.T) {
		const burst = 3000
		res := cptest.ExecProbe(t, d, late.ID, "", "-loop", "-count", strconv.Itoa(burst), "-interval", "0", "-timeout", "1s", attempts[2].what)
		if len(res.Outcomes) != burst {
			t.Fatalf("%d outcomes of %d", len(res.Outcomes), burst)
		}
		if err := r.cp.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := r.cp.MustExit(t, 60*time.Second); code != 0 {
			t.Fatalf("exit %d", code)
		}
		var step map[string]any
		for _, l := range r.cp.Events("drain_step") {
			if l["step"] == "netlogger_stop" {
				step = l
			}
		}
		if step == nil || step["outcome"] != "done" {
			t.Fatalf("netlogger_stop: %v", step)
		}
		var read, exported int
		if _, err := fmt.Sscanf(step["detail"].(string), "read %d records from the ring, exported %d", &read, &exported); err != nil {
			t.Fatalf("netlogger_stop detail %q: %v", step["detail"], err)
		}
		// Every record read reached the receiver (an export cut by the
		// outage may have been delivered twice: count distinct records).
		distinct := map[string]bool{}
		for _, rec := range rcv.Records() {
			distinct[fmt.Sprint(rec.Log.TimeUnixNano, rec.Attrs["cgroup_id"], rec.Attrs["pid"], rec.Attrs["verdict"], rec.Attrs["dst_ip"], rec.Attrs["dst_port"])] = true
		}
		if read != exported || len(distinct) != read {
			t.Fatalf("drain: read %d, exported %d, the receiver holds %d distinct records (%d in all)", read, exported, len(distinct), rcv.Count())
		}
		deniedBurst := 0
		for _, rec := range nlRecords(rcv, late.ID) {
			if rec.Attrs["verdict"] == "deny-subnet" {
				deniedBurst++
			}
		}
		if deniedBurst < burst {
			t.Fatalf("%d deny-subnet records of late, want at least the burst's %d", deniedBurst, burst)
		}
		t.Logf("drain: %v", step["detail"])
	})

	t.Run("no endpoint: events off in BPF", func(t *testing.T) {
		r.home.WriteSettingsWithPorts(t, base)
		r.startCP(t)
		r.cp.WaitForEvent(t, 30*time.Second, "netlogger_off")
		admin := r.admin(t)
		cg := r.enforcedCgroup(t, admin, late.ID, 0)
		cfg, err := egress.ReadPinnedConfig(r.pinDir, cg)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Events {
			t.Fatalf("events flag on without monitoring.otlp_endpoint: %+v", cfg)
		}
		if v := metric(scrapeMetrics(t, r), "clawker_netlogger_enabled"); v != 0 {
			t.Errorf("netlogger_enabled %v without an endpoint", v)
		}
	})
}
