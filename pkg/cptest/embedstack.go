package cptest

import (
	"os"
	"path/filepath"
	"testing"
)

// stackNames are the firewall siblings a bundle carries under stack/
// (cpboot.StackNames; cptest does not import cpboot).
var stackNames = []string{"clawker-dns", "clawker-proxy"}

var embedStackBuild struct{ buildEntry }

// BuildClawkerWithStack is BuildClawkerWithCP for a clawker that also
// carries the firewall siblings (StackDir's clawker-dns and clawker-proxy,
// under stack/): its control plane, in its container, runs the real DNS
// and proxy siblings instead of adopting stand-ins. The keys are those of
// BuildClawkerWithCP plus "stack/clawker-dns" and "stack/clawker-proxy".
// The stack is in pkg/cpboot/embedded only while this build holds the
// embedding lock, so every other build still embeds none.
func BuildClawkerWithStack(t testing.TB) map[string]string {
	t.Helper()
	out := BuildClawkerWithCP(t) // Ory (or its absence) decided once, there
	stack := StackDir(t)
	oryDir := ""
	if _, ok := out["ory/hydra"]; ok {
		oryDir = filepath.Dir(out["ory/hydra"])
	}
	embedStackBuild.once.Do(func() {
		bins := map[string]string{"clawker-cp": out["clawker-cp"], "clawkerd": out["clawkerd"]}
		embedStackBuild.path, embedStackBuild.err = buildEmbedding(bins, oryDir, stack)
	})
	if embedStackBuild.err != nil {
		t.Fatalf("cptest: building clawker with the control plane and the firewall stack embedded: %v", embedStackBuild.err)
	}
	out["clawker"] = embedStackBuild.path
	for _, n := range stackNames {
		out["stack/"+n] = filepath.Join(stack, n)
	}
	return out
}

// installStack copies the sibling binaries of stackDir into dst.
func installStack(stackDir, dst, tmpDir string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	for _, n := range stackNames {
		if err := installFile(filepath.Join(stackDir, n), filepath.Join(dst, n), tmpDir); err != nil {
			return err
		}
	}
	return nil
}
