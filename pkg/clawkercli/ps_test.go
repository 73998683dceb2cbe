package clawkercli_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/clawker/clawker-cp/pkg/adminclient/adminclienttest"
	"github.com/clawker/clawker-cp/pkg/clawkercli"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/cpboot"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// psDocker lists agent containers in any state, honouring the label
// filters; other calls panic (the nil embedded interface).
type psDocker struct {
	cpboot.Docker
	items []container.Summary
	lists int
}

func (d *psDocker) ContainerList(_ context.Context, o client.ContainerListOptions) (client.ContainerListResult, error) {
	d.lists++
	if !o.All || !o.Filters["label"]["dev.clawker.managed=true"] || !o.Filters["label"]["dev.clawker.purpose=agent"] {
		return client.ContainerListResult{}, errors.New("psDocker: unexpected list options")
	}
	var res client.ContainerListResult
	for _, c := range d.items {
		ok := true
		for l := range o.Filters["label"] {
			k, v, _ := strings.Cut(l, "=")
			ok = ok && c.Labels[k] == v
		}
		if ok {
			res.Items = append(res.Items, c)
		}
	}
	return res, nil
}

func (d *psDocker) add(project, agent, id string, st container.ContainerState) {
	d.items = append(d.items, container.Summary{ID: id, Names: []string{"/clawker." + project + "." + agent}, State: st, Labels: map[string]string{
		"dev.clawker.managed": "true", "dev.clawker.purpose": "agent", "dev.clawker.project": project, "dev.clawker.agent": agent,
	}})
}

const (
	newID = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
	oldID = "deadbeef00000000deadbeef00000000deadbeef00000000deadbeef00000000"
	webID = "cafe0000cafe0000cafe0000cafe0000cafe0000cafe0000cafe0000cafe0000"
)

// psHost is five agent containers, each in a state ps must tell apart:
// myapp/dev all well; myapp/review bypassed, its Session broken; myapp/new
// running but neither registered nor enforced; myapp/old exited;
// shop/web with the firewall disabled for it.
func psHost() *psDocker {
	d := &psDocker{}
	d.add("shop", "web", webID, container.StateRunning)
	d.add("myapp", "review", reviewID, container.StateRunning)
	d.add("myapp", "old", oldID, container.StateExited)
	d.add("myapp", "dev", devID, container.StateRunning)
	d.add("myapp", "new", newID, container.StateRunning)
	return d
}

var psWorld = cpapi.WorldState{Sessions: []cpapi.SessionView{
	{Agent: "myapp/dev", ContainerID: devID, State: cpapi.SessionBroken, Since: time.Date(2026, 5, 12, 9, 0, 0, 0, time.UTC)},
	// The later Session of dev is the one that counts.
	{Agent: "myapp/dev", ContainerID: devID, State: cpapi.SessionConnected, Since: time.Date(2026, 5, 12, 9, 14, 2, 0, time.UTC)},
	{Agent: "myapp/review", ContainerID: reviewID, State: cpapi.SessionBroken, Reason: "heartbeat missed", Since: time.Date(2026, 5, 12, 9, 40, 0, 0, time.UTC)},
	{Agent: "myapp/old", ContainerID: oldID, State: cpapi.SessionClosed, Since: time.Date(2026, 5, 12, 8, 0, 0, 0, time.UTC)},
	{Agent: "shop/web", ContainerID: webID, State: cpapi.SessionConnected, Since: time.Date(2026, 5, 12, 9, 30, 0, 0, time.UTC)},
}}

func psFirewall() *adminv1.FirewallStatusResponse {
	return &adminv1.FirewallStatusResponse{Enabled: true, Agents: []*adminv1.FirewallAgent{
		{ContainerId: devID, CgroupId: 4242},
		{ContainerId: reviewID, CgroupId: 4243, BypassUntil: ts("2026-05-12T09:47:18Z")},
		{ContainerId: webID, CgroupId: 4244, Disabled: true},
	}}
}

func psAgents() []*adminv1.Agent {
	return append(seedAgents(), &adminv1.Agent{Project: "shop", AgentName: "web", ContainerId: webID,
		Thumbprint: "5555aaaa5555aaaa5555aaaa5555aaaa5555aaaa5555aaaa5555aaaa5555aaaa", Connected: true})
}

