package cpboot

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// Options.Env reaches the container's environment and its spec hash; a
// spec without it hashes as before Env existed.
func TestOptionsEnv(t *testing.T) {
	s, p := testSettingsPaths(t)
	plain := newSpec(s, p, dockerSocket)
	if b, _ := json.Marshal(plain); strings.Contains(string(b), `"Env"`) {
		t.Errorf("a spec without Env marshals as %s: every existing container's hash would change", b)
	}
	knob := "CLAWKER_CP_DEBUG_CLOCK_SKEW=-5s,2s"
	withEnv := plain
	withEnv.Env = []string{knob}
	if plain.hash() == withEnv.hash() {
		t.Error("Env did not change the spec hash: a container made without the knob would be adopted")
	}
	o := &Options{Settings: s, Paths: p, Env: []string{knob}}
	co, err := createOptions(o, withEnv, ImageRef("0123456789abcdef"), "0123456789abcdef", netip.MustParseAddr("172.18.0.202"), false)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"XDG_CONFIG_HOME=/config", "XDG_DATA_HOME=/data", "XDG_STATE_HOME=/state", knob}
	if !slices.Equal(co.Config.Env, want) || co.Config.Labels[dockerx.LabelSpecHash] != withEnv.hash() {
		t.Errorf("env %q (want %q), spec hash label %s", co.Config.Env, want, co.Config.Labels[dockerx.LabelSpecHash])
	}
}
