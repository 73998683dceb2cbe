package cptest

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The module's layering, checked on the import graph `go list` reports (see
// docs/ARCHITECTURE.md, "Folders"): the one place these rules are tested.

const module = "github.com/clawker/clawker-cp"

// goList runs `go list` with args and env added to this process's
// environment, and returns its standard output.
func goList(t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v\n%s", args, err, stderr.String())
	}
	return string(out)
}

// within reports whether the import path pkg is prefix or lies under it.
func within(pkg, prefix string) bool {
	return pkg == prefix || strings.HasPrefix(pkg, prefix+"/") || strings.HasPrefix(pkg, prefix+".")
}

// pkg/ holds plain libraries: none of them may depend on the actor tree.
func TestPkgDoesNotImportActors(t *testing.T) {
	out := goList(t, nil, "-f", `{{.ImportPath}}: {{join .Deps " "}}`, module+"/pkg/...")
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		pkg, deps, _ := strings.Cut(line, ": ")
		for _, d := range strings.Fields(deps) {
			if strings.HasPrefix(d, module+"/actors") {
				t.Errorf("%s imports %s: pkg/ must not depend on actors/", pkg, d)
			}
		}
	}
}

// pkg/testkit is the leaf test kit every layer's tests may use: it imports
// nothing of this module, so it can never pull a production package into a
// lower package's tests.
func TestTestkitIsALeaf(t *testing.T) {
	out := goList(t, nil, "-f", `{{.ImportPath}}: {{join .Deps " "}}`, module+"/pkg/testkit/...")
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		pkg, deps, _ := strings.Cut(line, ": ")
		for _, d := range strings.Fields(deps) {
			if within(d, module) {
				t.Errorf("%s imports %s: pkg/testkit must not depend on this module", pkg, d)
			}
		}
	}
}

// clawkerdForbidden are the packages clawkerd must never link: it is a small
// static binary inside every agent container, not a second control plane
// (no actors, no registry store, no Ory servers, no Docker client).
var clawkerdForbidden = []string{
	"github.com/asynkron",
	"go.uber.org/zap",
	"modernc.org",
	"modernc.org/sqlite",
	"github.com/moby",
	"github.com/docker",
	"github.com/urfave",
	module + "/actors",
	module + "/pkg/agentdb",
	module + "/pkg/ory",
}

func TestClawkerdDependencies(t *testing.T) {
	// The release build: a static Linux binary.
	out := goList(t, []string{"GOOS=linux", "CGO_ENABLED=0"}, "-deps", module+"/cmd/clawkerd")
	var sawAgentd bool
	for _, pkg := range strings.Fields(out) {
		if pkg == module+"/pkg/agentd" {
			sawAgentd = true
		}
		for _, f := range clawkerdForbidden {
			if within(pkg, f) {
				t.Errorf("clawkerd depends on %s (forbidden: %s)", pkg, f)
			}
		}
	}
	if !sawAgentd {
		t.Fatalf("go list output does not look like clawkerd's dependencies:\n%s", out)
	}
}
