package cpboot

import (
	"archive/tar"
	"context"
	"io"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/cptest"
)

func TestMain(m *testing.M) { cptest.Main(m) }

// testRepo is the image repository of these tests: not the product's, so
// no pruning on either side touches the other's images.
const testRepo = "clawker-cpboot-test"

// newerAPI claims an API version that knows CAP_BPF, so createWithCaps
// asks for it and meets the real daemon's answer.
type newerAPI struct{ Docker }

func (newerAPI) ClientVersion() string { return "1.44" }

// The parts of EnsureRunning that talk to Docker, against the real daemon,
// under names of their own (the fixed clawker-net and clawker-controlplane
// belong to cmd/clawker's end-to-end tests, which may run at the same
// time): the subnet probe, the image build from a bundle, the container
// spec with its static address and the CAP_BPF fallback, the log tail, the
// stop and the pruning of old image tags.
func TestAgainstDocker(t *testing.T) {
	d := cptest.RequireDocker(t)
	run := cptest.NewRunID()
	labels := cptest.TestLabels(run)
	t.Cleanup(func() { cptest.RemoveLabelled(t, d, labels) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// The network: a subnet Docker chose, spelled out, with the fixed
	// addresses outside the dynamic range.
	netName := "clawker-cpboot-test-" + run
	ni, err := ensureNetwork(ctx, d, netName, labels)
	if err != nil {
		t.Fatal(err)
	}
	res, err := d.NetworkInspect(ctx, netName, client.NetworkInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := res.Network.IPAM.Config
	if len(cfg) != 1 || cfg[0].Subnet != ni.Subnet || cfg[0].Gateway != ni.Gateway || ni.CPIP.As4()[3] != 202 {
		t.Fatalf("network %s: IPAM %+v, info %+v", netName, cfg, ni)
	}
	if cfg[0].IPRange.IsValid() && cfg[0].IPRange.Contains(ni.CPIP) {
		t.Errorf("dynamic range %s holds the CP's %s", cfg[0].IPRange, ni.CPIP)
	}
	if res.Network.Labels["dev.clawker.test"] != run {
		t.Errorf("network labels %v", res.Network.Labels)
	}
	again, err := ensureNetwork(ctx, d, netName, labels)
	if err != nil || again != ni {
		t.Errorf("second ensureNetwork: %+v, %v; first %+v", again, err, ni)
	}
	probes, _ := d.NetworkList(ctx, client.NetworkListOptions{Filters: make(client.Filters).Add("name", netName+"-probe")})
	if len(probes.Items) != 0 {
		t.Errorf("probe networks left behind: %v", probes.Items)
	}

	// The image: a "clawker-cp" that sleeps until SIGTERM.
	binDir := t.TempDir()
	sleeper := cptest.BuildStatic(t, "sleeper", cptest.SleeperSource)
	copyFile(t, sleeper, filepath.Join(binDir, CPBinary))
	b, err := BundleFromDir(binDir)
	if err != nil {
		t.Fatal(err)
	}
	hash, _ := b.Hash()
	ref := testRepo + ":bin-" + hash
	imageLabels := maps.Clone(labels)
	imageLabels["dev.clawker.test-quoting"] = `a "quoted" \ $HOME value`
	if err := buildImage(ctx, d, b, ref, imageLabels); err != nil {
		t.Fatal(err)
	}
	img, err := d.ImageInspect(ctx, ref)
	if err != nil {
		t.Fatalf("image %s after the build: %v", ref, err)
	}
	for k, v := range imageLabels {
		if img.Config.Labels[k] != v {
			t.Errorf("image label %s = %q, want %q (all: %v)", k, img.Config.Labels[k], v, img.Config.Labels)
		}
	}
	if ep := strings.Join(img.Config.Entrypoint, " "); ep != "/clawker-cp --bind 0.0.0.0" {
		t.Errorf("entrypoint %q", ep)
	}

	// The container, as EnsureRunning makes it, renamed onto the test
	// network; the daemon is claimed to know CAP_BPF, so a Docker 20.10
	// refuses it and the fallback runs.
	s, p := testSettingsPaths(t)
	ports := cptest.FreePorts(t, 4)
	s.ControlPlane.AdminPort, s.ControlPlane.HealthPort, s.ControlPlane.HydraPublicPort, s.ControlPlane.OathkeeperPort = ports[0], ports[1], ports[2], ports[3]
	o := &Options{Settings: s, Paths: p, Labels: labels}
	sp := newSpec(s, p, o.socket())
	for _, dir := range []string{p.ConfigDir, p.CPDir, p.LogDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ensureBPFFS(); err != nil {
		t.Fatal(err)
	}
	name := "clawker-cpboot-test-" + run
	// create() makes the mounted dirs; this test calls createOptions itself.
	for _, dir := range []string{sp.ConfigDir, sp.CPDir, sp.LogDir, sp.FirewallDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	id, capBPF, err := createWithCaps(ctx, newerAPI{d}, func(capBPF bool) (client.ContainerCreateOptions, error) {
		co, err := createOptions(o, sp, ref, hash, ni.CPIP, capBPF)
		if err != nil {
			return co, err
		}
		co.Name = name
		co.HostConfig.NetworkMode = container.NetworkMode(netName)
		co.NetworkingConfig.EndpointsConfig = map[string]*network.EndpointSettings{netName: co.NetworkingConfig.EndpointsConfig[NetworkName]}
		return co, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	daemonAPI := d.ClientVersion()
	if !daemonKnowsCapBPF(daemonAPI) && capBPF {
		t.Errorf("API %s daemon: created with CAP_BPF", daemonAPI)
	}
	if _, err := d.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		t.Fatal(err)
	}
	st, err := inspectContainer(ctx, d, id)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Running || st.BinHash != hash || !st.Ours {
		t.Errorf("state %+v", st)
	}
	ins, err := d.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ep := ins.Container.NetworkSettings.Networks[netName]; ep == nil || ep.IPAddress != ni.CPIP {
		t.Errorf("address on %s: %+v, want %s", netName, ep, ni.CPIP)
	}
	caps := strings.Join(ins.Container.HostConfig.CapAdd, ",")
	if !strings.Contains(caps, "SYS_ADMIN") || capBPF != strings.Contains(caps, "CAP_BPF") {
		t.Errorf("caps %s (capBPF %v)", caps, capBPF)
	}
	t.Logf("daemon API %s: CAP_BPF granted: %v; caps %s", daemonAPI, capBPF, caps)

	// The log tail and the stop (SIGTERM, exit 0).
	cptest.WaitFor(t, 10*time.Second, "the sleeper's first line", func() (bool, string) {
		tail, err := logTail(ctx, d, id, LogTailLines)
		return err == nil && strings.Contains(tail, "sleeper: started [--bind 0.0.0.0 --host-proc /host/proc]"), tail
	})
	sr, err := stop(ctx, d, id, 10*time.Second)
	if err != nil || !sr.WasRunning || sr.ExitCode != 0 || sr.Status != "exited" {
		t.Errorf("stop: %+v %v", sr, err)
	}
	tail, _ := logTail(ctx, d, id, 1)
	if tail != "sleeper: got terminated" {
		t.Errorf("last log line %q", tail)
	}

	// Pruning: a newer image replaces ref; ref stays while a container
	// uses it, and goes once that container is gone.
	copyFile(t, sleeper, filepath.Join(binDir, AgentBinary))
	b2, err := BundleFromDir(binDir)
	if err != nil {
		t.Fatal(err)
	}
	hash2, _ := b2.Hash()
	ref2 := testRepo + ":bin-" + hash2
	if err := buildImage(ctx, d, b2, ref2, labels); err != nil {
		t.Fatal(err)
	}
	removed, err := pruneImages(ctx, d, testRepo, ref2, labels)
	if err != nil || len(removed) != 0 {
		t.Errorf("prune with a container on %s: removed %v, %v", ref, removed, err)
	}
	if _, err := d.ContainerRemove(ctx, id, client.ContainerRemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	removed, err = pruneImages(ctx, d, testRepo, ref2, labels)
	if err != nil || len(removed) != 1 || removed[0] != ref {
		t.Errorf("prune: removed %v, %v; want [%s]", removed, err, ref)
	}
	if ok, _ := imageExists(ctx, d, ref2); !ok {
		t.Errorf("prune removed the image it was told to keep")
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// The image of a bundle with the Ory servers, against the real daemon and
// its builder, under names of its own (no network, no fixed name, no
// bpffs): /ory/{hydra,kratos,oathkeeper} are files of mode 0755 beside
// /clawker-cp and /clawkerd, and the container's command appends
// --ory-dir /ory to the image's entrypoint.
func TestOryImageAgainstDocker(t *testing.T) {
	d := cptest.RequireDocker(t)
	run := cptest.NewRunID()
	labels := cptest.TestLabels(run)
	t.Cleanup(func() { cptest.RemoveLabelled(t, d, labels) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	files := oryFiles()
	delete(files, CPBinary)
	dir := writeTree(t, files)
	copyFile(t, cptest.BuildStatic(t, "sleeper", cptest.SleeperSource), filepath.Join(dir, CPBinary))
	b, err := BundleFromDir(dir)
	if err != nil || !b.HasOry() {
		t.Fatalf("bundle: Ory %v, %v", b != nil && b.HasOry(), err)
	}
	hash, _ := b.Hash()
	ref := testRepo + ":bin-" + hash
	if err := buildImage(ctx, d, b, ref, labels); err != nil {
		t.Fatal(err)
	}

	s, p := testSettingsPaths(t)
	sp := newSpec(s, p, dockerSocket).withBundle(b)
	co, err := createOptions(&Options{Settings: s, Paths: p, Labels: labels}, sp, ref, hash, netip.MustParseAddr("172.18.0.202"), false)
	if err != nil {
		t.Fatal(err)
	}
	// The product's command and image, nothing of its host wiring.
	cr, err := d.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:       "clawker-cpboot-test-" + run + "-ory",
		Config:     &container.Config{Image: ref, Cmd: co.Config.Cmd, Labels: co.Config.Labels},
		HostConfig: &container.HostConfig{NetworkMode: "none"},
	})
	if err != nil {
		t.Fatal(err)
	}
	exp, err := d.ContainerExport(ctx, cr.ID, client.ContainerExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"ory/hydra": "hydra-bytes", "ory/kratos": "kratos-bytes", "ory/oathkeeper": "oathkeeper-bytes", "clawkerd": "agent-bytes"}
	seen := map[string]bool{}
	tr := tar.NewReader(exp)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading the export: %v", err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
		switch {
		case name == "ory":
			if h.Typeflag != tar.TypeDir || h.Mode&0o777 != 0o755 {
				t.Errorf("/ory: type %c mode %o", h.Typeflag, h.Mode)
			}
		case name == CPBinary || want[name] != "":
			body, _ := io.ReadAll(tr)
			if h.Typeflag != tar.TypeReg || h.Mode&0o777 != 0o755 || (want[name] != "" && string(body) != want[name]) {
				t.Errorf("/%s: type %c mode %o, %d bytes", name, h.Typeflag, h.Mode, len(body))
			}
		case name == "rootfs" || strings.HasPrefix(name, "rootfs/") || name == "hydra" || name == "Dockerfile":
			t.Errorf("the image holds /%s: the context's layout leaked", name)
		}
		seen[name] = true
	}
	exp.Close()
	for _, n := range []string{CPBinary, "clawkerd", "ory", "ory/hydra", "ory/kratos", "ory/oathkeeper"} {
		if !seen[n] {
			t.Errorf("the image has no /%s (has %v)", n, seen)
		}
	}

	if _, err := d.ContainerStart(ctx, cr.ID, client.ContainerStartOptions{}); err != nil {
		t.Fatal(err)
	}
	cptest.WaitFor(t, 10*time.Second, "the sleeper's first line", func() (bool, string) {
		tail, err := logTail(ctx, d, cr.ID, LogTailLines)
		return err == nil && strings.Contains(tail, "sleeper: started [--bind 0.0.0.0 --ory-dir /ory --host-proc /host/proc]"), tail
	})
	if sr, err := stop(ctx, d, cr.ID, 10*time.Second); err != nil || sr.ExitCode != 0 {
		t.Errorf("stop: %+v %v", sr, err)
	}
}