// psEnv is a home whose settings point the admin and Hydra ports at a fake
// CP, the health port at a fake serving world (nil: nothing listens) and
// the Oathkeeper port at nothing, so /debug/state is read from the health
// port as from a control plane without Ory.
func psEnv(t *testing.T, d *psDocker, world *cpapi.WorldState) (clawkercli.Env, *adminclienttest.Server, *strings.Builder, *strings.Builder) {
	t.Helper()
	h := adminclienttest.NewHome(t)
	m := h.EnsureAuth(t)
	srv := adminclienttest.Serve(t, m)
	tokens := adminclienttest.ServeTokenEndpoint(t, m)
	health := deadPort(t)
	if world != nil {
		health = serve(t, map[string]func(http.ResponseWriter){"/debug/state": jsonAnswer(t, http.StatusOK, world)})
	}
	writeSettings(t, h, map[string]int{"admin_port": srv.Port, "hydra_public_port": tokens.Port, "health_port": health, "oathkeeper_port": deadPort(t)})
	var stdout, stderr strings.Builder
	// No Bootstrap: ps must not need one (a spy would show nothing, since
	// ps has no business calling it; a nil one panics nowhere).
	env := clawkercli.Env{Stdout: &stdout, Stderr: &stderr, Getenv: h.Getenv, Docker: func() (cpboot.Docker, error) { return d, nil },
		Bootstrap: func(context.Context, cpboot.Options) (cpboot.Result, error) {
			t.Error("ps brought the control plane up")
			return cpboot.Result{}, nil
		}}
	return env, srv, &stdout, &stderr
}

