package agentrun

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// caFake is the fake daemon recording every copy (the fake keeps the last
// one only) and serving symlinks from CopyFromContainer.
type caFake struct {
	*fakeDocker
	copies [][]tarEntry
	links  map[string]string // path -> target, served as tar symlinks
}

func (f *caFake) CopyToContainer(ctx context.Context, id string, o client.CopyToContainerOptions) (client.CopyToContainerResult, error) {
	data, err := io.ReadAll(o.Content)
	if err != nil {
		return client.CopyToContainerResult{}, err
	}
	var got []tarEntry
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return client.CopyToContainerResult{}, err
		}
		body, _ := io.ReadAll(tr)
		got = append(got, tarEntry{Header: *h, Body: body})
	}
	f.copies = append(f.copies, got)
	o.Content = bytes.NewReader(data)
	return f.fakeDocker.CopyToContainer(ctx, id, o)
}

func (f *caFake) CopyFromContainer(ctx context.Context, id string, o client.CopyFromContainerOptions) (client.CopyFromContainerResult, error) {
	target, ok := f.links[o.SourcePath]
	if !ok {
		return f.fakeDocker.CopyFromContainer(ctx, id, o)
	}
	f.call("CopyFromContainer " + o.SourcePath)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = tw.WriteHeader(&tar.Header{Name: filepath.Base(o.SourcePath), Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777})
	_ = tw.Close()
	return client.CopyFromContainerResult{Content: io.NopCloser(&buf)}, nil
}

// entry finds name in the recorded copies.
func (f *caFake) entry(name string) (tarEntry, bool) {
	for _, c := range f.copies {
		for _, e := range c {
			if e.Header.Name == name {
				return e, true
			}
		}
	}
	return tarEntry{}, false
}

// testRoot is a self-signed root standing for the image's system roots,
// and a server leaf it signed for host.
func testRoot(t *testing.T, host string) (rootPEM []byte, leaf *x509.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "image root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	lkey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ltmpl := &x509.Certificate{
		SerialNumber: big.NewInt(8), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	lder, err := x509.CreateCertificate(rand.Reader, ltmpl, root, &lkey.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ = x509.ParseCertificate(lder)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), leaf
}

func testFirewallCA(t *testing.T) *certs.FirewallCA {
	t.Helper()
	ca, _, err := certs.EnsureFirewallCA(filepath.Join(t.TempDir(), "firewall"))
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func pemCerts(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatalf("bundle block: %v", err)
		}
		out = append(out, c)
	}
}

func verifies(leaf *x509.Certificate, bundle []byte, host string) error {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundle) {
		return errors.New("no certificate in the bundle")
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host})
	return err
}

