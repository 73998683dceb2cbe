package clawkercli_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/clawkercli"
	"github.com/clawker/clawker-cp/pkg/cpboot"
)

func fixedHash(h string) func() (string, error) { return func() (string, error) { return h, nil } }

func TestVersion(t *testing.T) {
	for _, c := range []struct {
		name, commit string
		hash         func() (string, error)
		want         string
	}{
		{"stamped", "45fb2a8c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a-dirty", fixedHash("0123456789abcdef"),
			"clawker dev\ncommit: 45fb2a8c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a-dirty\ncontrol plane image: clawker-controlplane:bin-0123456789abcdef\n"},
		{"bare", "", func() (string, error) { return "", cpboot.ErrNotEmbedded },
			"clawker dev\ncommit: unknown (built without VCS information)\n" +
				"control plane image: none: this clawker carries no control plane (build it with `go tool task build`)\n"},
		{"broken bundle", "abc", func() (string, error) { return "", errors.New("hashing clawkerd: read error") },
			"clawker dev\ncommit: abc\ncontrol plane image: unknown: hashing clawkerd: read error\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer clawkercli.SetBuild(c.commit, c.hash)()
			env, stdout, stderr := cliEnv(t, deadPort(t))
			if code := run(t, env, "--version"); code != 0 || stdout.String() != c.want || stderr.Len() != 0 {
				t.Errorf("exit %d, stdout %q, stderr %q\nwant %q", code, stdout.String(), stderr.String(), c.want)
			}
		})
	}

	// A release build's version, as cmd/clawker sets it.
	defer clawkercli.SetBuild("abc", fixedHash("0123456789abcdef"))()
	old := clawkercli.Version
	clawkercli.Version = "v0.4.0"
	defer func() { clawkercli.Version = old }()
	env, stdout, _ := cliEnv(t, deadPort(t))
	if code := run(t, env, "--version"); code != 0 || !strings.HasPrefix(stdout.String(), "clawker v0.4.0\n") {
		t.Errorf("exit %d, stdout %q", code, stdout.String())
	}
}

// Without --version the root still shows help, and an unknown command
// still fails, as before the flag existed.
func TestVersionRootUnchanged(t *testing.T) {
	hashed := false
	defer clawkercli.SetBuild("abc", func() (string, error) { hashed = true; return "", nil })()
	env, stdout, stderr := cliEnv(t, deadPort(t))
	if code := run(t, env); code != 0 || !strings.Contains(stdout.String(), "USAGE:") || !strings.Contains(stdout.String(), "--version") {
		t.Errorf("no args: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	env, _, stderr = cliEnv(t, deadPort(t))
	if code := run(t, env, "bogus"); code != 1 || stderr.String() != "clawker: No help topic for 'bogus'\n" {
		t.Errorf("bogus: exit %d, stderr %q", code, stderr.String())
	}
	if hashed {
		t.Error("the embedded binaries were hashed without --version")
	}
}

// cpImageDocker is a running clawker-controlplane container labelled
// with binhash.
type cpImageDocker struct {
	cpboot.Docker
	binhash string
}

func (d cpImageDocker) ContainerInspect(_ context.Context, id string, _ client.ContainerInspectOptions) (client.ContainerInspectResult, error) {
	if id != cpboot.ContainerName {
		return client.ContainerInspectResult{}, errors.New("cpImageDocker: inspect of " + id)
	}
	return client.ContainerInspectResult{Container: container.InspectResponse{
		ID: cpID, Name: "/" + cpboot.ContainerName, State: cpRunning,
		Config: &container.Config{Labels: map[string]string{cpboot.LabelManaged: "true", cpboot.LabelPurpose: cpboot.PurposeControlPlane, cpboot.LabelBinHash: d.binhash}},
	}}, nil
}

// `controlplane status` adds, after its lines, the image the running
// control plane was made from and whether it is this clawker's.
func TestStatusImage(t *testing.T) {
	const mine, older = "0123456789abcdef", "fedcba9876543210"
	for _, c := range []struct {
		golden, running string
		hash            func() (string, error)
		args            []string
	}{
		{"status_image_current", mine, fixedHash(mine), nil},
		{"status_image_stale", older, fixedHash(mine), nil},
		{"status_image_no_bundle", older, func() (string, error) { return "", cpboot.ErrNotEmbedded }, nil},
		{"status_image_stale_json", older, fixedHash(mine), []string{"--format", "json"}},
	} {
		t.Run(c.golden, func(t *testing.T) {
			defer clawkercli.SetBuild("abc", c.hash)()
			port := serve(t, map[string]func(w http.ResponseWriter){"/healthz": jsonAnswer(t, http.StatusOK, healthy)})
			env, stdout, stderr := cliEnv(t, port)
			env.Docker = func() (cpboot.Docker, error) { return cpImageDocker{binhash: c.running}, nil }
			if code := run(t, env, append([]string{"controlplane", "status"}, c.args...)...); code != 0 || stderr.Len() != 0 {
				t.Fatalf("exit %d, stderr %q", code, stderr.String())
			}
			checkGoldenFile(t, c.golden+".golden", stdout.String())
		})
	}
}
