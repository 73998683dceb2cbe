package cp_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/clawker/clawker-cp/actors/cp"
	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/clawkercli"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/oauth"
	"github.com/clawker/clawker-cp/pkg/ory"
)

// TestDebugThroughOathkeeper: a control plane with the real Ory servers
// serves /debug/actors and /debug/state through Oathkeeper on
// oathkeeper_port (TLS with its server certificate), to bearer tokens with
// scope admin only: none is 401, clawker-agent's is 403, clawker-cli's is
// 200 with the live tree. Oathkeeper's upstream is the internal debug
// listener, not the health port; the health port, bound to loopback here,
// serves /debug/* too. `clawker controlplane tree` reads through
// Oathkeeper: it works with the health port out of its reach.
func TestDebugThroughOathkeeper(t *testing.T) {
	t.Parallel()
	w := newWorld(t, fastSessions(heartbeat))
	r := w.start(t)

	proxy := "https://" + cptest.Loopback(w.s.ControlPlane.OathkeeperPort)
	pool := x509.NewCertPool()
	pool.AddCert(w.m.CA)
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, ServerName: certs.ServerCommonName}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	t.Cleanup(client.CloseIdleConnections)
	get := func(url, token string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitShort)
	defer cancel()
	cliTokens, err := adminclient.NewTokenSource(w.m, w.s)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := cliTokens.Token(ctx)
	if err != nil {
		t.Fatalf("clawker-cli token: %v", err)
	}
	agentTokens, err := oauth.NewTokenSource(oauth.Config{
		TokenURL: adminclient.TokenURL(w.s), ClientID: oauth.ClientAgent, Scopes: []string{oauth.ScopeAgentRegister},
		Key: w.m.SigningKey, RootCAs: pool, ServerName: certs.ServerCommonName,
	})
	if err != nil {
		t.Fatal(err)
	}
	agent, err := agentTokens.Token(ctx)
	if err != nil {
		t.Fatalf("clawker-agent token: %v", err)
	}

	for _, p := range ory.ProtectedPaths {
		if code, body := get(proxy+p, ""); code != http.StatusUnauthorized {
			t.Errorf("GET %s without a token: %d %s, want 401", p, code, body)
		}
		if code, body := get(proxy+p, "not-a-token"); code != http.StatusUnauthorized {
			t.Errorf("GET %s with a bogus token: %d %s, want 401", p, code, body)
		}
		if code, body := get(proxy+p, agent.AccessToken); code != http.StatusForbidden {
			t.Errorf("GET %s with a clawker-agent token: %d %s, want 403", p, code, body)
		}
	}
	code, body := get(proxy+"/debug/actors", admin.AccessToken)
	var root cpapi.ActorNode
	if code != http.StatusOK || json.Unmarshal([]byte(body), &root) != nil {
		t.Fatalf("GET /debug/actors with an admin token: %d %s", code, body)
	}
	for _, path := range []string{"clawker-cp/health", "clawker-cp/auth/oathkeeper", sessionsID} {
		if n, ok := cptest.FindActor(root, path); !ok || n.State != cpapi.ActorRunning {
			t.Errorf("/debug/actors through Oathkeeper: %s is %+v (found %v)", path, n, ok)
		}
	}
	code, body = get(proxy+"/debug/state", admin.AccessToken)
	var st cpapi.WorldState
	if code != http.StatusOK || json.Unmarshal([]byte(body), &st) != nil {
		t.Errorf("GET /debug/state with an admin token: %d %s", code, body)
	}
	// Only the two paths: nothing else of the CP is behind the proxy.
	if code, body := get(proxy+"/healthz", admin.AccessToken); code != http.StatusNotFound {
		t.Errorf("GET /healthz through Oathkeeper: %d %s, want 404", code, body)
	}

	// The rules forward to the internal listener, never to the health port.
	var rules []struct {
		Upstream struct {
			URL string `yaml:"url"`
		} `yaml:"upstream"`
	}
	runDir := cp.OryRunDir(w.paths.CPDir) // a root CP writes them outside its data dir, for the servers' uid
	b, err := os.ReadFile(filepath.Join(runDir, ory.OathkeeperRulesFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &rules); err != nil || len(rules) != len(ory.ProtectedPaths) {
		t.Fatalf("rules %s (%v)", b, err)
	}
	for _, rule := range rules {
		u := rule.Upstream.URL
		if !strings.HasPrefix(u, "http://127.0.0.1:") || strings.HasSuffix(u, ":"+strconv.Itoa(w.s.ControlPlane.HealthPort)) {
			t.Errorf("rule upstream %q: want the internal debug listener on 127.0.0.1, not the health port", u)
		}
	}

	// The health port is on loopback here: it serves /debug/* as well.
	var local cpapi.ActorNode
	if code, err := cptest.TryGetJSON(r.healthURL+"/debug/actors", &local); code != http.StatusOK || err != nil {
		t.Errorf("GET /debug/actors on a loopback health port: %d %v", code, err)
	}

	// The CLI, with the health port pointed where nothing listens, reads
	// the tree through Oathkeeper.
	out := runCLIWithSettings(t, w, "control_plane:\n  health_port: "+strconv.Itoa(cptest.FreePorts(t, 1)[0])+"\n",
		"controlplane", "tree", "--format", "json")
	var cliRoot cpapi.ActorNode
	if out.Code != 0 || json.Unmarshal([]byte(out.Stdout), &cliRoot) != nil {
		t.Fatalf("controlplane tree --format json: %+v", out)
	}
	if _, ok := cptest.FindActor(cliRoot, "clawker-cp/auth/oathkeeper"); !ok {
		t.Errorf("controlplane tree through Oathkeeper lacks auth/oathkeeper:\n%s", out.Stdout)
	}
	out = runCLIWithSettings(t, w, "control_plane:\n  health_port: "+strconv.Itoa(cptest.FreePorts(t, 1)[0])+"\n",
		"controlplane", "state")
	if out.Code != 0 || !strings.HasPrefix(out.Stdout, "CONTAINERS\n") {
		t.Errorf("controlplane state: %+v", out)
	}
}

// runCLIWithSettings runs the CLI in-process with w's auth material and a
// copy of its settings merged with extra, in a config home of its own.
func runCLIWithSettings(t *testing.T, w *world, extra string, args ...string) cptest.Result {
	t.Helper()
	b, err := os.ReadFile(w.paths.SettingsFile)
	if err != nil {
		t.Fatal(err)
	}
	var base map[string]any
	if err := yaml.Unmarshal(b, &base); err != nil {
		t.Fatal(err)
	}
	doc, err := cptest.MergeYAML(base, extra)
	if err != nil {
		t.Fatal(err)
	}
	text, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	config := t.TempDir()
	if err := os.MkdirAll(filepath.Join(config, "clawker"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(config, "clawker", "settings.yaml"), text, 0o600); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"XDG_CONFIG_HOME": config, "XDG_DATA_HOME": w.home.DataHome, "XDG_STATE_HOME": t.TempDir(), "HOME": os.Getenv("HOME")}
	var stdout, stderr lockedBuffer
	code := clawkercli.Run(clawkercli.Env{Stdout: &stdout, Stderr: &stderr, Getenv: func(k string) string { return vars[k] }},
		append([]string{"clawker"}, args...))
	return cptest.Result{Stdout: stdout.String(), Stderr: stderr.String(), Code: code}
}
