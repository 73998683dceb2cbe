package main_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/agentrun"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/clawkercli"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// firewallCAEnv is what `clawker run` sets with the firewall on.
var firewallCAEnv = []string{
	"SSL_CERT_FILE=" + agentrun.FirewallCABundlePath, "REQUESTS_CA_BUNDLE=" + agentrun.FirewallCABundlePath,
	"CURL_CA_BUNDLE=" + agentrun.FirewallCABundlePath, "GIT_SSL_CAINFO=" + agentrun.FirewallCABundlePath,
	"NODE_EXTRA_CA_CERTS=" + agentrun.FirewallCACertPath,
}

// checkAgentTrustsFirewallCA: the running agent id (of a FROM scratch
// image, so without roots of its own) trusts the host's firewall CA and
// nothing else of it: the files hold the certificate, never the key; the
// label names its fingerprint; clawkerd and a `docker exec` process both
// have the environment. Then an image with its own bundle gets its roots
// plus the CA.
func checkAgentTrustsFirewallCA(t *testing.T, e *e2e, id string) {
	t.Helper()
	fwDir := filepath.Join(e.home.DataHome, "clawker", "firewall")
	ca, err := certs.LoadFirewallCA(fwDir)
	if err != nil {
		t.Fatalf("the firewall CA on the host after clawker run: %v", err)
	}
	c := e.inspect(t, id)
	if got := c.Config.Labels[dockerx.LabelFirewallCA]; got != ca.Fingerprint {
		t.Errorf("label %s=%q, want the host CA's %s", dockerx.LabelFirewallCA, got, ca.Fingerprint)
	}
	for _, want := range firewallCAEnv {
		if !slices.Contains(c.Config.Env, want) {
			t.Errorf("container env lacks %s: %q", want, c.Config.Env)
		}
	}
	files := containerTree(t, e, id, agentrun.FirewallCADir)
	if len(files) != 2 {
		t.Errorf("%s holds %v, want the bundle and the CA only", agentrun.FirewallCADir, slices.Sorted(maps.Keys(files)))
	}
	if got := files["firewall-ca.crt"]; !bytes.Equal(got, ca.CertPEM) {
		t.Errorf("firewall-ca.crt in the agent is not the host's ca.crt:\n%s", got)
	}
	if got := pemCertsOf(t, files["ca-bundle.crt"]); len(got) != 1 || !got[0].Equal(ca.Cert) {
		t.Errorf("a scratch image's bundle holds %d certificates, want the firewall CA alone", len(got))
	}
	keyBlk, _ := pem.Decode(ca.KeyPEM)
	for name, body := range files {
		if bytes.Contains(body, ca.KeyPEM) || bytes.Contains(body, keyBlk.Bytes) {
			t.Errorf("%s in the agent carries the firewall CA's key", name)
		}
	}
	// clawkerd (the command's parent) and an exec'd process, as read by
	// the kernel: the trust is in the container's own environment.
	if c.State == nil || c.State.Pid == 0 {
		t.Fatalf("agent %s has no pid: %+v", id, c.State)
	}
	checkProcEnv(t, "clawkerd (pid 1)", c.State.Pid)
	checkProcEnv(t, "a docker exec process", execPid(t, e, id))

	// An image with roots of its own: its bundle, then the CA.
	rootPEM := testImageRoot(t)
	rootFile := filepath.Join(t.TempDir(), "roots.pem")
	if err := os.WriteFile(rootFile, rootPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	ref := "clawker-test-roots:" + e.run
	cptest.BuildImage(t, e.d, ref, cptest.ScratchImage{
		Files:  map[string]string{"probe": cptest.NetprobeBinaries(t)["probe"], "etc/ssl/certs/ca-certificates.crt": rootFile},
		Cmd:    []string{cptest.ProbePath, "-hold"},
		Labels: cptest.TestLabels(e.run),
	})
	res := e.clawker(t, cmdTimeout, "run", "--project", "fw", "--agent", "roots", "--format", "json", ref)
	if res.Code != 0 {
		t.Fatalf("clawker run (image with roots): exit %d\n%s", res.Code, res.Stderr)
	}
	defer func() {
		if r := e.clawker(t, cmdTimeout, "rm", "-f", "--project", "fw", "--agent", "roots"); r.Code != 0 {
			t.Errorf("rm fw.roots: %s", r.Stderr)
		}
	}()
	var rep clawkercli.RunReport
	if err := json.Unmarshal([]byte(res.Stdout), &rep); err != nil {
		t.Fatalf("run --format json: %v\n%s", err, res.Stdout)
	}
	bundle := containerTree(t, e, rep.Agent.ID, agentrun.FirewallCADir)["ca-bundle.crt"]
	got := pemCertsOf(t, bundle)
	t.Logf("firewall CA %s: in the scratch agent alone, in the agent of an image with roots after %d of its own", ca.Fingerprint[:12], len(got)-1)
	if len(got) != 2 || !bytes.Equal(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: got[0].Raw}), rootPEM) || !got[1].Equal(ca.Cert) {
		t.Errorf("bundle of an image with roots: %d certificates, want its root then the firewall CA", len(got))
	}

	// rotate-ca through the real CP: a new CA on disk, both running agents
	// named as still trusting the old one.
	rot := e.clawker(t, cmdTimeout, "firewall", "rotate-ca", "--format", "json")
	if rot.Code != 0 {
		t.Fatalf("firewall rotate-ca: exit %d\n%s", rot.Code, rot.Stderr)
	}
	var rr clawkercli.RotateCAReport
	if err := json.Unmarshal([]byte(rot.Stdout), &rr); err != nil {
		t.Fatalf("rotate-ca --format json: %v\n%s", err, rot.Stdout)
	}
	cur, err := certs.LoadFirewallCA(fwDir)
	if err != nil {
		t.Fatal(err)
	}
	if rr.Fingerprint != cur.Fingerprint || rr.PreviousFingerprint != ca.Fingerprint || cur.Fingerprint == ca.Fingerprint {
		t.Errorf("rotate-ca: %+v; on disk now %s, before %s", rr, cur.Fingerprint, ca.Fingerprint)
	}
	for _, want := range []string{"fw/hold", "fw/roots"} {
		if !slices.Contains(rr.StillTrustingOld, want) {
			t.Errorf("rotate-ca: still trusting the old CA %v, want %s among them", rr.StillTrustingOld, want)
		}
	}
	t.Logf("rotate-ca: %s -> %s, still trusting the old: %v", rr.PreviousFingerprint[:12], rr.Fingerprint[:12], rr.StillTrustingOld)
}

