package cptest

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/clawker/clawker-cp/pkg/settings"
)

func TestMain(m *testing.M) { Main(m) }

func TestFreePortsAreDistinctAcrossCalls(t *testing.T) {
	seen := map[int]bool{}
	for range 5 {
		for _, p := range FreePorts(t, 9) {
			if p <= 0 || p > 65535 {
				t.Fatalf("port %d out of range", p)
			}
			if seen[p] {
				t.Fatalf("port %d handed out twice", p)
			}
			seen[p] = true
		}
	}
}

func TestMergeYAML(t *testing.T) {
	base := map[string]any{"control_plane": map[string]any{"admin_port": 1, "health_port": 2}}
	got, err := MergeYAML(base, "control_plane:\n  health_port: 3\n  supervisor: {max_restarts: 2}\nfirewall: {enable: false}\n")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"control_plane": map[string]any{"admin_port": 1, "health_port": 3, "supervisor": map[string]any{"max_restarts": 2}},
		"firewall":      map[string]any{"enable": false},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %#v\nwant %#v", got, want)
	}
	if _, err := MergeYAML(map[string]any{}, "- a list\n"); err == nil {
		t.Fatal("a YAML list merged without error")
	}
}

func TestWriteSettingsWithPortsLoads(t *testing.T) {
	h := NewHome(t)
	h.WriteSettingsWithPorts(t, "control_plane:\n  supervisor:\n    max_restarts: 2\n")
	s, err := settings.Load(h.SettingsFile(t))
	if err != nil {
		t.Fatalf("the written settings do not load: %v", err)
	}
	for _, np := range s.Ports() {
		if np.Port != h.Ports(t)[np.Key] {
			t.Errorf("%s = %d, want %d", np.Key, np.Port, h.Ports(t)[np.Key])
		}
	}
	if s.ControlPlane.Supervisor.MaxRestarts != 2 {
		t.Errorf("max_restarts = %d, want 2", s.ControlPlane.Supervisor.MaxRestarts)
	}
	if got := h.Ports(t).Health(); got != s.ControlPlane.HealthPort {
		t.Errorf("Ports.Health() = %d, want %d", got, s.ControlPlane.HealthPort)
	}
	// A string stays a string, so a test can write a mistyped value.
	h.WriteSettingsWithPorts(t, "control_plane:\n  health_port: \"7080\"\n")
	if _, err := settings.Load(h.SettingsFile(t)); err == nil || !strings.Contains(err.Error(), "control_plane.health_port") {
		t.Errorf("a quoted port loaded: %v", err)
	}
}

func TestHomeEnv(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", "/elsewhere")
	t.Setenv("CLAWKER_CP_DEBUG_FAULTS", "1")
	h := NewHome(t)
	var xdg []string
	for _, kv := range h.Env() {
		if strings.HasPrefix(kv, "CLAWKER_CP_DEBUG_") {
			t.Errorf("debug knob leaked: %s", kv)
		}
		if strings.HasPrefix(kv, "XDG_") {
			xdg = append(xdg, kv)
		}
	}
	want := []string{"XDG_CONFIG_HOME=" + h.ConfigHome, "XDG_DATA_HOME=" + h.DataHome, "XDG_STATE_HOME=" + h.StateHome}
	if !reflect.DeepEqual(xdg, want) {
		t.Errorf("XDG variables = %q, want %q", xdg, want)
	}
	if got, want := h.LogFile(t), filepath.Join(h.StateHome, "clawker", "logs", "clawker-controlplane.log"); got != want {
		t.Errorf("LogFile = %s, want %s", got, want)
	}
}

func TestParseJSONLines(t *testing.T) {
	objs, other := ParseJSONLines("{\"event\":\"a\",\"n\":1}\nnot json\n\n[1,2]\n{\"event\":\"b\"}\n")
	if len(objs) != 2 || objs[0]["event"] != "a" || objs[1]["event"] != "b" {
		t.Errorf("objects = %v", objs)
	}
	if !reflect.DeepEqual(other, []string{"not json", "[1,2]"}) {
		t.Errorf("other = %q", other)
	}
	if got := FilterEvent(objs, "b"); len(got) != 1 {
		t.Errorf("FilterEvent = %v", got)
	}
}

func TestTail(t *testing.T) {
	if got := tail("a\nb\nc\n", 2); got != "b\nc" {
		t.Errorf("tail = %q", got)
	}
	if got := tail("a\n", 5); got != "a" {
		t.Errorf("tail = %q", got)
	}
}

// TestBuildBinariesFromAnotherPackage builds from pkg/cptest, not the module
// root, and by a module-relative path; a second call reuses the first build.
func TestBuildBinariesFromAnotherPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	bins := BuildBinaries(t, "./cmd/clawker")
	p, ok := bins["clawker"]
	if !ok {
		t.Fatalf("no clawker in %v", bins)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
		t.Fatalf("%s is not an executable: %v", p, err)
	}
	again := BuildBinaries(t, "./cmd/clawker")
	if again["clawker"] != p {
		t.Errorf("second build went to %s, first to %s", again["clawker"], p)
	}
	res := RunCmd(t, DefaultCmdTimeout, NewHome(t).Env(), p, "--help")
	if res.Code != 0 || !strings.Contains(res.Stdout, "controlplane") {
		t.Errorf("clawker --help: %+v", res)
	}
}