func writeSettings(t *testing.T, h *adminclienttest.Home, ports map[string]int) {
	t.Helper()
	keys := make([]string, 0, len(ports))
	for k := range ports {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	yaml := "control_plane:\n"
	for _, k := range keys {
		yaml += "  " + k + ": " + strconv.Itoa(ports[k]) + "\n"
	}
	p := h.Paths(t)
	if err := os.MkdirAll(filepath.Dir(p.SettingsFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.SettingsFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestPSGolden(t *testing.T) {
	for _, c := range []struct {
		golden string
		args   []string
	}{
		{"ps_table", nil},
		{"ps_table_project", []string{"--project", "myapp"}},
		{"ps_json", []string{"--format", "json"}},
	} {
		t.Run(c.golden, func(t *testing.T) {
			env, srv, stdout, stderr := psEnv(t, psHost(), &psWorld)
			srv.SetAgents(psAgents()...)
			srv.SetFirewallStatus(psFirewall())
			if code := run(t, env, append([]string{"ps"}, c.args...)...); code != 0 || stderr.Len() != 0 {
				t.Fatalf("exit %d, stderr %q", code, stderr.String())
			}
			checkGoldenFile(t, c.golden+".golden", stdout.String())
		})
	}
}

// With no control plane, Docker's list still shows, and the CP's columns
// say unknown, with why on stderr.
func TestPSControlPlaneDown(t *testing.T) {
	d := psHost()
	env, _, stdout, stderr := psEnv(t, d, nil)
	h := adminclienttest.NewHome(t)
	h.EnsureAuth(t)
	writeSettings(t, h, map[string]int{"admin_port": deadPort(t), "hydra_public_port": deadPort(t), "health_port": deadPort(t), "oathkeeper_port": deadPort(t)})
	env.Getenv = h.Getenv
	if code := run(t, env, "ps"); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	checkGoldenFile(t, "ps_cp_down.golden", stdout.String())
	if !strings.HasPrefix(stderr.String(), "note: REGISTERED, SESSION and FIREWALL are unknown: ") || strings.Count(stderr.String(), "\n") != 1 ||
		!strings.Contains(stderr.String(), "clawker controlplane up") {
		t.Errorf("stderr %q", stderr.String())
	}

	env, _, stdout, _ = psEnv(t, d, nil)
	env.Getenv = h.Getenv
	if code := run(t, env, "ps", "--format", "json"); code != 0 {
		t.Fatalf("json: exit %d", code)
	}
	var rep clawkercli.PSReport
	if err := json.Unmarshal([]byte(stdout.String()), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Agents) != 5 || len(rep.Unknown) != 3 {
		t.Fatalf("report %+v", rep)
	}
	for _, a := range rep.Agents {
		if a.Registered != nil || a.Session != "unknown" || a.Firewall != "unknown" || a.Thumbprint != "" {
			t.Errorf("%s: %+v, want the CP's fields unknown", a.Container, a)
		}
	}
}

// One view failing leaves the other two.
func TestPSOneViewFails(t *testing.T) {
	env, srv, stdout, stderr := psEnv(t, psHost(), nil) // nothing serves /debug/state
	srv.SetAgents(psAgents()...)
	srv.SetFirewallError("FirewallStatus", status.Error(codes.FailedPrecondition, "the firewall is not ready"))
	if code := run(t, env, "ps", "--project", "shop"); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	want := "AGENT  PROJECT  CONTAINER     STATE    REGISTERED    SESSION  FIREWALL\n" +
		"web    shop     cafe0000cafe  running  5555aaaa5555  unknown  unknown\n"
	if stdout.String() != want {
		t.Errorf("stdout\n%s\nwant\n%s", stdout.String(), want)
	}
	lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "note: SESSION is unknown: the control plane is not running") ||
		lines[1] != "note: FIREWALL is unknown: firewall status: the firewall is not ready" {
		t.Errorf("stderr %q", stderr.String())
	}
}

// The JSON's shape: every field of every agent, with its JSON type, and
// null (not an omitted field) for an unknown registration.
func TestPSJSONShape(t *testing.T) {
	env, srv, stdout, _ := psEnv(t, psHost(), &psWorld)
	srv.SetAgents(psAgents()...)
	srv.SetFirewallStatus(psFirewall())
	if code := run(t, env, "ps", "--format", "json"); code != 0 {
		t.Fatalf("exit %d", code)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal([]byte(stdout.String()), &top); err != nil {
		t.Fatal(err)
	}
	if _, ok := top["unknown"]; ok || len(top) != 1 {
		t.Errorf("top-level keys %v, want agents only", reflect.ValueOf(top).MapKeys())
	}
	var agents []map[string]any
	if err := json.Unmarshal(top["agents"], &agents); err != nil {
		t.Fatal(err)
	}
	kinds := func(a map[string]any) map[string]string {
		out := map[string]string{}
		for k, v := range a {
			out[k] = reflect.TypeOf(v).String()
		}
		return out
	}
	base := map[string]string{"agent": "string", "project": "string", "container": "string", "container_id": "string",
		"state": "string", "registered": "bool", "session": "string", "firewall": "string"}
	with := func(extra ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for _, k := range extra {
			m[k] = "string"
		}
		return m
	}
	// dev, new, old, review (myapp), web (shop).
	want := []map[string]string{with("thumbprint"), with(), with(), with("thumbprint", "bypass_until"), with("thumbprint")}
	if len(agents) != len(want) {
		t.Fatalf("%d agents", len(agents))
	}
	for i := range agents {
		if got := kinds(agents[i]); !reflect.DeepEqual(got, want[i]) {
			t.Errorf("agent %d: %v\nwant %v", i, got, want[i])
		}
	}
	if agents[1]["registered"] != false || agents[1]["firewall"] != "not_enforced" || agents[2]["firewall"] != "not_running" {
		t.Errorf("new %v, old %v", agents[1], agents[2])
	}
}

func TestPSArgsAndEmpty(t *testing.T) {
	env, srv, stdout, stderr := psEnv(t, &psDocker{}, nil)
	if code := run(t, env, "ps"); code != 0 || stdout.String() != "No agent containers. Start one: clawker run --agent NAME\n" || stderr.Len() != 0 {
		t.Errorf("empty: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	if srv.Calls("ListAgents") != 0 {
		t.Error("asked the control plane about no containers")
	}
	env, _, stdout, _ = psEnv(t, &psDocker{}, nil)
	if code := run(t, env, "ps", "--format", "json"); code != 0 || stdout.String() != "{\n  \"agents\": []\n}\n" {
		t.Errorf("empty json: exit %d, stdout %q", code, stdout.String())
	}
	env, _, _, stderr = psEnv(t, &psDocker{}, nil)
	if code := run(t, env, "ps", "extra"); code != 1 || stderr.String() != "clawker: ps takes no arguments, got [\"extra\"]\n" {
		t.Errorf("args: exit %d, stderr %q", code, stderr.String())
	}
}
