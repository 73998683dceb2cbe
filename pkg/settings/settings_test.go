package settings

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func writeSettings(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "settings.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
	if !Default().ControlPlane.Watcher.Enable {
		t.Error("drain-to-zero is off by default; control_plane.watcher.enable must default to true")
	}
}

func TestLoadMissingFileYieldsDefaults(t *testing.T) {
	s, err := Load(filepath.Join(t.TempDir(), "nope", "settings.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, Default()) {
		t.Fatalf("got %+v, want defaults", s)
	}
}

func TestLoadUnreadableFileIsError(t *testing.T) {
	// A directory where the file should be: not "missing", so not defaults.
	if _, err := Load(t.TempDir()); err == nil {
		t.Fatal("expected an error reading a directory")
	}
}

func TestLoadOK(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want func(*Settings) // edits applied to Default()
	}{
		{"empty file", "", nil},
		{"only comments", "# nothing here\n", nil},
		{"empty mapping", "{}", nil},
		{"null document", "~\n", nil},
		{"empty sections", "control_plane:\nfirewall:\n", nil},
		{
			name: "partial overlay keeps other defaults",
			yaml: "control_plane:\n  admin_port: 8443\n",
			want: func(s *Settings) { s.ControlPlane.AdminPort = 8443 },
		},
		{
			name: "explicit false survives overlay",
			yaml: "firewall: {enable: false}\n",
			want: func(s *Settings) { s.Firewall.Enable = false },
		},
		{
			name: "watcher can be disabled",
			yaml: "control_plane:\n  watcher: {enable: false}\n",
			want: func(s *Settings) { s.ControlPlane.Watcher.Enable = false },
		},
		{
			name: "nested durations and ints",
			yaml: `control_plane:
  supervisor:
    max_restarts: 0
    restart_window: 1m
    drain_step_timeout: 1500ms
  watcher:
    grace: 2m
    zero_streak: 3
`,
			want: func(s *Settings) {
				s.ControlPlane.Supervisor.MaxRestarts = 0
				s.ControlPlane.Supervisor.RestartWindow = time.Minute
				s.ControlPlane.Supervisor.DrainStepTimeout = 1500 * time.Millisecond
				s.ControlPlane.Watcher.Grace = 2 * time.Minute
				s.ControlPlane.Watcher.ZeroStreak = 3
			},
		},
		{
			name: "quoted duration",
			yaml: "control_plane:\n  watcher:\n    poll_interval: \"5s\"\n",
			want: func(s *Settings) { s.ControlPlane.Watcher.PollInterval = 5 * time.Second },
		},
		{
			name: "anchors and aliases",
			yaml: "control_plane:\n  watcher:\n    poll_interval: &p 10s\n    grace: *p\n",
			want: func(s *Settings) {
				s.ControlPlane.Watcher.PollInterval = 10 * time.Second
				s.ControlPlane.Watcher.Grace = 10 * time.Second
			},
		},
		{
			name: "swapping two ports is fine",
			yaml: "control_plane:\n  admin_port: 7080\n  health_port: 7443\n",
			want: func(s *Settings) {
				s.ControlPlane.AdminPort, s.ControlPlane.HealthPort = 7080, 7443
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Load(writeSettings(t, tt.yaml))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := Default()
			if tt.want != nil {
				tt.want(&want)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name     string
		yaml     string
		key      string
		line     int
		contains []string
	}{
		{
			name:     "unknown top-level key",
			yaml:     "firewal:\n  enable: false\n",
			key:      "firewal",
			line:     1,
			contains: []string{`unknown key "firewal" (line 1): remove it or fix its spelling`},
		},
		{
			name:     "unknown nested key",
			yaml:     "# settings\ncontrol_plane:\n  admn_port: 1\n",
			key:      "control_plane.admn_port",
			line:     3,
			contains: []string{`unknown key "control_plane.admn_port" (line 3): remove it or fix its spelling`},
		},
		{
			name: "unknown deeply nested key",
			yaml: "control_plane:\n  watcher:\n    zero_streaks: 2\n",
			key:  "control_plane.watcher.zero_streaks", line: 3,
			contains: []string{`unknown key "control_plane.watcher.zero_streaks"`},
		},
		{
			name: "duplicate key",
			yaml: "control_plane:\n  admin_port: 1000\n  admin_port: 1001\n",
			key:  "control_plane.admin_port", line: 3,
			contains: []string{"control_plane.admin_port is set twice (lines 2 and 3); keep only one"},
		},
		{
			name: "port out of range high",
			yaml: "control_plane:\n  health_port: 70000\n",
			key:  "control_plane.health_port", line: 2,
			contains: []string{"control_plane.health_port: 70000 is out of range; use a port from 1 to 65535"},
		},
		{
			name: "port zero",
			yaml: "control_plane:\n  agent_port: 0\n",
			key:  "control_plane.agent_port", line: 2,
			contains: []string{"control_plane.agent_port: 0 is out of range"},
		},
		{
			name: "port collides with default",
			yaml: "control_plane:\n  health_port: 7443\n",
			key:  "control_plane.health_port", line: 2,
			contains: []string{"control_plane.health_port: 7443 is already used by control_plane.admin_port; give each port its own number"},
		},
		{
			name: "string for a port",
			yaml: "control_plane:\n  admin_port: abc\n",
			key:  "control_plane.admin_port", line: 2,
			contains: []string{`control_plane.admin_port: "abc" is not a whole number; write an unquoted number such as 7443`},
		},
		{
			name: "quoted number for a port",
			yaml: "control_plane:\n  admin_port: \"8443\"\n",
			key:  "control_plane.admin_port", line: 2,
			contains: []string{`"8443" is not a whole number`},
		},
		{
			name: "float for a port",
			yaml: "control_plane:\n  admin_port: 8443.5\n",
			key:  "control_plane.admin_port", line: 2,
			contains: []string{`"8443.5" is not a whole number`},
		},
		{
			name: "bad duration",
			yaml: "control_plane:\n  supervisor:\n    restart_window: abc\n",
			key:  "control_plane.supervisor.restart_window", line: 3,
			contains: []string{`control_plane.supervisor.restart_window: "abc" is not a duration; write one with a unit, such as "30s"`},
		},
		{
			name: "duration without unit",
			yaml: "control_plane:\n  watcher:\n    grace: 60\n",
			key:  "control_plane.watcher.grace", line: 3,
			contains: []string{`control_plane.watcher.grace: 60 has no unit; write a duration such as "60s"`},
		},
		{
			name: "zero duration",
			yaml: "control_plane:\n  supervisor:\n    start_timeout: 0s\n",
			key:  "control_plane.supervisor.start_timeout", line: 3,
			contains: []string{"control_plane.supervisor.start_timeout: 0s is not positive"},
		},
		{
			name: "negative duration",
			yaml: "control_plane:\n  watcher:\n    poll_interval: -5s\n",
			key:  "control_plane.watcher.poll_interval", line: 3,
			contains: []string{"control_plane.watcher.poll_interval: -5s is not positive"},
		},
		{
			name: "negative max_restarts",
			yaml: "control_plane:\n  supervisor:\n    max_restarts: -1\n",
			key:  "control_plane.supervisor.max_restarts", line: 3,
			contains: []string{"control_plane.supervisor.max_restarts: -1 is negative; use 0 or more"},
		},
		{
			name: "zero zero_streak",
			yaml: "control_plane:\n  watcher:\n    zero_streak: 0\n",
			key:  "control_plane.watcher.zero_streak", line: 3,
			contains: []string{"control_plane.watcher.zero_streak: 0 is too small; use 1 or more"},
		},
		{
			name: "non-boolean enable",
			yaml: "firewall:\n  enable: yes\n",
			key:  "firewall.enable", line: 2,
			contains: []string{`firewall.enable: "yes" is not a boolean; write true or false`},
		},
		{
			name: "non-boolean watcher enable",
			yaml: "control_plane:\n  watcher:\n    enable: 0\n",
			key:  "control_plane.watcher.enable", line: 3,
			contains: []string{`control_plane.watcher.enable: "0" is not a boolean; write true or false`},
		},
		{
			name: "bad duration hints a tidy default",
			yaml: "control_plane:\n  watcher:\n    grace: soon\n",
			key:  "control_plane.watcher.grace", line: 3,
			contains: []string{`"soon" is not a duration; write one with a unit, such as "1m"`},
		},
		{
			name: "null leaf",
			yaml: "control_plane:\n  admin_port:\n",
			key:  "control_plane.admin_port", line: 2,
			contains: []string{"control_plane.admin_port: has no value; set one (the default is 7443) or remove the key"},
		},
		{
			name: "list for a leaf",
			yaml: "control_plane:\n  admin_port: [1, 2]\n",
			key:  "control_plane.admin_port", line: 2,
			contains: []string{"control_plane.admin_port: must be a single value, not a list"},
		},
		{
			name: "scalar for a section",
			yaml: "control_plane: 7443\n",
			key:  "control_plane", line: 1,
			contains: []string{`control_plane must be a mapping of keys to values (key: value), not the value "7443"`},
		},
		{
			name: "list at the root",
			yaml: "- a\n- b\n",
			key:  "", line: 1,
			contains: []string{"the file must be a mapping"},
		},
		{
			name:     "syntax error",
			yaml:     "control_plane:\n  admin_port: [\n",
			key:      "",
			contains: []string{"invalid YAML:", "fix the syntax"},
		},
		{
			name: "two documents",
			yaml: "firewall: {enable: true}\n---\nfirewall: {enable: false}\n",
			key:  "", line: 2, // the "---" line
			contains: []string{"more than one YAML document"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeSettings(t, tt.yaml)
			_, err := Load(path)
			if err == nil {
				t.Fatal("Load succeeded, want error")
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v (%T) is not *Error", err, err)
			}
			if e.File != path {
				t.Errorf("File = %q, want %q", e.File, path)
			}
			if e.Key != tt.key {
				t.Errorf("Key = %q, want %q", e.Key, tt.key)
			}
			if tt.line != 0 && e.Line != tt.line {
				t.Errorf("Line = %d, want %d", e.Line, tt.line)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, path+": ") {
				t.Errorf("message %q does not start with the file path", msg)
			}
			for _, want := range tt.contains {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q\ndoes not contain %q", msg, want)
				}
			}
		})
	}
}

func TestValidateWithoutFile(t *testing.T) {
	s := Default()
	s.ControlPlane.KratosAdminPort = s.ControlPlane.HydraPublicPort
	err := s.Validate()
	want := "control_plane.kratos_admin_port: 4444 is already used by control_plane.hydra_public_port; give each port its own number"
	if err == nil || err.Error() != want {
		t.Fatalf("Validate() = %v, want %q", err, want)
	}
}

func TestPorts(t *testing.T) {
	got := Default().Ports()
	want := []NamedPort{
		{"control_plane.admin_port", 7443},
		{"control_plane.health_port", 7080},
		{"control_plane.agent_port", 7444},
		{"control_plane.hydra_public_port", 4444},
		{"control_plane.hydra_admin_port", 4445},
		{"control_plane.oathkeeper_port", 4456},
		{"control_plane.oathkeeper_api_port", 4457},
		{"control_plane.kratos_public_port", 4433},
		{"control_plane.kratos_admin_port", 4434},
		{"control_plane.stack_port", 7445},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Ports() = %v\nwant      %v", got, want)
	}

	// Guard against a port field being added without being listed in Ports
	// (and so escaping range and collision checks).
	typ := reflect.TypeFor[ControlPlane]()
	var tags []string
	for i := range typ.NumField() {
		if tag := typ.Field(i).Tag.Get("yaml"); strings.HasSuffix(tag, "_port") {
			tags = append(tags, "control_plane."+tag)
		}
	}
	var keys []string
	for _, p := range got {
		keys = append(keys, p.Key)
	}
	if !reflect.DeepEqual(tags, keys) {
		t.Fatalf("port fields %v do not match Ports() keys %v", tags, keys)
	}
}

func TestResolvePaths(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    Paths
		wantErr string
	}{
		{
			name: "HOME fallback",
			env:  map[string]string{"HOME": "/home/u"},
			want: Paths{
				ConfigDir:    "/home/u/.config/clawker",
				DataDir:      "/home/u/.local/share/clawker",
				StateDir:     "/home/u/.local/state/clawker",
				SettingsFile: "/home/u/.config/clawker/settings.yaml",
				LogDir:       "/home/u/.local/state/clawker/logs",
				LogFile:      "/home/u/.local/state/clawker/logs/clawker-controlplane.log",
			},
		},
		{
			name: "XDG variables win",
			env: map[string]string{
				"HOME":            "/home/u",
				"XDG_CONFIG_HOME": "/cfg/",
				"XDG_DATA_HOME":   "/data",
				"XDG_STATE_HOME":  "/state",
			},
			want: Paths{
				ConfigDir:    "/cfg/clawker",
				DataDir:      "/data/clawker",
				StateDir:     "/state/clawker",
				SettingsFile: "/cfg/clawker/settings.yaml",
				LogDir:       "/state/clawker/logs",
				LogFile:      "/state/clawker/logs/clawker-controlplane.log",
			},
		},
		{
			name: "relative XDG values are ignored",
			env: map[string]string{
				"HOME":            "/home/u",
				"XDG_CONFIG_HOME": "cfg",
				"XDG_DATA_HOME":   "./data",
				"XDG_STATE_HOME":  "/state",
			},
			want: Paths{
				ConfigDir:    "/home/u/.config/clawker",
				DataDir:      "/home/u/.local/share/clawker",
				StateDir:     "/state/clawker",
				SettingsFile: "/home/u/.config/clawker/settings.yaml",
				LogDir:       "/state/clawker/logs",
				LogFile:      "/state/clawker/logs/clawker-controlplane.log",
			},
		},
		{
			name: "XDG set everywhere needs no HOME",
			env:  map[string]string{"XDG_CONFIG_HOME": "/c", "XDG_DATA_HOME": "/d", "XDG_STATE_HOME": "/s"},
			want: Paths{
				ConfigDir: "/c/clawker", DataDir: "/d/clawker", StateDir: "/s/clawker",
				SettingsFile: "/c/clawker/settings.yaml",
				LogDir:       "/s/clawker/logs",
				LogFile:      "/s/clawker/logs/clawker-controlplane.log",
			},
		},
		{
			name:    "no HOME and no XDG",
			env:     map[string]string{},
			wantErr: "XDG_CONFIG_HOME",
		},
		{
			name:    "relative HOME is unusable",
			env:     map[string]string{"HOME": "home", "XDG_CONFIG_HOME": "/c", "XDG_DATA_HOME": "/d"},
			wantErr: "XDG_STATE_HOME",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ResolvePaths(func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "HOME") {
					t.Fatalf("err = %v, want one naming %s and HOME", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tt.want
			want.AuthDir = want.DataDir + "/auth"
			want.CPDir = want.DataDir + "/controlplane"
			want.CPAuthDir = want.DataDir + "/controlplane/auth"
			want.RegistryDB = want.DataDir + "/controlplane/controlplane.db"
			want.FirewallDir = want.DataDir + "/firewall"
			if got != want {
				t.Fatalf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestFirewallLists(t *testing.T) {
	s, err := parse([]byte("firewall:\n  upstream_dns: [\"172.30.0.1:53\", 10.0.0.2:5353]\n  private_destinations:\n    - 172.30.0.1\n    - 10.0.0.0/8\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.Firewall.UpstreamDNS, []string{"172.30.0.1:53", "10.0.0.2:5353"}) ||
		!reflect.DeepEqual(s.Firewall.PrivateDestinations, []string{"172.30.0.1", "10.0.0.0/8"}) {
		t.Fatalf("lists: %+v", s.Firewall)
	}
	if d := Default().Firewall.UpstreamDNS; !reflect.DeepEqual(d, []string{DefaultUpstreamDNS}) {
		t.Fatalf("default upstream_dns %v", d)
	}
	for _, c := range []struct{ yaml, want string }{
		{"firewall:\n  upstream_dns: []\n", "firewall.upstream_dns: is empty; list at least one resolver"},
		{"firewall:\n  upstream_dns: 192.0.2.53:53\n", "firewall.upstream_dns: must be a list"},
		{"firewall:\n  upstream_dns: [\"dns.example:53\"]\n", `firewall.upstream_dns: entry 0 ("dns.example:53") is not an IPv4 ip:port`},
		{"firewall:\n  upstream_dns: [53]\n", "firewall.upstream_dns: entry 0 must be a string"},
		{"firewall:\n  private_destinations: [\"10.0.0.0/33\"]\n", `firewall.private_destinations: entry 0 ("10.0.0.0/33") is not an IPv4 CIDR or address`},
		{"firewall:\n  private_destinations: [\"fd00::/8\"]\n", `firewall.private_destinations: entry 0 ("fd00::/8") is not an IPv4 CIDR`},
	} {
		_, err := parse([]byte(c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.yaml, err, c.want)
		}
	}
}

func TestMonitoring(t *testing.T) {
	d := Default().Monitoring
	if d.OTLPEndpoint != "" || d.OTLPInsecure || d.EgressEventsPerSecond != DefaultEgressEventsPerSecond {
		t.Fatalf("default monitoring %+v: the netlogger must be off by default", d)
	}
	ca := writeTestCA(t)
	s, err := parse([]byte("monitoring:\n  otlp_endpoint: collector.example:4317\n  otlp_ca: " + ca + "\n  egress_events_per_second: 50\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Monitoring.OTLPEndpoint != "collector.example:4317" || s.Monitoring.OTLPCA != ca || s.Monitoring.EgressEventsPerSecond != 50 {
		t.Fatalf("monitoring %+v", s.Monitoring)
	}
	for _, ok := range []string{
		"monitoring:\n  otlp_endpoint: https://collector.example:4317\n",
		"monitoring:\n  otlp_endpoint: 127.0.0.1:4317\n  otlp_insecure: true\n",
		"monitoring:\n  otlp_endpoint: http://172.30.0.9:4317\n  otlp_insecure: true\n",
		"monitoring:\n  otlp_endpoint: \"[::1]:4317\"\n  otlp_insecure: true\n",
	} {
		if _, err := parse([]byte(ok)); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, c := range []struct{ yaml, key, want string }{
		{"monitoring:\n  otlp_endpoint: http://127.0.0.1:4317\n", "monitoring.otlp_endpoint", `monitoring.otlp_endpoint: "http://127.0.0.1:4317" is plaintext; use host:port (TLS with a client certificate), or set monitoring.otlp_insecure: true`},
		{"monitoring:\n  otlp_endpoint: collector:4317\n  otlp_insecure: true\n", "monitoring.otlp_insecure", `monitoring.otlp_insecure: plaintext to "collector" is refused`},
		{"monitoring:\n  otlp_endpoint: 198.51.100.8:4317\n  otlp_insecure: true\n", "monitoring.otlp_insecure", `plaintext to "198.51.100.8" is refused`},
		{"monitoring:\n  otlp_endpoint: https://127.0.0.1:4317\n  otlp_insecure: true\n", "monitoring.otlp_endpoint", "asks for TLS (https://) but monitoring.otlp_insecure is true"},
		{"monitoring:\n  otlp_endpoint: collector\n", "monitoring.otlp_endpoint", `"collector" is not host:port`},
		{"monitoring:\n  otlp_endpoint: collector:0\n", "monitoring.otlp_endpoint", `has port "0"`},
		{"monitoring:\n  otlp_endpoint: https://collector:4317/v1/logs\n", "monitoring.otlp_endpoint", "is not host:port"},
		{"monitoring:\n  otlp_endpoint: collector:4317\n  otlp_ca: /nonexistent/ca.pem\n", "monitoring.otlp_ca", "cannot read /nonexistent/ca.pem"},
		{"monitoring:\n  otlp_endpoint: collector:4317\n  otlp_ca: \"-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n\"\n", "monitoring.otlp_ca", "monitoring.otlp_ca:"},
		{"monitoring:\n  otlp_endpoint: 127.0.0.1:4317\n  otlp_insecure: true\n  otlp_ca: " + ca + "\n", "monitoring.otlp_ca", "monitoring.otlp_insecure turns TLS off"},
		{"monitoring:\n  egress_events_per_second: 0\n", "monitoring.egress_events_per_second", "0 is out of range"},
		{"monitoring:\n  otlp_insecure: maybe\n", "monitoring.otlp_insecure", "monitoring.otlp_insecure"},
		{"monitoring:\n  otlp_endpont: x:1\n", "monitoring.otlp_endpont", "monitoring.otlp_endpont"},
	} {
		_, err := parse([]byte(c.yaml))
		var e *Error
		if !errors.As(err, &e) || e.Key != c.key || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v (key %q), want key %s and %q", c.yaml, err, keyOf(e), c.key, c.want)
		}
	}
}

func keyOf(e *Error) string {
	if e == nil {
		return ""
	}
	return e.Key
}

// writeTestCA writes a self-signed CA certificate as PEM and returns its path.
func writeTestCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAgentToAgentAndAgentLimits(t *testing.T) {
	d := Default()
	if d.Firewall.AgentToAgent != AgentToAgentDeny || d.Agents.PidsLimit != DefaultAgentPidsLimit || d.Agents.Memory != DefaultAgentMemory {
		t.Fatalf("defaults: agent_to_agent %q, agents %+v", d.Firewall.AgentToAgent, d.Agents)
	}
	for _, choice := range []string{"deny", "project", "allow"} {
		s, err := parse([]byte("firewall:\n  agent_to_agent: " + choice + "\n"))
		if err != nil || s.Firewall.AgentToAgent != choice {
			t.Errorf("agent_to_agent %s: %q, %v", choice, s.Firewall.AgentToAgent, err)
		}
	}
	s, err := parse([]byte("agents:\n  pids_limit: 512\n  memory: 512m\n"))
	if err != nil || s.Agents.PidsLimit != 512 || s.Agents.Memory != "512m" {
		t.Fatalf("agents: %+v, %v", s.Agents, err)
	}
	for in, want := range map[string]int64{"8g": 8 << 30, "512M": 512 << 20, "1024": 1024, "2kb": 2048, "1t": 1 << 40} {
		if got, err := ParseMemory(in); err != nil || got != want {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, c := range []struct{ yaml, key, want string }{
		{"firewall:\n  agent_to_agent: peers\n", "firewall.agent_to_agent", `"peers" is not a choice; use deny (the default), project or allow`},
		{"agents:\n  pids_limit: 0\n", "agents.pids_limit", "0 is too small"},
		{"agents:\n  memory: lots\n", "agents.memory", `"lots" is not a memory size`},
		{"agents:\n  memory: -1g\n", "agents.memory", `"-1g" is not a memory size`},
	} {
		_, err := parse([]byte(c.yaml))
		var e *Error
		if !errors.As(err, &e) || e.Key != c.key || e.Line == 0 || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %s on its line: %q", c.yaml, err, c.key, c.want)
		}
	}
}
