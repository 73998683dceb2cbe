package cptest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	docker "github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/testkit"
)

// DockerSocket is the daemon's socket the Docker tests need.
const DockerSocket = "/var/run/docker.sock"

// LabelTest is the label a test puts on everything it creates, with a run
// id as value (NewRunID), so that it removes exactly that.
const LabelTest = dockerx.LabelTest

// DockerCallTimeout bounds each Docker call of the helpers.
var DockerCallTimeout = 2 * time.Minute

// RequireDocker returns a client of the real daemon, closed when the test
// ends. The test is skipped, with a one-line reason, when the socket is
// missing or the test does not run as root; under CI=true such a skip is a
// failure instead (CI must run these tests).
func RequireDocker(t testing.TB) *docker.Client {
	t.Helper()
	if _, err := os.Stat(DockerSocket); err != nil {
		testkit.SkipOrFail(t, "needs the Docker daemon: "+DockerSocket+" is missing")
	}
	if os.Geteuid() != 0 {
		testkit.SkipOrFail(t, "needs root (mounts bpffs, creates containers with CAP_SYS_ADMIN)")
	}
	d, err := dockerx.New("unix://" + DockerSocket)
	if err != nil {
		t.Fatalf("cptest: docker client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), DockerCallTimeout)
	defer cancel()
	if _, err := d.Ping(ctx, docker.PingOptions{}); err != nil {
		d.Close()
		testkit.SkipOrFail(t, "the Docker daemon does not answer: "+err.Error())
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// NewRunID is a fresh random id for LabelTest.
func NewRunID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// TestLabels are the labels of what a test run creates: managed by clawker
// and tagged with the run id.
func TestLabels(runID string) map[string]string {
	return map[string]string{dockerx.LabelManaged: "true", LabelTest: runID}
}

// labelFilters turns labels into a filter every one of them must match;
// it refuses anything short of managed=true plus a test label, so that no
// helper ever sweeps by a broad pattern.
func labelFilters(labels map[string]string) (docker.Filters, error) {
	if labels[dockerx.LabelManaged] != "true" || labels[LabelTest] == "" {
		return nil, fmt.Errorf("refusing to select by %v: need dev.clawker.managed=true and %s=<run id>", labels, LabelTest)
	}
	f := make(docker.Filters)
	for k, v := range labels {
		f.Add("label", k+"="+v)
	}
	return f, nil
}

// RemoveLabelled removes what carries every one of labels (which must hold
// dev.clawker.managed=true and a LabelTest run id): containers (forced),
// then networks, then images. Failures are reported, not fatal, so that a
// cleanup does as much as it can.
func RemoveLabelled(t testing.TB, d *docker.Client, labels map[string]string) {
	t.Helper()
	f, err := labelFilters(labels)
	if err != nil {
		t.Errorf("cptest: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), DockerCallTimeout)
	defer cancel()
	cs, err := d.ContainerList(ctx, docker.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		t.Errorf("cptest: listing containers by %v: %v", labels, err)
	}
	for _, c := range cs.Items {
		if _, err := d.ContainerRemove(ctx, c.ID, docker.ContainerRemoveOptions{Force: true}); err != nil {
			t.Errorf("cptest: removing container %s %v: %v", c.ID[:12], c.Names, err)
		}
	}
	ns, err := d.NetworkList(ctx, docker.NetworkListOptions{Filters: f})
	if err != nil {
		t.Errorf("cptest: listing networks by %v: %v", labels, err)
	}
	for _, n := range ns.Items {
		if _, err := d.NetworkRemove(ctx, n.ID, docker.NetworkRemoveOptions{}); err != nil {
			t.Errorf("cptest: removing network %s: %v", n.Name, err)
		}
	}
	is, err := d.ImageList(ctx, docker.ImageListOptions{Filters: f})
	if err != nil {
		t.Errorf("cptest: listing images by %v: %v", labels, err)
	}
	for _, img := range is.Items {
		if _, err := d.ImageRemove(ctx, img.ID, docker.ImageRemoveOptions{Force: true, PruneChildren: true}); err != nil {
			t.Errorf("cptest: removing image %s %v: %v", img.ID, img.RepoTags, err)
		}
	}
}

// BuildStatic compiles source, a single-file Go program that imports only
// the standard library, into a static binary named name; built once per
// (name, source) in a test process.
func BuildStatic(t testing.TB, name, source string) string {
	t.Helper()
	e := buildEntryFor("static:" + name + ":" + source)
	e.once.Do(func() {
		dir, err := buildDir()
		if err != nil {
			e.err = err
			return
		}
		sub, err := os.MkdirTemp(dir, "static-")
		if err != nil {
			e.err = err
			return
		}
		src := filepath.Join(sub, "main.go")
		if e.err = os.WriteFile(src, []byte(source), 0o600); e.err != nil {
			return
		}
		goBin, err := goTool()
		if err != nil {
			e.err = err
			return
		}
		out := filepath.Join(sub, name)
		ctx, cancel := context.WithTimeout(context.Background(), BuildTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, src)
		cmd.Dir = sub
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false")
		if b, err := cmd.CombinedOutput(); err != nil {
			e.err = fmt.Errorf("go build %s: %w\n%s", name, err, b)
			return
		}
		e.path = out
	})
	if e.err != nil {
		t.Fatalf("cptest: %v", e.err)
	}
	return e.path
}

// SleeperSource is a program that logs its start and arguments to stderr,
// then waits for SIGTERM or SIGINT and exits 0: PID 1 of a test container
// that stops at once when asked.
const SleeperSource = `package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	fmt.Fprintln(os.Stderr, "sleeper: started", os.Args[1:])
	s := <-c
	fmt.Fprintln(os.Stderr, "sleeper: got", s)
}
`

// BuildScratchImage builds ref FROM scratch with files (path in the image
// -> host path of a static binary or other file, placed at the image's
// root) and the given entrypoint, labelled with labels.
func BuildScratchImage(t testing.TB, d *docker.Client, ref string, files map[string]string, entrypoint []string, labels map[string]string) {
	t.Helper()
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	ep, _ := json.Marshal(entrypoint)
	var df strings.Builder
	df.WriteString("FROM scratch\n")
	for _, n := range names {
		fmt.Fprintf(&df, "COPY %s /%s\n", n, n)
	}
	fmt.Fprintf(&df, "ENTRYPOINT %s\n", ep)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, body []byte, mode int64) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	add("Dockerfile", []byte(df.String()), 0o644)
	for _, n := range names {
		body, err := os.ReadFile(files[n])
		if err != nil {
			t.Fatal(err)
		}
		add(n, body, 0o755)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), DockerCallTimeout)
	defer cancel()
	res, err := d.ImageBuild(ctx, &buf, docker.ImageBuildOptions{Tags: []string{ref}, Labels: labels, Remove: true, ForceRemove: true})
	if err != nil {
		t.Fatalf("cptest: building image %s: %v", ref, err)
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	if bytes.Contains(out, []byte(`"errorDetail"`)) {
		t.Fatalf("cptest: building image %s: %s", ref, out)
	}
	if _, err := d.ImageInspect(ctx, ref); err != nil {
		t.Fatalf("cptest: image %s missing after its build: %v\n%s", ref, err, out)
	}
}