// With Spec.FirewallCA the agent trusts the firewall CA beside the image's
// own roots: the files, the environment, the label, before the start, and
// never the CA's key.
func TestCreateTrustsFirewallCA(t *testing.T) {
	fwca := testFirewallCA(t)
	rootPEM, imageLeaf := testRoot(t, "example.org")
	cases := []struct {
		name  string
		files map[string]string
		links map[string]string
		roots int // image roots expected in the bundle
	}{
		{"debian bundle without a final newline", map[string]string{"/etc/ssl/certs/ca-certificates.crt": strings.TrimSpace(string(rootPEM))}, nil, 1},
		{"fedora bundle through symlinks", map[string]string{"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem": string(rootPEM)},
			map[string]string{"/etc/pki/tls/certs/ca-bundle.crt": "../../ca-trust/extracted/pem/tls-ca-bundle.pem"}, 1},
		{"no bundle (scratch)", nil, nil, 0},
		{"a symlink loop is no bundle", nil, map[string]string{"/etc/ssl/cert.pem": "/etc/ssl/cert.pem"}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := &caFake{fakeDocker: newFake(), links: c.links}
			d.images["agent:1"] = fakeImage{Entrypoint: []string{"/agent"}, Files: c.files}
			s := testSpec(t, "agent:1")
			s.FirewallCA = fwca.Cert
			res, err := Create(context.Background(), d, s)
			if err != nil {
				t.Fatal(err)
			}
			ct := d.containers[res.ID]
			cfg := ct.Opts.Config
			for _, want := range []string{
				"SSL_CERT_FILE=/etc/clawker/ca-bundle.crt", "REQUESTS_CA_BUNDLE=/etc/clawker/ca-bundle.crt",
				"CURL_CA_BUNDLE=/etc/clawker/ca-bundle.crt", "GIT_SSL_CAINFO=/etc/clawker/ca-bundle.crt",
				"NODE_EXTRA_CA_CERTS=/etc/clawker/firewall-ca.crt",
			} {
				if !slices.Contains(cfg.Env, want) {
					t.Errorf("env lacks %s: %q", want, cfg.Env)
				}
			}
			if got := cfg.Labels[dockerx.LabelFirewallCA]; got != fwca.Fingerprint {
				t.Errorf("label %s=%q, want %s", dockerx.LabelFirewallCA, got, fwca.Fingerprint)
			}

			dir, ok := d.entry("etc/clawker/")
			if !ok || dir.Header.Typeflag != tar.TypeDir || dir.Header.Mode != 0o755 || dir.Header.Uid != 0 {
				t.Errorf("etc/clawker/ entry %+v (found %v)", dir.Header, ok)
			}
			if _, ok := d.entry("etc/"); ok {
				t.Error("the copy has an etc/ entry: it would reset the image's /etc")
			}
			caFile, ok := d.entry("etc/clawker/firewall-ca.crt")
			if !ok || !bytes.Equal(caFile.Body, fwca.CertPEM) || caFile.Header.Mode != 0o644 {
				t.Errorf("firewall-ca.crt %q mode %o (found %v)", caFile.Body, caFile.Header.Mode, ok)
			}
			bundle, ok := d.entry("etc/clawker/ca-bundle.crt")
			if !ok || bundle.Header.Mode != 0o644 {
				t.Fatalf("ca-bundle.crt mode %o (found %v)", bundle.Header.Mode, ok)
			}
			got := pemCerts(t, bundle.Body)
			if len(got) != c.roots+1 || !got[len(got)-1].Equal(fwca.Cert) {
				t.Fatalf("bundle holds %d certificates, want %d image roots + the firewall CA last", len(got), c.roots)
			}
			// The bundle does what it is for: a leaf the proxy mints
			// verifies, and so does a site the image's roots vouch for.
			minted, err := certs.MintInspectionLeaf(fwca, "api.example.com", time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if err := verifies(minted.Leaf, bundle.Body, "api.example.com"); err != nil {
				t.Errorf("an inspection leaf does not verify with the bundle: %v", err)
			}
			if err := verifies(imageLeaf, bundle.Body, "example.org"); (err == nil) != (c.roots > 0) {
				t.Errorf("a site under the image's roots: verify err %v, image roots in bundle %d", err, c.roots)
			}

			// Never the key: no copied byte holds it.
			keyBlk, _ := pem.Decode(fwca.KeyPEM)
			for _, cp := range d.copies {
				for _, e := range cp {
					if bytes.Contains(e.Body, fwca.KeyPEM) || bytes.Contains(e.Body, keyBlk.Bytes) {
						t.Errorf("%s carries the firewall CA's key", e.Header.Name)
					}
				}
			}
			// Copied in before the start.
			start := slices.Index(d.calls, "ContainerStart")
			copies := 0
			for i, call := range d.calls {
				if call == "CopyToContainer" {
					copies++
					if i > start {
						t.Errorf("a copy after the start: %v", d.calls)
					}
				}
			}
			if copies != 2 || !ct.Started {
				t.Errorf("calls %v", d.calls)
			}
		})
	}
}

// Without Spec.FirewallCA nothing of it is there (TestCreateContainerShape
// checks the whole env and labels).
func TestCreateWithoutFirewallCA(t *testing.T) {
	d := &caFake{fakeDocker: newFake()}
	d.images["agent:1"] = fakeImage{Entrypoint: []string{"/agent"}, Files: map[string]string{"/etc/ssl/certs/ca-certificates.crt": "x"}}
	res, err := Create(context.Background(), d, testSpec(t, "agent:1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := d.entry("etc/clawker/ca-bundle.crt"); ok || len(d.copies) != 1 {
		t.Errorf("%d copies, bundle copied without a firewall CA", len(d.copies))
	}
	cfg := d.containers[res.ID].Opts.Config
	if _, ok := cfg.Labels[dockerx.LabelFirewallCA]; ok || slices.ContainsFunc(cfg.Env, func(e string) bool { return strings.HasPrefix(e, "SSL_CERT_FILE=") }) {
		t.Errorf("labels %v env %q", cfg.Labels, cfg.Env)
	}
}

// A failed copy of the CA leaves no container behind.
func TestCreateFirewallCACopyFails(t *testing.T) {
	d := newFake()
	d.images["agent:1"] = fakeImage{Entrypoint: []string{"/agent"}}
	d.copyErr = errors.New("disk full")
	s := testSpec(t, "agent:1")
	s.FirewallCA = testFirewallCA(t).Cert
	_, err := Create(context.Background(), d, s)
	if err == nil || !strings.Contains(err.Error(), "firewall CA") {
		t.Fatalf("err %v, want one naming the firewall CA", err)
	}
	if len(d.containers) != 0 || len(d.removed) != 1 || slices.Contains(d.calls, "ContainerStart") {
		t.Errorf("containers %d removed %v calls %v", len(d.containers), d.removed, d.calls)
	}
}
