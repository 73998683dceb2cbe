package agentrun

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// The firewall CA in an agent container (Spec.FirewallCA). The egress
// proxy presents leaves of that CA for the names it inspects, so the
// agent's tools must trust it beside the image's own roots. The trust is
// set in the container's environment, not by rewriting the image's
// system store, so it holds for clawkerd's command and for every
// `docker exec` shell alike, and the image's files stay the image's:
//
//	/etc/clawker/               0755 root
//	/etc/clawker/ca-bundle.crt  0644 the image's roots (its own bundle,
//	                                 read from the created container) + the CA
//	/etc/clawker/firewall-ca.crt 0644 the CA alone (its certificate; never its key)
//
// SSL_CERT_FILE (OpenSSL, Go, Python ssl), REQUESTS_CA_BUNDLE (requests),
// CURL_CA_BUNDLE (curl) and GIT_SSL_CAINFO (git) name the bundle: each of
// them replaces the default store, so the image's roots must be in it.
// NODE_EXTRA_CA_CERTS adds to Node's built-in roots, so it names the CA
// alone. The container's dockerx.LabelFirewallCA says which CA it trusts
// (its fingerprint), so `clawker firewall rotate-ca` can list the agents
// still trusting an old one.
const (
	FirewallCADir        = "/etc/clawker"
	FirewallCABundlePath = FirewallCADir + "/ca-bundle.crt"
	FirewallCACertPath   = FirewallCADir + "/firewall-ca.crt"
)

// The environment variables Create sets with Spec.FirewallCA.
var firewallCABundleEnv = []string{"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"}

const firewallCAOnlyEnv = "NODE_EXTRA_CA_CERTS"

// imageRootBundles are where images keep their system roots, tried in
// order (Debian, Ubuntu, Alpine, Arch; Fedora, RHEL; openSUSE; Alpine's
// other name). The first regular file found (through symlinks inside the
// container) is the image's bundle.
var imageRootBundles = []string{
	"/etc/ssl/certs/ca-certificates.crt",
	"/etc/pki/tls/certs/ca-bundle.crt",
	"/etc/ssl/ca-bundle.pem",
	"/etc/ssl/cert.pem",
}

// maxRootBundle bounds what is read of an image's bundle (a full Mozilla
// set is about 220 KB).
const maxRootBundle = 8 << 20

// maxSymlinkHops bounds the links followed to an image's bundle (Fedora's
// is two deep).
const maxSymlinkHops = 8

// firewallCAEnv is the environment for Spec.FirewallCA (nil without it).
func firewallCAEnv(s Spec) []string {
	if s.FirewallCA == nil {
		return nil
	}
	env := make([]string, 0, len(firewallCABundleEnv)+1)
	for _, k := range firewallCABundleEnv {
		env = append(env, k+"="+FirewallCABundlePath)
	}
	return append(env, firewallCAOnlyEnv+"="+FirewallCACertPath)
}

// firewallCALabel adds dockerx.LabelFirewallCA for Spec.FirewallCA.
func firewallCALabel(s Spec, l map[string]string) {
	if s.FirewallCA != nil {
		l[dockerx.LabelFirewallCA] = certs.CertFingerprint(s.FirewallCA)
	}
}

// injectFirewallCA copies the bundle and the CA into the created container
// id (nothing without ca). It runs before the start, so the files are
// there before the first process is.
func injectFirewallCA(ctx context.Context, d Docker, id string, ca *x509.Certificate) error {
	if ca == nil {
		return nil
	}
	roots, err := readImageRoots(ctx, d, id)
	if err != nil {
		return fmt.Errorf("reading the image's root certificates: %w", err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})
	bundle := firewallCABundle(roots, caPEM)
	var buf bytes.Buffer
	if err := writeFirewallCATar(&buf, time.Now(), bundle, caPEM); err != nil {
		return err
	}
	return dockerx.Do(ctx, callTimeout, func(ctx context.Context) error {
		_, err := d.CopyToContainer(ctx, id, client.CopyToContainerOptions{DestinationPath: "/", Content: bytes.NewReader(buf.Bytes())})
		if err != nil {
			return fmt.Errorf("copying the firewall CA into the container: %w", err)
		}
		return nil
	})
}

