package cpboot

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// ImageRepo is the repository of the control plane image; the tag is
// "bin-" + Bundle.Hash().
const ImageRepo = "clawker-controlplane"

// ImageRef is the control plane image for a bundle hash.
func ImageRef(hash string) string { return ImageRepo + ":bin-" + hash }

// contextRoot is the directory of the build context holding the image's
// file system: the binaries at their bundle paths (clawker-cp, clawkerd,
// ory/hydra, ...).
const contextRoot = "rootfs"

// dockerfile is the control plane image: the binaries, the labels and the
// entrypoint. One COPY (of a directory, whose contents land at /, the Ory
// servers under /ory) and one LABEL instruction: the legacy builder of
// Docker 20.10 commits a layer per instruction (and per label passed as a
// build option), about a second each on a slow storage driver.
func dockerfile(b *Bundle, labels map[string]string) (string, error) {
	var s strings.Builder
	s.WriteString("FROM scratch\n")
	s.WriteString("COPY " + contextRoot + "/ /\n")
	if len(labels) > 0 {
		keys := make([]string, 0, len(labels))
		for k := range labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		s.WriteString("LABEL")
		for _, k := range keys {
			v := labels[k]
			if k == "" || strings.ContainsFunc(k, func(r rune) bool { return !isLabelKeyRune(r) }) {
				return "", fmt.Errorf("label key %q: use letters, digits and . _ - / only", k)
			}
			if strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				return "", fmt.Errorf("label %s: the value %q holds control characters", k, v)
			}
			// Quoted; a $ would be expanded as a build variable.
			fmt.Fprintf(&s, " %s=\"%s\"", k, strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`).Replace(v))
		}
		s.WriteString("\n")
	}
	fmt.Fprintf(&s, "ENTRYPOINT [\"/%s\", \"--bind\", \"0.0.0.0\"]\n", CPBinary)
	return s.String(), nil
}

func isLabelKeyRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-/", r)
}

// buildContext writes the tar the daemon builds from: the Dockerfile and
// the binaries under rootfs/, streamed. Every binary is mode 0755, every
// directory 0755, owned by root, dated 1970: the same bundle makes the same
// context.
func buildContext(w io.Writer, b *Bundle, labels map[string]string) error {
	text, err := dockerfile(b, labels)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	df := []byte(text)
	epoch := time.Unix(0, 0)
	if err := tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(df)), ModTime: epoch, Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := tw.Write(df); err != nil {
		return err
	}
	dirs := map[string]bool{}
	var mkdir func(dir string) error // dir and its parents, each once
	mkdir = func(dir string) error {
		if dir == "." || dirs[dir] {
			return nil
		}
		dirs[dir] = true
		if err := mkdir(path.Dir(dir)); err != nil {
			return err
		}
		return tw.WriteHeader(&tar.Header{Name: dir + "/", Mode: 0o755, ModTime: epoch, Typeflag: tar.TypeDir})
	}
	for _, name := range b.names {
		if err := mkdir(path.Dir(contextRoot + "/" + name)); err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: contextRoot + "/" + name, Mode: 0o755, Size: b.sizes[name], ModTime: epoch, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		f, err := b.Open(name)
		if err != nil {
			return err
		}
		n, err := io.Copy(tw, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("adding %s to the build context: %w", name, err)
		}
		if n != b.sizes[name] {
			return fmt.Errorf("adding %s to the build context: read %d bytes, expected %d (did the file change?)", name, n, b.sizes[name])
		}
	}
	return tw.Close()
}

// imageExists reports whether ref is present locally.
func imageExists(ctx context.Context, d Docker, ref string) (bool, error) {
	_, err := bounded(ctx, callTimeout, func(ctx context.Context) (client.ImageInspectResult, error) {
		return d.ImageInspect(ctx, ref)
	})
	switch {
	case err == nil:
		return true, nil
	case isNotFound(err):
		return false, nil
	default:
		return false, fmt.Errorf("inspecting image %s: %w", ref, err)
	}
}

// buildImage builds ref from b through the Docker API, from an in-memory
// tar context. Nothing is pulled: the image is FROM scratch.
func buildImage(ctx context.Context, d Docker, b *Bundle, ref string, labels map[string]string) error {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(buildContext(pw, b, labels)) }()
	defer pr.Close()

	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	out, err := dockerx.BuildImage(ctx, d, pr, ref)
	if err != nil {
		return err
	}
	ok, err := imageExists(ctx, d, ref)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("building image %s: the daemon reported no error but the tag does not exist:\n%s", ref, dockerx.LastLines(out, 10))
	}
	return nil
}

// pruneImages removes the repo:bin-* tags other than keep that carry every
// label in match. A tag whose image a container (running or not) still uses
// is left alone: the removal is not forced, and Docker refuses it.
func pruneImages(ctx context.Context, d Docker, repo, keep string, match map[string]string) (removed []string, err error) {
	f := make(client.Filters).Add("reference", repo+":bin-*")
	for k, v := range match {
		f.Add("label", k+"="+v)
	}
	res, err := bounded(ctx, callTimeout, func(ctx context.Context) (client.ImageListResult, error) {
		return d.ImageList(ctx, client.ImageListOptions{Filters: f})
	})
	if err != nil {
		return nil, fmt.Errorf("listing old control plane images: %w", err)
	}
	var tags []string
	for _, img := range res.Items {
		for _, t := range img.RepoTags {
			if strings.HasPrefix(t, repo+":bin-") && t != keep {
				tags = append(tags, t)
			}
		}
	}
	sort.Strings(tags)
	for _, t := range tags {
		_, err := bounded(ctx, callTimeout, func(ctx context.Context) (client.ImageRemoveResult, error) {
			return d.ImageRemove(ctx, t, client.ImageRemoveOptions{PruneChildren: true})
		})
		if err == nil {
			removed = append(removed, t)
		}
	}
	return removed, nil
}
