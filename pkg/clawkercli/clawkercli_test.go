package clawkercli_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/clawker/clawker-cp/pkg/clawkercli"
	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// No test here runs in parallel: urfave/cli v2 mutates its package-level
// HelpFlag on every App.Run, so two in-process runs at once race.

var update = flag.Bool("update", false, "rewrite the testdata/*.golden files from the current output")

// cliEnv points the CLI at a settings.yaml in a temp XDG_CONFIG_HOME whose
// control_plane.health_port is port, and whose oathkeeper_port is one
// nothing listens on: tree and state fall back to the health port, as with
// a control plane without Ory (and never reach the proxy of a real control
// plane on the default port).
func cliEnv(t *testing.T, port int) (clawkercli.Env, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config", "clawker")
	if err := os.MkdirAll(cfg, 0o755); err != nil {
		t.Fatal(err)
	}
	proxy := deadPort(t)
	for proxy == port {
		proxy = deadPort(t)
	}
	yaml := "control_plane:\n  health_port: " + strconv.Itoa(port) + "\n  oathkeeper_port: " + strconv.Itoa(proxy) + "\n"
	if err := os.WriteFile(filepath.Join(cfg, "settings.yaml"), []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{
		"HOME":            dir,
		"XDG_CONFIG_HOME": filepath.Join(dir, "config"),
		"XDG_DATA_HOME":   filepath.Join(dir, "data"),
		"XDG_STATE_HOME":  filepath.Join(dir, "state"),
	}
	var stdout, stderr bytes.Buffer
	// Docker reports the clawker-controlplane container running, so status
	// goes on to the fake health port (status_docker_test.go).
	return clawkercli.Env{Stdout: &stdout, Stderr: &stderr, Getenv: func(k string) string { return vars[k] }, Docker: dockerWith(cpRunning)}, &stdout, &stderr
}

// serve starts a fake health port answering path with code and body.
func serve(t *testing.T, routes map[string]func(w http.ResponseWriter)) int {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "method", http.StatusMethodNotAllowed)
			return
		}
		h, ok := routes[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h(w)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port
}

func jsonAnswer(t *testing.T, code int, v any) func(w http.ResponseWriter) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = w.Write(b)
	}
}

// deadPort returns a port nothing listens on (bound, then closed).
func deadPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	return p
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
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
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (run go test -update to accept it)\n--- got ---\n%s--- want ---\n%s", path, got, want)
	}
}

func run(t *testing.T, env clawkercli.Env, args ...string) int {
	t.Helper()
	return clawkercli.Run(env, append([]string{"clawker"}, args...))
}

var (
	healthy = cpapi.Health{Status: cpapi.StatusOK, Probes: []cpapi.ProbeResult{
		{Name: "overseer", OK: true, LatencyMS: 0.084},
		{Name: "registry", OK: true, LatencyMS: 0.12},
	}}
	unhealthy = cpapi.Health{
		Status: cpapi.StatusUnhealthy,
		Probes: []cpapi.ProbeResult{
			{Name: "grpc", OK: false, Error: "actor clawker-cp/grpc did not answer a ping within 1s: future: timeout", LatencyMS: 1000.5},
			{Name: "overseer", OK: true, LatencyMS: 0.09},
			{Name: "registry", OK: false, Error: "database is locked", LatencyMS: 2.25},
		},
		Failing: []string{"grpc", "registry"},
	}
)

func TestStatus(t *testing.T) {
	cases := []struct {
		name string
		code int
		body any
		args []string
	}{
		{"status_healthy", http.StatusOK, healthy, nil},
		{"status_unhealthy", http.StatusServiceUnavailable, unhealthy, nil},
		{"status_not_ready", http.StatusServiceUnavailable, cpapi.Health{Status: cpapi.StatusNotReady}, nil},
		{"status_draining", http.StatusServiceUnavailable, cpapi.Health{Status: cpapi.StatusDraining}, nil},
		{"status_json_healthy", http.StatusOK, healthy, []string{"--format", "json"}},
		{"status_json_unhealthy", http.StatusServiceUnavailable, unhealthy, []string{"--format", "json"}},
		// A 503 whose body says ok is still not healthy.
		{"status_ok_body_503", http.StatusServiceUnavailable, healthy, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			port := serve(t, map[string]func(http.ResponseWriter){"/healthz": jsonAnswer(t, c.code, c.body)})
			env, stdout, stderr := cliEnv(t, port)
			if code := run(t, env, append([]string{"controlplane", "status"}, c.args...)...); code != 0 {
				t.Fatalf("exit %d, stderr %q", code, stderr.String())
			}
			if stderr.Len() != 0 {
				t.Errorf("stderr %q", stderr.String())
			}
			golden(t, c.name, stdout.String())
		})
	}
}