// firewallCABundle is the image's roots followed by the CA, each block on
// its own lines whatever the image's file ends with.
func firewallCABundle(roots, caPEM []byte) []byte {
	out := make([]byte, 0, len(roots)+len(caPEM)+64)
	if len(bytes.TrimSpace(roots)) > 0 {
		out = append(out, roots...)
		if !bytes.HasSuffix(out, []byte("\n")) {
			out = append(out, '\n')
		}
	}
	out = append(out, "# clawker firewall CA\n"...)
	return append(out, caPEM...)
}

// writeFirewallCATar is the archive extracted at the container's /.
// There is no entry for /etc itself: an entry would reset the mode and
// owner of the image's /etc (the daemon makes a missing one).
func writeFirewallCATar(w io.Writer, now time.Time, bundle, caPEM []byte) error {
	tw := tar.NewWriter(w)
	rel := func(p string) string { return strings.TrimPrefix(p, "/") }
	entries := []struct {
		name string
		mode int64
		body []byte
		typ  byte
	}{
		{rel(FirewallCADir) + "/", 0o755, nil, tar.TypeDir},
		{rel(FirewallCABundlePath), 0o644, bundle, tar.TypeReg},
		{rel(FirewallCACertPath), 0o644, caPEM, tar.TypeReg},
	}
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, Size: int64(len(e.body)), Typeflag: e.typ, ModTime: now, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := tw.Write(e.body); err != nil {
			return err
		}
	}
	return tw.Close()
}

// readImageRoots is the image's own root bundle, read from the created
// container; nil when it has none (FROM scratch, distroless/static): the
// bundle is then the CA alone, which is all such an image could verify
// through the firewall's inspection anyway.
func readImageRoots(ctx context.Context, d Docker, id string) ([]byte, error) {
	for _, p := range imageRootBundles {
		b, err := readContainerFileFollow(ctx, d, id, p)
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(b)) > 0 {
			return b, nil
		}
	}
	return nil, nil
}

// readContainerFileFollow reads a regular file of a created container,
// following symlinks (resolved inside the container, never on the host);
// nil, nil when it does not exist or a link leads nowhere.
func readContainerFileFollow(ctx context.Context, d Docker, id, file string) ([]byte, error) {
	for range maxSymlinkHops {
		body, link, err := copyOneFrom(ctx, d, id, file)
		if err != nil || link == "" {
			return body, err
		}
		if !path.IsAbs(link) {
			link = path.Join(path.Dir(file), link)
		}
		file = path.Clean(link)
	}
	return nil, nil // a loop: treat as absent
}

// copyOneFrom reads file's single tar entry: its body when it is a regular
// file, its target when it is a symlink.
func copyOneFrom(ctx context.Context, d Docker, id, file string) (body []byte, link string, err error) {
	type got struct {
		body []byte
		link string
	}
	g, err := dockerx.Call(ctx, callTimeout, func(ctx context.Context) (got, error) {
		res, err := d.CopyFromContainer(ctx, id, client.CopyFromContainerOptions{SourcePath: file})
		if cerrdefs.IsNotFound(err) {
			return got{}, nil
		}
		if err != nil {
			return got{}, err
		}
		defer res.Content.Close()
		tr := tar.NewReader(res.Content)
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return got{}, nil
		}
		if err != nil {
			return got{}, err
		}
		switch h.Typeflag {
		case tar.TypeSymlink:
			return got{link: h.Linkname}, nil
		case tar.TypeReg:
		default:
			return got{}, nil // a directory or a device is no bundle
		}
		if h.Size > maxRootBundle {
			return got{}, fmt.Errorf("%s is larger than %d bytes", file, maxRootBundle)
		}
		b, err := io.ReadAll(io.LimitReader(tr, maxRootBundle))
		if err != nil {
			return got{}, err
		}
		return got{body: b}, nil
	})
	return g.body, g.link, err
}
