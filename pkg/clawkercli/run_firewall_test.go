package clawkercli_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/clawker/clawker-cp/pkg/agentrun"
	"github.com/clawker/clawker-cp/pkg/clawkercli"
)

const unconfinedLine = "warning: firewall.enable is false: the agent runs unconfined (no egress enforcement)\n"

// firewallRunEnv is runEnv with firewall.enable set as given.
func firewallRunEnv(t *testing.T, enable bool) (clawkercli.Env, *agentDocker, *bootstrapSpy, *strings.Builder, *strings.Builder) {
	t.Helper()
	env, d, spy, stdout, stderr := runEnv(t)
	yaml := "control_plane:\n  agent_port: 7555\n  sessions:\n    heartbeat: 700ms\nfirewall:\n  enable: false\n"
	if enable {
		yaml = strings.Replace(yaml, "enable: false", "enable: true", 1)
	}
	path := filepath.Join(env.Getenv("XDG_CONFIG_HOME"), "clawker", "settings.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return env, d, spy, stdout, stderr
}

// With the firewall off and no --no-firewall, run refuses before the
// control plane or Docker is touched, naming the setting and the flag.
func TestRunFirewallOffRefused(t *testing.T) {
	env, d, spy, stdout, stderr := firewallRunEnv(t, false)
	code := run(t, env, "run", "--project", "myapp", "--agent", "dev", "agent:1")
	if code != 1 || stdout.Len() != 0 || len(spy.calls) != 0 || len(d.containers) != 0 {
		t.Fatalf("exit %d, stdout %q, bootstrap calls %d, containers %d", code, stdout.String(), len(spy.calls), len(d.containers))
	}
	golden(t, "run_firewall_off_refused", stderr.String())
	for _, want := range []string{"firewall.enable: false", "--no-firewall", "unconfined"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr %q lacks %q", stderr.String(), want)
		}
	}
}

// With the firewall off and --no-firewall, every run warns once on stderr
// that the agent runs unconfined, and the agent is created.
func TestRunNoFirewallWarns(t *testing.T) {
	env, d, spy, stdout, stderr := firewallRunEnv(t, false)
	for i, agent := range []string{"dev", "review"} {
		stdout.Reset()
		stderr.Reset()
		code := run(t, env, "run", "--no-firewall", "--project", "myapp", "--agent", agent, "agent:1")
		if got := strings.Count(stderr.String(), unconfinedLine); got != 1 {
			t.Fatalf("run %d: the warning appears %d times in stderr %q", i+1, got, stderr.String())
		}
		if len(spy.calls) != i+1 {
			t.Fatalf("run %d: bootstrap calls %d", i+1, len(spy.calls))
		}
		if !embedsClawkerd() {
			// Without the embedded clawkerd run stops after the warning;
			// the rest needs it.
			if code != 1 {
				t.Fatalf("exit %d, stderr %q", code, stderr.String())
			}
			t.Skip("this test binary embeds no clawkerd: the created agent is not checked")
		}
		if code != 0 || stdout.String() != strings.Repeat("ab", 32)+"\n" || !strings.HasPrefix(stderr.String(), unconfinedLine) {
			t.Fatalf("run %d: exit %d, stdout %q, stderr %q", i+1, code, stdout.String(), stderr.String())
		}
		o := d.containers["clawker.myapp."+agent]
		if o == nil {
			t.Fatalf("run %d: no container clawker.myapp.%s (%v)", i+1, agent, d.containers)
		}
		// With the firewall off clawkerd must not wait for enforcement
		// that never comes.
		if slices.Contains(o.Config.Env, agentrun.EnvRequireEnforced+"=1") {
			t.Errorf("run %d: env %q", i+1, o.Config.Env)
		}
		// Nor is there a firewall CA to trust: nothing inspects it.
		if _, ok := o.Config.Labels["dev.clawker.firewall-ca"]; ok || slices.ContainsFunc(o.Config.Env, func(e string) bool { return strings.HasPrefix(e, "SSL_CERT_FILE=") }) {
			t.Errorf("run %d: firewall CA label or env with the firewall off: %v %q", i+1, o.Config.Labels, o.Config.Env)
		}
	}
}

// With the firewall on, --no-firewall is refused (it would not turn
// enforcement off) before anything is touched; without it no warning.
func TestRunNoFirewallRefusedWithFirewallOn(t *testing.T) {
	env, d, spy, stdout, stderr := firewallRunEnv(t, true)
	code := run(t, env, "run", "--no-firewall", "--project", "myapp", "--agent", "dev", "agent:1")
	if code != 1 || stdout.Len() != 0 || len(spy.calls) != 0 || len(d.containers) != 0 {
		t.Fatalf("exit %d, stdout %q, bootstrap calls %d, containers %d", code, stdout.String(), len(spy.calls), len(d.containers))
	}
	golden(t, "run_no_firewall_refused", stderr.String())
	for _, want := range []string{"--no-firewall", "firewall.enable: true", "does not turn enforcement off"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr %q lacks %q", stderr.String(), want)
		}
	}

	stderr.Reset()
	run(t, env, "run", "--project", "myapp", "--agent", "dev", "agent:1")
	if len(spy.calls) != 1 || strings.Contains(stderr.String(), "unconfined") {
		t.Errorf("with the firewall on: bootstrap calls %d, stderr %q", len(spy.calls), stderr.String())
	}
}