func TestStatusUnreadableAnswer(t *testing.T) {
	port := serve(t, map[string]func(http.ResponseWriter){"/healthz": func(w http.ResponseWriter) {
		w.WriteHeader(http.StatusBadGateway)
		_, _ = w.Write([]byte("<html>bad gateway</html>"))
	}})
	env, stdout, _ := cliEnv(t, port)
	if code := run(t, env, "cp", "status"); code != 0 {
		t.Fatalf("exit %d", code)
	}
	golden(t, "status_unreadable", stdout.String())
}

func TestStatusStopped(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		env, stdout, stderr := cliEnv(t, deadPort(t))
		env.Docker = dockerWith(nil) // no clawker-controlplane container
		if code := run(t, env, "controlplane", "status", "--format", format); code != 0 {
			t.Fatalf("%s: exit %d, stderr %q", format, code, stderr.String())
		}
		golden(t, "status_stopped_"+format, stdout.String())
	}
}

var fixedStart = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

func node(name, path string, uptime float64, children ...cpapi.ActorNode) cpapi.ActorNode {
	return cpapi.ActorNode{
		Name: name, Path: path, PID: `Address:"nonhost" Id:"` + path + `"`,
		State: cpapi.ActorRunning, StartedAt: fixedStart, UptimeSec: uptime, Children: children,
	}
}

func sampleTree() cpapi.ActorNode {
	fw := node("firewall", "clawker-cp/firewall", 3723.4,
		node("dns", "clawker-cp/firewall/dns", 3723.2),
		node("proxy", "clawker-cp/firewall/proxy", 61.6),
	)
	fw.Children[1].Restarts = 2
	fw.Children[1].State = cpapi.ActorRestarting
	fw.Children[1].LastError = "debug fault injected into clawker-cp/firewall/proxy\ngoroutine 12 [running]"
	fw.MailboxDepth = 3
	grpc := node("grpc", "clawker-cp/grpc", 3723.0, node("sessions", "clawker-cp/grpc/sessions", 0.4))
	grpc.Restarts = 1
	grpc.LastError = "child clawker-cp/grpc/sessions exceeded 5 restarts in 30s: " + strings.Repeat("session reset by peer, ", 6)
	health := node("health", "clawker-cp/health", 3724.6)
	root := node("clawker-cp", "clawker-cp", 3725.1, health,
		node("overseer", "clawker-cp/overseer", 3724.5),
		fw, grpc,
		node("auth", "clawker-cp/auth", 3722.9),
	)
	root.State = cpapi.ActorDraining
	return root
}

func TestTree(t *testing.T) {
	cases := []struct {
		name string
		args []string
	}{
		{"tree_text", nil},
		{"tree_json", []string{"--format", "json"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			port := serve(t, map[string]func(http.ResponseWriter){"/debug/actors": jsonAnswer(t, http.StatusOK, sampleTree())})
			env, stdout, stderr := cliEnv(t, port)
			if code := run(t, env, append([]string{"controlplane", "tree"}, c.args...)...); code != 0 {
				t.Fatalf("exit %d, stderr %q", code, stderr.String())
			}
			golden(t, c.name, stdout.String())
		})
	}
}

func TestTreeJSONRoundTrips(t *testing.T) {
	port := serve(t, map[string]func(http.ResponseWriter){"/debug/actors": jsonAnswer(t, http.StatusOK, sampleTree())})
	env, stdout, _ := cliEnv(t, port)
	if code := run(t, env, "controlplane", "tree", "--format", "json"); code != 0 {
		t.Fatalf("exit %d", code)
	}
	var back cpapi.ActorNode
	if err := json.Unmarshal(stdout.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(sampleTree())
	got, _ := json.Marshal(back)
	if string(got) != string(want) {
		t.Errorf("tree --format json does not round-trip:\n%s\n%s", got, want)
	}
}

func TestTreeNotRunning(t *testing.T) {
	port := deadPort(t)
	env, stdout, stderr := cliEnv(t, port)
	if code := run(t, env, "controlplane", "tree"); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout %q", stdout.String())
	}
	msg := stderr.String()
	if !strings.HasPrefix(msg, "clawker: ") || !strings.Contains(msg, "`clawker controlplane up`") ||
		!strings.Contains(msg, "127.0.0.1:"+strconv.Itoa(port)) || strings.Count(msg, "\n") != 1 {
		t.Errorf("stderr %q", msg)
	}
}

