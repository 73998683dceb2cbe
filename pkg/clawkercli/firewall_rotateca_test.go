package clawkercli_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

const (
	testNewCA = "8bead499d1db1cdcc72ad0ef5c3ee2c3458d3b61ab877a10a8fe35f090d4f3ea"
	testOldCA = "3f218f3d0cdef5571f7df06f3f48df8da1af4804c77c6dde0d919abd6b571b40"
)

func TestFirewallRotateCA(t *testing.T) {
	for _, c := range []struct {
		name, golden string
		args         []string
		resp         *adminv1.FirewallRotateCAResponse
	}{
		{"agents still trusting the old CA", "firewall_rotateca_text.golden", nil,
			&adminv1.FirewallRotateCAResponse{Fingerprint: testNewCA, PreviousFingerprint: testOldCA, StillTrustingOld: []string{"myapp/dev", "myapp/review"}}},
		{"one agent", "firewall_rotateca_one.golden", nil,
			&adminv1.FirewallRotateCAResponse{Fingerprint: testNewCA, PreviousFingerprint: testOldCA, StillTrustingOld: []string{"myapp/dev"}}},
		{"first CA, no agent", "firewall_rotateca_first.golden", nil,
			&adminv1.FirewallRotateCAResponse{Fingerprint: testNewCA}},
		{"json", "firewall_rotateca_json.golden", []string{"--format", "json"},
			&adminv1.FirewallRotateCAResponse{Fingerprint: testNewCA, PreviousFingerprint: testOldCA, StillTrustingOld: []string{"myapp/dev"}}},
		{"json, no agent", "firewall_rotateca_none_json.golden", []string{"--format", "json"},
			&adminv1.FirewallRotateCAResponse{Fingerprint: testNewCA, PreviousFingerprint: testOldCA}},
	} {
		t.Run(c.name, func(t *testing.T) {
			env, _, srv, _, stdout, stderr := fwEnv(t)
			srv.SetFirewallAnswer("FirewallRotateCA", c.resp)
			if code := run(t, env, append([]string{"firewall", "rotate-ca"}, c.args...)...); code != 0 {
				t.Fatalf("exit %d, stderr %q", code, stderr.String())
			}
			if stderr.Len() != 0 {
				t.Errorf("stderr %q", stderr.String())
			}
			checkGoldenFile(t, c.golden, stdout.String())
			wantRequests(t, srv, &adminv1.FirewallRotateCARequest{})
		})
	}
}

func TestFirewallRotateCARefused(t *testing.T) {
	env, _, srv, _, stdout, stderr := fwEnv(t)
	srv.SetFirewallError("FirewallRotateCA", status.Error(codes.Unavailable, "the firewall's action queue is closed: the control plane is shutting down"))
	if code := run(t, env, "firewall", "rotate-ca"); code == 0 {
		t.Fatalf("exit 0, stdout %q", stdout.String())
	}
	if !strings.Contains(stderr.String(), "firewall rotate-ca") || !strings.Contains(stderr.String(), "shutting down") {
		t.Errorf("stderr %q", stderr.String())
	}
	env, _, _, _, _, stderr = fwEnv(t)
	if code := run(t, env, "firewall", "rotate-ca", "extra"); code == 0 || !strings.Contains(stderr.String(), "rotate-ca") {
		t.Errorf("an argument: exit %d, stderr %q", code, stderr.String())
	}
}