// containerTree reads the regular files under dir in container id, by base
// name.
func containerTree(t *testing.T, e *e2e, id, dir string) map[string][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := e.d.CopyFromContainer(ctx, id, client.CopyFromContainerOptions{SourcePath: dir})
	if err != nil {
		t.Fatalf("reading %s of %s: %v", dir, id, err)
	}
	defer res.Content.Close()
	out := map[string][]byte{}
	tr := tar.NewReader(res.Content)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			out[filepath.Base(h.Name)] = b
		}
	}
}

// execPid starts a probe that sleeps in container id (detached) and
// returns its host pid.
func execPid(t *testing.T, e *e2e, id string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ex, err := e.d.ExecCreate(ctx, id, client.ExecCreateOptions{Cmd: []string{cptest.ProbePath, "sleep:30s"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.ExecStart(ctx, ex.ID, client.ExecStartOptions{Detach: true}); err != nil {
		t.Fatal(err)
	}
	var pid int
	cptest.WaitFor(t, 30*time.Second, "the exec'd probe's pid", func() (bool, string) {
		ins, err := e.d.ExecInspect(ctx, ex.ID, client.ExecInspectOptions{})
		if err != nil {
			return false, err.Error()
		}
		pid = ins.PID
		return ins.Running && pid > 0, fmt.Sprintf("running %v pid %d exit %d", ins.Running, ins.PID, ins.ExitCode)
	})
	return pid
}

// checkProcEnv reads a process's environment as the kernel holds it.
func checkProcEnv(t *testing.T, what string, pid int) {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	env := strings.Split(string(raw), "\x00")
	for _, want := range firewallCAEnv {
		if !slices.Contains(env, want) {
			t.Errorf("%s's environment lacks %s: %q", what, want, env)
		}
	}
}

func pemCertsOf(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return out
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatalf("a bundle block: %v", err)
		}
		out = append(out, c)
	}
}

// testImageRoot is a self-signed root standing for an image's system roots.
func testImageRoot(t *testing.T) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "clawker-test image root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