func TestTreeErrorAnswer(t *testing.T) {
	port := serve(t, map[string]func(http.ResponseWriter){"/debug/actors": jsonAnswer(t, http.StatusServiceUnavailable,
		map[string]string{"error": "root actor is not running"})})
	env, stdout, stderr := cliEnv(t, port)
	if code := run(t, env, "controlplane", "tree"); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout %q", stdout.String())
	}
	if msg := stderr.String(); !strings.Contains(msg, "503") || !strings.Contains(msg, "root actor is not running") {
		t.Errorf("stderr %q", msg)
	}
}

func TestTreeUnreadableAnswer(t *testing.T) {
	port := serve(t, map[string]func(http.ResponseWriter){"/debug/actors": func(w http.ResponseWriter) {
		_, _ = w.Write([]byte("not json"))
	}})
	env, _, stderr := cliEnv(t, port)
	if code := run(t, env, "controlplane", "tree"); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if msg := stderr.String(); !strings.Contains(msg, "/debug/actors: unreadable answer") {
		t.Errorf("stderr %q", msg)
	}
}

func TestBadFormat(t *testing.T) {
	for _, verb := range []string{"status", "tree"} {
		// The format is checked before anything is asked: no server needed.
		env, stdout, stderr := cliEnv(t, deadPort(t))
		if code := run(t, env, "controlplane", verb, "--format", "yaml"); code != 1 {
			t.Fatalf("%s: exit %d, want 1", verb, code)
		}
		if stdout.Len() != 0 {
			t.Errorf("%s: stdout %q", verb, stdout.String())
		}
		if msg := stderr.String(); !strings.Contains(msg, "--format") || !strings.Contains(msg, `"yaml"`) || !strings.Contains(msg, "text or json") {
			t.Errorf("%s: stderr %q", verb, msg)
		}
	}
}

func TestBadSettingsNamed(t *testing.T) {
	env, _, stderr := cliEnv(t, 0) // port 0 is out of range
	if code := run(t, env, "controlplane", "status"); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if msg := stderr.String(); !strings.Contains(msg, "control_plane.health_port") || !strings.Contains(msg, "settings.yaml") {
		t.Errorf("stderr %q", msg)
	}
}

// TestTreeTruncationKeepsUTF8 documents a defect: oneLine cuts a long last
// error at byte 77, which can split a multi-byte character.
func TestTreeTruncationKeepsUTF8(t *testing.T) {
	n := node("clawker-cp", "clawker-cp", 1)
	// 76 ASCII bytes, then a 3-byte character straddling the cut.
	n.LastError = strings.Repeat("x", 76) + "→ and then some more text to force truncation"
	port := serve(t, map[string]func(http.ResponseWriter){"/debug/actors": jsonAnswer(t, http.StatusOK, n)})
	env, stdout, _ := cliEnv(t, port)
	if code := run(t, env, "controlplane", "tree"); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if !utf8.Valid(stdout.Bytes()) {
		t.Fatalf("truncated last error is not valid UTF-8: %q", stdout.String())
	}
}

// TestTreeTabInLastErrorKeepsColumns: oneLine folds newlines only, so a tab
// reaches the tabwriter; LAST ERROR being the last column, the row must still
// start its error where the header says.
func TestTreeTabInLastErrorKeepsColumns(t *testing.T) {
	n := node("clawker-cp", "clawker-cp", 1, node("grpc", "clawker-cp/grpc", 1))
	n.Children[0].LastError = "panic: boom\n\tat handler.go:12"
	port := serve(t, map[string]func(http.ResponseWriter){"/debug/actors": jsonAnswer(t, http.StatusOK, n)})
	env, stdout, _ := cliEnv(t, port)
	if code := run(t, env, "controlplane", "tree"); code != 0 {
		t.Fatalf("exit %d", code)
	}
	lines := strings.Split(strings.TrimRight(stdout.String(), "\n"), "\n")
	if strings.Contains(stdout.String(), "\t") || len(lines) != 3 {
		t.Fatalf("output %q", stdout.String())
	}
	// Columns are counted in characters: the branches are multi-byte.
	col := utf8.RuneCountInString(lines[0][:strings.Index(lines[0], "LAST ERROR")])
	row := []rune(lines[2])
	if len(row) < col || !strings.HasPrefix(string(row[col:]), "panic: boom") {
		t.Errorf("a tab in last_error shifts the column: %q", lines[2])
	}
}
