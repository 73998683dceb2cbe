package clawkercli_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clawker/clawker-cp/pkg/adminclient/adminclienttest"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/clawkercli"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// clawkerResult is what one CLI invocation produced.
type clawkerResult struct {
	code           int
	stdout, stderr string
}

// runClawkerIn runs the CLI in-process with h's environment.
func runClawkerIn(h *adminclienttest.Home, args ...string) clawkerResult {
	var stdout, stderr bytes.Buffer
	code := clawkercli.Run(clawkercli.Env{Stdout: &stdout, Stderr: &stderr, Getenv: h.Getenv}, append([]string{"clawker"}, args...))
	return clawkerResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// goldenUpdating reports whether golden files are to be rewritten:
// UPDATE_GOLDEN=1, or a -update flag if some test file of this package
// defines one (looked up at run time so the two never clash).
func goldenUpdating() bool {
	if os.Getenv("UPDATE_GOLDEN") != "" {
		return true
	}
	f := flag.Lookup("update")
	return f != nil && f.Value.String() == "true"
}

// checkGoldenFile compares got with testdata/name.
func checkGoldenFile(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if goldenUpdating() {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (rerun with UPDATE_GOLDEN=1 to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (rerun with UPDATE_GOLDEN=1 to accept)\n--- got ---\n%s--- want ---\n%s", path, got, want)
	}
}

func ts(s string) *timestamppb.Timestamp {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return timestamppb.New(t)
}

// seedAgents are the two agents of the product docs' example, served out
// of order so the CLI's sort shows.
func seedAgents() []*adminv1.Agent {
	return []*adminv1.Agent{
		{
			Key:          "5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592",
			Project:      "myapp",
			AgentName:    "review",
			ContainerId:  "7890abcdef1234567890abcdef1234567890abcdef1234567890abcdef123456",
			Thumbprint:   "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef",
			RegisteredAt: ts("2026-05-12T09:14:05.25Z"),
			LastSeen:     ts("2026-05-12T09:42:18.987654321Z"),
			Connected:    false,
		},
		{
			Key:          "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
			Project:      "myapp",
			AgentName:    "dev",
			ContainerId:  "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2",
			Thumbprint:   "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0",
			RegisteredAt: ts("2026-05-12T09:14:02.123456789Z"),
			LastSeen:     ts("2026-05-12T09:42:18Z"),
			Connected:    true,
		},
	}
}

// runningCP makes a home with auth material and a fake CP serving agents
// on the admin port its settings name.
func runningCP(t *testing.T, agents ...*adminv1.Agent) (*adminclienttest.Home, *adminclienttest.Server) {
	t.Helper()
	h := adminclienttest.NewHome(t)
	m := h.EnsureAuth(t)
	srv := adminclienttest.Serve(t, m)
	srv.SetAgents(agents...)
	h.SetPorts(t, srv.Port, adminclienttest.ServeTokenEndpoint(t, m).Port)
	return h, srv
}

func wantExit(t *testing.T, r clawkerResult, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
}

func TestAgentsTable(t *testing.T) {
	h, _ := runningCP(t, seedAgents()...)
	r := runClawkerIn(h, "controlplane", "agents")
	wantExit(t, r, 0)
	if r.stderr != "" {
		t.Errorf("stderr = %q, want nothing", r.stderr)
	}
	checkGoldenFile(t, "agents_table.golden", r.stdout)
}

func TestAgentsJSON(t *testing.T) {
	h, _ := runningCP(t, seedAgents()...)
	r := runClawkerIn(h, "cp", "agents", "--format", "json")
	wantExit(t, r, 0)
	if r.stderr != "" {
		t.Errorf("stderr = %q, want nothing", r.stderr)
	}
	checkGoldenFile(t, "agents_json.golden", r.stdout)

	var got []clawkercli.AgentReport
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Agent != "dev" || !got[0].RegisteredAt.Equal(time.Date(2026, 5, 12, 9, 14, 2, 123456789, time.UTC)) {
		t.Errorf("decoded %+v", got)
	}
}

func TestAgentsEmpty(t *testing.T) {
	h, _ := runningCP(t)

	r := runClawkerIn(h, "controlplane", "agents")
	wantExit(t, r, 0)
	if r.stdout != "" || r.stderr != "No agents registered\n" {
		t.Errorf("text: stdout %q, stderr %q; want nothing and \"No agents registered\"", r.stdout, r.stderr)
	}

	r = runClawkerIn(h, "controlplane", "agents", "--format", "json")
	wantExit(t, r, 0)
	if r.stdout != "[]\n" || r.stderr != "" {
		t.Errorf("json: stdout %q, stderr %q; want \"[]\" and nothing", r.stdout, r.stderr)
	}
}

func TestAgentsSortedAndSparse(t *testing.T) {
	h, _ := runningCP(t,
		&adminv1.Agent{Project: "web", AgentName: "a", ContainerId: "c1", Thumbprint: "t1"},
		&adminv1.Agent{Project: "api", AgentName: "zed", ContainerId: "c2", Thumbprint: "t2", LastSeen: ts("2026-01-02T03:04:05Z")},
		&adminv1.Agent{Project: "api", AgentName: "bob", ContainerId: "c3", Thumbprint: "t3"},
	)
	r := runClawkerIn(h, "controlplane", "agents")
	wantExit(t, r, 0)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	var order []string
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		order = append(order, f[1]+"/"+f[0])
	}
	if got := strings.Join(order, " "); got != "api/bob api/zed web/a" {
		t.Errorf("row order %s, want api/bob api/zed web/a\n%s", got, r.stdout)
	}
	// Short values are shown whole; missing times are a dash.
	if f := strings.Fields(lines[1]); strings.Join(f, " ") != "bob api c3 t3 - -" {
		t.Errorf("row %q", lines[1])
	}

	r = runClawkerIn(h, "controlplane", "agents", "--format", "json")
	wantExit(t, r, 0)
	var got []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	if got[0]["registered_at"] != nil || got[1]["last_seen"] != "2026-01-02T03:04:05Z" {
		t.Errorf("json times: %s", r.stdout)
	}
}

func TestAgentsNotRunning(t *testing.T) {
	h := adminclienttest.NewHome(t)
	h.EnsureAuth(t)
	port := adminclienttest.FreePort(t)
	h.SetAdminPort(t, port)
	r := runClawkerIn(h, "controlplane", "agents")
	wantExit(t, r, 1)
	want := fmt.Sprintf("clawker: the control plane is not running (nothing answers at 127.0.0.1:%d); start it with \"clawker controlplane up\"\n", port)
	if r.stdout != "" || r.stderr != want {
		t.Errorf("stdout %q\nstderr %q\nwant stderr %q", r.stdout, r.stderr, want)
	}
}

func TestAgentsNoAuthMaterial(t *testing.T) {
	h := adminclienttest.NewHome(t)
	h.SetAdminPort(t, adminclienttest.FreePort(t))
	r := runClawkerIn(h, "controlplane", "agents", "--format", "json")
	wantExit(t, r, 1)
	if r.stdout != "" || !strings.Contains(r.stderr, `run "clawker auth rotate"`) {
		t.Errorf("stdout %q\nstderr %q\nwant the rotate hint", r.stdout, r.stderr)
	}
}

func TestAgentsServerFromOtherCA(t *testing.T) {
	h := adminclienttest.NewHome(t)
	h.EnsureAuth(t)
	srv := adminclienttest.Serve(t, adminclienttest.NewHome(t).EnsureAuth(t))
	srv.SetAgents(seedAgents()...)
	h.SetAdminPort(t, srv.Port)
	r := runClawkerIn(h, "controlplane", "agents")
	wantExit(t, r, 1)
	if r.stdout != "" || !strings.Contains(r.stderr, "did not sign, so it was refused") {
		t.Errorf("stdout %q\nstderr %q", r.stdout, r.stderr)
	}
	if n := srv.Calls("ListAgents"); n != 0 {
		t.Errorf("the untrusted server was asked ListAgents %d times", n)
	}
}

func TestAgentsBadFormat(t *testing.T) {
	h, srv := runningCP(t, seedAgents()...)
	r := runClawkerIn(h, "controlplane", "agents", "--format", "yaml")
	wantExit(t, r, 1)
	if !strings.Contains(r.stderr, "unknown format") || srv.Calls("GetSystemTime") != 0 {
		t.Errorf("stderr %q; calls %d", r.stderr, srv.Calls("GetSystemTime"))
	}
}

// TestAgentsAfterAuthRotate is the production path end to end: the CLI
// creates its material, the CP serves from the bundle the CLI wrote, and
// they trust each other.
func TestAgentsAfterAuthRotate(t *testing.T) {
	h := adminclienttest.NewHome(t)
	wantExit(t, runClawkerIn(h, "auth", "rotate"), 0)
	bundle, err := certs.LoadServerBundle(h.Paths(t).CPAuthDir)
	if err != nil {
		t.Fatal(err)
	}
	srv := adminclienttest.Serve(t, bundle)
	srv.SetAgents(seedAgents()...)
	h.SetPorts(t, srv.Port, adminclienttest.ServeTokenEndpoint(t, bundle).Port)
	r := runClawkerIn(h, "controlplane", "agents")
	wantExit(t, r, 0)
	if !strings.HasPrefix(r.stdout, "AGENT ") || strings.Count(r.stdout, "\n") != 3 {
		t.Errorf("stdout:\n%s", r.stdout)
	}

	// After a forced rotation the running CP still serves the old bundle:
	// the CLI refuses it and says to restart the CP.
	wantExit(t, runClawkerIn(h, "auth", "rotate", "--force"), 0)
	r = runClawkerIn(h, "controlplane", "agents")
	wantExit(t, r, 1)
	if !strings.Contains(r.stderr, `"clawker controlplane down", then "clawker controlplane up"`) {
		t.Errorf("stderr %q", r.stderr)
	}
}

// TestAgentsTwoPages: the CP answers in pages; the CLI asks for each one
// with the previous answer's token and lists them all, in order.
func TestAgentsTwoPages(t *testing.T) {
	agents := append(seedAgents(), &adminv1.Agent{
		Key:          "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
		Project:      "web",
		AgentName:    "ci",
		ContainerId:  "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
		Thumbprint:   "aabbccddeeff00112233445566778899aabbccddeeff00112233445566778899",
		RegisteredAt: ts("2026-05-12T10:00:00Z"),
		LastSeen:     ts("2026-05-12T10:05:30.5Z"),
		Connected:    true,
	})
	h, srv := runningCP(t, agents...)
	srv.SetPageSize(2)
	r := runClawkerIn(h, "controlplane", "agents")
	wantExit(t, r, 0)
	if r.stderr != "" {
		t.Errorf("stderr = %q, want nothing", r.stderr)
	}
	if n := srv.Calls("ListAgents"); n != 2 {
		t.Errorf("ListAgents was called %d times, want 2 (one per page)", n)
	}
	checkGoldenFile(t, "agents_two_pages.golden", r.stdout)

	r = runClawkerIn(h, "controlplane", "agents", "--format", "json")
	wantExit(t, r, 0)
	var got []clawkercli.AgentReport
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range got {
		names = append(names, a.Project+"/"+a.Agent)
	}
	if strings.Join(names, " ") != "myapp/dev myapp/review web/ci" {
		t.Errorf("json lists %v, want myapp/dev myapp/review web/ci", names)
	}
}
