//go:build linux

package agentd

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/certs"
)

func envMap(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

var fullArgs = []string{"--cp-addr", "cp:7444", "--ca", "/a/ca.crt", "--cert", "/a/c.crt", "--key", "/a/c.key",
	"--project", "my.proj", "--agent", "dev"}

func TestParseArgs(t *testing.T) {
	cfg, argv, err := ParseArgs(append(append([]string{}, fullArgs...), "--heartbeat", "1s", "--", "claude", "--flag"), envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{CPAddr: "cp:7444", CAFile: "/a/ca.crt", CertFile: "/a/c.crt", KeyFile: "/a/c.key", Project: "my.proj", Agent: "dev",
		Home: "/", Heartbeat: time.Second, MaxBackoff: DefaultMaxBackoff, ServerName: DefaultServerName}
	if cfg.CPAddr != want.CPAddr || cfg.CAFile != want.CAFile || cfg.CertFile != want.CertFile || cfg.KeyFile != want.KeyFile ||
		cfg.Project != want.Project || cfg.Agent != want.Agent || cfg.Home != want.Home || cfg.Heartbeat != want.Heartbeat ||
		cfg.MaxBackoff != want.MaxBackoff || cfg.ServerName != want.ServerName {
		t.Errorf("cfg = %+v\nwant %+v", cfg, want)
	}
	if strings.Join(argv, " ") != "claude --flag" {
		t.Errorf("argv = %q", argv)
	}
}

func TestParseArgsEnv(t *testing.T) {
	env := map[string]string{
		"CLAWKERD_CP_ADDR": "10.0.0.2:7444", "CLAWKERD_CA": "/e/ca", "CLAWKERD_CERT": "/e/crt", "CLAWKERD_KEY": "/e/key",
		"CLAWKERD_PROJECT": "p", "CLAWKERD_AGENT": "a", "CLAWKERD_HEARTBEAT": "2s", "CLAWKERD_MAX_BACKOFF": "3s",
		"CLAWKERD_SERVER_NAME": "cp.test", "HOME": "/home/agent",
	}
	cfg, argv, err := ParseArgs([]string{"--agent", "b", "sleep", "1"}, envMap(env))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CPAddr != "10.0.0.2:7444" || cfg.CAFile != "/e/ca" || cfg.Agent != "b" || cfg.Project != "p" ||
		cfg.Heartbeat != 2*time.Second || cfg.MaxBackoff != 3*time.Second || cfg.ServerName != "cp.test" || cfg.Home != "/home/agent" {
		t.Errorf("cfg = %+v", cfg)
	}
	if strings.Join(argv, " ") != "sleep 1" {
		t.Errorf("argv = %q", argv)
	}
	env["CLAWKERD_HOME"] = "/srv/h"
	if cfg, _, _ := ParseArgs(nil, envMap(env)); cfg.Home != "/srv/h" {
		t.Errorf("home = %q, want CLAWKERD_HOME", cfg.Home)
	}
}

func TestParseArgsErrors(t *testing.T) {
	without := func(flagName string) []string {
		var out []string
		for i := 0; i < len(fullArgs); i += 2 {
			if fullArgs[i] != "--"+flagName {
				out = append(out, fullArgs[i], fullArgs[i+1])
			}
		}
		return out
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		flag string
	}{
		{"no cp-addr", without("cp-addr"), nil, "cp-addr"},
		{"no ca", without("ca"), nil, "ca"},
		{"no cert", without("cert"), nil, "cert"},
		{"no key", without("key"), nil, "key"},
		{"no project", without("project"), nil, "project"},
		{"no agent", without("agent"), nil, "agent"},
		{"cp-addr without port", append(without("cp-addr"), "--cp-addr", "cp"), nil, "cp-addr"},
		{"cp-addr without host", append(without("cp-addr"), "--cp-addr", ":7444"), nil, "cp-addr"},
		{"cp-addr port 0", append(without("cp-addr"), "--cp-addr", "cp:0"), nil, "cp-addr"},
		{"agent with a dot", append(without("agent"), "--agent", "a.b"), nil, "agent"},
		{"project upper case", append(without("project"), "--project", "P"), nil, "project"},
		{"heartbeat env", fullArgs, map[string]string{"CLAWKERD_HEARTBEAT": "soon"}, "heartbeat"},
		{"heartbeat zero", append(fullArgs, "--heartbeat", "0s"), nil, "heartbeat"},
		{"max-backoff negative", append(fullArgs, "--max-backoff", "-1s"), nil, "max-backoff"},
		{"relative home", append(fullArgs, "--home", "rel"), nil, "home"},
		{"require-enforced env", fullArgs, map[string]string{"CLAWKERD_REQUIRE_ENFORCED": "maybe"}, "require-enforced"},
		{"require-enforced flag", append(fullArgs, "--require-enforced=yes"), nil, "require-enforced"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseArgs(tc.args, envMap(tc.env))
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want a ConfigError", err)
			}
			s := settingFor(tc.flag)
			if ce.Flag != tc.flag || !strings.Contains(err.Error(), "--"+tc.flag) || !strings.Contains(err.Error(), s.env) {
				t.Errorf("err = %q, want it to name --%s and %s", err, tc.flag, s.env)
			}
		})
	}
	if _, _, err := ParseArgs([]string{"--help"}, envMap(nil)); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: %v", err)
	}
	if _, _, err := ParseArgs([]string{"--bogus"}, envMap(nil)); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown flag: %v", err)
	}
}

func TestUsageDocumentsEverything(t *testing.T) {
	u := Usage()
	for _, s := range settings {
		if !strings.Contains(u, "--"+s.name) || !strings.Contains(u, s.env) {
			t.Errorf("usage lacks --%s / %s", s.name, s.env)
		}
	}
	for _, code := range []string{"  0 ", "  2 ", "  3 ", "126", "127"} {
		if !strings.Contains(u, code) {
			t.Errorf("usage lacks exit code %q", code)
		}
	}
}

func TestRunConfigErrors(t *testing.T) {
	e := newEnv(t)
	// A certificate for another agent: a config mistake caught before dialing.
	certPEM, keyPEM, err := e.m.MintAgentCert(certs.AgentIdentity{Project: "p", Agent: "other", ContainerID: testContainerID}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherCert, otherKey := e.path("other.crt"), e.path("other.key")
	os.WriteFile(otherCert, certPEM, 0o644)
	os.WriteFile(otherKey, keyPEM, 0o600)

	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"missing ca file", func(c *Config) { c.CAFile = filepath.Join(e.dir, "nope") }, "--ca"},
		{"ca not PEM", func(c *Config) { c.CAFile = c.KeyFile }, "--ca"},
		{"key does not match", func(c *Config) { c.KeyFile = otherKey }, "--cert"},
		{"cert for another agent", func(c *Config) { c.CertFile, c.KeyFile = otherCert, otherKey }, "--agent"},
		{"no cp-addr", func(c *Config) { c.CPAddr = "" }, "CLAWKERD_CP_ADDR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.cfg
			tc.mutate(&cfg)
			sink := &logSink{}
			cfg.Logger = NewLogger(sink)
			if code := Run(t.Context(), cfg, nil); code != ExitConfig {
				t.Fatalf("exit code %d, want %d", code, ExitConfig)
			}
			ev := sink.events(t, "config_invalid")
			if len(ev) != 1 || !strings.Contains(ev[0]["error"].(string), tc.want) {
				t.Errorf("config_invalid = %v, want it to mention %s", ev, tc.want)
			}
		})
	}
	if n := len(e.cp.registrations()); n != 0 {
		t.Errorf("%d Register calls with a bad config", n)
	}
}
