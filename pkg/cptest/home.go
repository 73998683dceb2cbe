package cptest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/ory"
	"github.com/clawker/clawker-cp/pkg/settings"
)

// Home is one test's private set of XDG base directories: the settings file,
// the data directory and the log file of the processes it starts live there.
type Home struct {
	ConfigHome string // XDG_CONFIG_HOME
	DataHome   string // XDG_DATA_HOME
	StateHome  string // XDG_STATE_HOME

	ports Ports
}

// Ports maps a settings key ("control_plane.health_port") to a port.
type Ports map[string]int

// Health is the health port.
func (p Ports) Health() int { return p["control_plane.health_port"] }

// NewHome makes a Home of fresh temporary directories, removed when the test
// ends.
func NewHome(t testing.TB) *Home {
	t.Helper()
	dir := t.TempDir()
	h := &Home{
		ConfigHome: filepath.Join(dir, "config"),
		DataHome:   filepath.Join(dir, "data"),
		StateHome:  filepath.Join(dir, "state"),
	}
	for _, d := range []string{h.ConfigHome, h.DataHome, h.StateHome} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// A root CP of this home runs the Ory servers from a run dir outside
	// it; a CP killed before its drain leaves that dir (and its copies of
	// the home's TLS key) behind. This exact dir goes when the test ends.
	if p, err := settings.ResolvePaths(h.getenv); err == nil {
		runDir := ory.RunDirFor(p.CPDir)
		t.Cleanup(func() { _ = os.RemoveAll(runDir) })
	}
	return h
}

// NewCPHome is a Home ready for clawker-cp: settings.yaml with free ports
// (merged with extraSettings, see WriteSettingsWithPorts) and auth material
// (see EnsureAuth).
func NewCPHome(t testing.TB, extraSettings string) *Home {
	t.Helper()
	h := NewHome(t)
	h.WriteSettingsWithPorts(t, extraSettings)
	h.EnsureAuth(t)
	return h
}

// Env is the environment for a process using this home: the test process's
// own, without any XDG_* variable, clawker-cp debug knob or Ory dir it may carry,
// plus the home's three XDG directories.
func (h *Home) Env() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "XDG_") || strings.HasPrefix(k, "CLAWKER_CP_DEBUG_") || k == "CLAWKER_CP_ORY_DIR" {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"XDG_CONFIG_HOME="+h.ConfigHome,
		"XDG_DATA_HOME="+h.DataHome,
		"XDG_STATE_HOME="+h.StateHome,
	)
}

// Paths are the clawker paths this home resolves to, computed by the same
// code the binaries use.
func (h *Home) Paths(t testing.TB) settings.Paths {
	t.Helper()
	p, err := settings.ResolvePaths(h.getenv)
	if err != nil {
		t.Fatalf("cptest: resolving the home's paths: %v", err)
	}
	return p
}

func (h *Home) getenv(k string) string {
	switch k {
	case "XDG_CONFIG_HOME":
		return h.ConfigHome
	case "XDG_DATA_HOME":
		return h.DataHome
	case "XDG_STATE_HOME":
		return h.StateHome
	}
	return os.Getenv(k)
}

// SettingsFile is $XDG_CONFIG_HOME/clawker/settings.yaml.
func (h *Home) SettingsFile(t testing.TB) string { return h.Paths(t).SettingsFile }

// LogFile is the control plane's rotated log file.
func (h *Home) LogFile(t testing.TB) string { return h.Paths(t).LogFile }

// WriteSettings writes content as the home's settings.yaml, verbatim.
func (h *Home) WriteSettings(t testing.TB, content string) {
	t.Helper()
	file := h.SettingsFile(t)
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Ports returns a free port for each of the control plane's port settings,
// chosen on the first call and the same afterwards.
func (h *Home) Ports(t testing.TB) Ports {
	t.Helper()
	if h.ports == nil {
		keys := settings.Default().Ports()
		free := FreePorts(t, len(keys))
		h.ports = Ports{}
		for i, k := range keys {
			h.ports[k.Key] = free[i]
		}
	}
	return h.ports
}

// WriteSettingsWithPorts writes a settings.yaml that sets every control
// plane port to h.Ports (so parallel tests never collide), deep-merged with
// the YAML mapping extra (which wins where both set a key), and returns the
// text written. extra may be "". The firewall is disabled unless extra
// enables it: the firewall stack is not built yet, and a CP with it enabled
// refuses to start.
func (h *Home) WriteSettingsWithPorts(t testing.TB, extra string) string {
	t.Helper()
	cp := map[string]any{}
	for key, port := range h.Ports(t) {
		cp[strings.TrimPrefix(key, "control_plane.")] = port
	}
	doc, err := MergeYAML(map[string]any{"control_plane": cp, "firewall": map[string]any{"enable": false}}, extra)
	if err != nil {
		t.Fatalf("cptest: %v", err)
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatalf("cptest: encoding settings: %v", err)
	}
	h.WriteSettings(t, string(out))
	return string(out)
}

// EnsureAuth creates the home's auth material with the same code as
// `clawker auth rotate` (CA, server, CLI and signing keys under
// $XDG_DATA_HOME/clawker/auth) and writes the control plane's server bundle
// where clawker-cp reads it. Idempotent; returns the host-side material.
func (h *Home) EnsureAuth(t testing.TB) *certs.Material {
	t.Helper()
	p := h.Paths(t)
	if _, err := certs.Ensure(p.AuthDir, certs.Options{}); err != nil {
		t.Fatalf("cptest: creating auth material: %v", err)
	}
	m, err := certs.Load(p.AuthDir)
	if err != nil {
		t.Fatalf("cptest: loading auth material: %v", err)
	}
	if err := m.WriteServerBundle(p.CPAuthDir); err != nil {
		t.Fatalf("cptest: writing the server bundle: %v", err)
	}
	return m
}

// MergeYAML deep-merges the YAML mapping extra into base (extra wins; nested
// mappings merge key by key) and returns base.
func MergeYAML(base map[string]any, extra string) (map[string]any, error) {
	var over map[string]any
	if err := yaml.Unmarshal([]byte(extra), &over); err != nil {
		return nil, fmt.Errorf("extra settings are not a YAML mapping: %w", err)
	}
	mergeInto(base, over)
	return base, nil
}

func mergeInto(dst, src map[string]any) {
	for k, v := range src {
		sm, sok := v.(map[string]any)
		dm, dok := dst[k].(map[string]any)
		if sok && dok {
			mergeInto(dm, sm)
			continue
		}
		dst[k] = v
	}
}
