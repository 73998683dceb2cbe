package cptest

import (
	"os/exec"
	"strings"
	"testing"
)

// pkg/ holds plain libraries: none of them may depend on the actor tree.
func TestPkgDoesNotImportActors(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}: {{join .Deps " "}}`, "github.com/clawker/clawker-cp/pkg/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, deps, _ := strings.Cut(line, ": ")
		for _, d := range strings.Fields(deps) {
			if strings.HasPrefix(d, "github.com/clawker/clawker-cp/actors") {
				t.Errorf("%s imports %s: pkg/ must not depend on actors/", pkg, d)
			}
		}
	}
}
