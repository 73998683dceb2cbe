package main_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/ory"
)

// TestRelativeOryDir starts clawker-cp with --ory-dir relative to its
// working directory (as `clawker-cp --ory-dir bin/ory` from the module
// root): the CP resolves it, the three servers start and /healthz goes green
// with their probes.
func TestRelativeOryDir(t *testing.T) {
	home := identityHome(t, "")
	home.EnsureAuth(t)
	wd, err := os.Getwd() // the CP inherits it
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(wd, cptest.OryDir(t))
	if err != nil || filepath.IsAbs(rel) {
		t.Fatalf("no relative path from %s to the Ory binaries: %q, %v", wd, rel, err)
	}
	p := cptest.Start(t, home, cpBinary(t), []string{"--ory-dir", rel})
	h := p.WaitHealthy(t, healthyTimeout)
	for _, n := range ory.Names {
		var found bool
		for _, pr := range h.Probes {
			found = found || pr.Name == "ory_"+n && pr.OK
		}
		if !found {
			t.Errorf("/healthz has no passing ory_%s probe: %+v", n, h.Probes)
		}
	}
}
