package cpboot

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/moby/moby/api/types/container"
)

// oryFiles are a bundle's binaries with the three Ory servers.
func oryFiles() map[string]string {
	return map[string]string{
		CPBinary: "cp-bytes", AgentBinary: "agent-bytes",
		"ory/hydra": "hydra-bytes", "ory/kratos": "kratos-bytes", "ory/oathkeeper": "oathkeeper-bytes",
	}
}

// writeTree is writeBins for paths with directories (ory/hydra).
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func oryBundle(t *testing.T) *Bundle {
	t.Helper()
	b, err := BundleFromDir(writeTree(t, oryFiles()))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func treeHash(t *testing.T, files map[string]string) string {
	t.Helper()
	b, err := BundleFromDir(writeTree(t, files))
	if err != nil {
		t.Fatal(err)
	}
	h, err := b.Hash()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// The Ory servers are part of the bundle and of its hash; a bundle without
// them is still a bundle (the CP runs without Ory) and hashes as before.
func TestBundleWithOry(t *testing.T) {
	b := oryBundle(t)
	if !b.HasOry() {
		t.Fatal("a bundle with ory/{hydra,kratos,oathkeeper} has no Ory")
	}
	want := []string{"clawker-cp", "clawkerd", "ory/hydra", "ory/kratos", "ory/oathkeeper"}
	if got := b.Names(); !slices.Equal(got, want) {
		t.Errorf("names %v, want %v", got, want)
	}
	f, err := b.Open("ory/kratos")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(f)
	f.Close()
	if string(body) != "kratos-bytes" {
		t.Errorf("ory/kratos reads %q", body)
	}

	without := map[string]string{CPBinary: "cp-bytes", AgentBinary: "agent-bytes"}
	plain, err := BundleFromDir(writeTree(t, without))
	if err != nil {
		t.Fatal(err)
	}
	if plain.HasOry() {
		t.Error("a bundle without ory/ has Ory")
	}
	// The hash of a bundle without Ory is what it was before Ory existed
	// (the value computed by the code of then): the existing images and
	// containers stay current.
	if got, want := treeHash(t, without), "c5d1789735f9d4a9"; got != want {
		t.Errorf("hash without Ory %s, want %s", got, want)
	}
	h := treeHash(t, oryFiles())
	if h == treeHash(t, without) {
		t.Error("adding Ory kept the hash: the image of a bundle without it would be reused")
	}
	for _, n := range OryNames {
		changed := oryFiles()
		changed[OryPath(n)] += "!"
		if got := treeHash(t, changed); got == h {
			t.Errorf("a new %s kept the hash %s", n, h)
		}
	}

	// All three or none.
	for _, n := range OryNames {
		partial := oryFiles()
		delete(partial, OryPath(n))
		_, err := BundleFromDir(writeTree(t, partial))
		if err == nil || !strings.Contains(err.Error(), OryPath(n)+" missing") || !strings.Contains(err.Error(), "go tool task build") {
			t.Errorf("without %s: err %v", n, err)
		}
	}
	empty := oryFiles()
	empty["ory/hydra"] = ""
	if _, err := BundleFromDir(writeTree(t, empty)); err == nil || !strings.Contains(err.Error(), "not a binary") {
		t.Errorf("an empty ory/hydra: %v", err)
	}

	// The embedded FS is read like a directory: the same paths, the same hash.
	m := fstest.MapFS{"README.md": {Data: []byte("x")}}
	for name, content := range oryFiles() {
		m[name] = &fstest.MapFile{Data: []byte(content), Mode: 0o444}
	}
	fb, err := newBundle(m)
	if err != nil {
		t.Fatal(err)
	}
	if fh, _ := fb.Hash(); !fb.HasOry() || fh != h {
		t.Errorf("from an fs.FS: Ory %v, hash %s, want %s", fb.HasOry(), fh, h)
	}
}

// The image of an Ory bundle holds /ory/{hydra,kratos,oathkeeper}, 0755,
// from the same single COPY.
func TestBuildContextWithOry(t *testing.T) {
	var buf bytes.Buffer
	if err := buildContext(&buf, oryBundle(t), nil); err != nil {
		t.Fatal(err)
	}
	type entry struct {
		body string
		mode int64
		typ  byte
	}
	got := map[string]entry{}
	var order []string
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		got[h.Name] = entry{string(body), h.Mode, h.Typeflag}
		order = append(order, h.Name)
	}
	wantOrder := []string{"Dockerfile", "rootfs/", "rootfs/clawker-cp", "rootfs/clawkerd", "rootfs/ory/",
		"rootfs/ory/hydra", "rootfs/ory/kratos", "rootfs/ory/oathkeeper"}
	if !slices.Equal(order, wantOrder) {
		t.Errorf("context entries %v, want %v (a directory before its files)", order, wantOrder)
	}
	for _, n := range OryNames {
		e := got["rootfs/ory/"+n]
		if e.body != n+"-bytes" || e.mode != 0o755 || e.typ != tar.TypeReg {
			t.Errorf("rootfs/ory/%s: %+v", n, e)
		}
	}
	if e := got["rootfs/ory/"]; e.typ != tar.TypeDir || e.mode != 0o755 {
		t.Errorf("rootfs/ory/: %+v", e)
	}
	df := got["Dockerfile"].body
	if !strings.Contains(df, "\nCOPY rootfs/ /\n") || strings.Count(df, "COPY") != 1 ||
		!strings.HasSuffix(df, "ENTRYPOINT [\"/clawker-cp\", \"--bind\", \"0.0.0.0\"]\n") {
		t.Errorf("Dockerfile:\n%s", df)
	}
}

// A container of an Ory bundle runs clawker-cp with --ory-dir /ory, has its
// own spec hash, and publishes the same four ports on 127.0.0.1: admin,
// health, Hydra's public port and Oathkeeper's proxy; nothing else of Ory.
func TestCreateOptionsWithOry(t *testing.T) {
	s, p := testSettingsPaths(t)
	o := &Options{Settings: s, Paths: p}
	plain := newSpec(s, p, o.socket()).withBundle(testBundle(t))
	withOry := newSpec(s, p, o.socket()).withBundle(oryBundle(t))
	if plain.OryDir != "" || withOry.OryDir != "/ory" {
		t.Fatalf("OryDir: without Ory %q, with %q", plain.OryDir, withOry.OryDir)
	}
	if plain.hash() != newSpec(s, p, o.socket()).hash() {
		t.Error("a bundle without Ory changed the spec hash: every existing container would be replaced")
	}
	if plain.hash() == withOry.hash() {
		t.Error("--ory-dir did not change the spec hash: a container started without it would be adopted")
	}
	ip := netip.MustParseAddr("172.18.0.202")
	co, err := createOptions(o, withOry, ImageRef("0123456789abcdef"), "0123456789abcdef", ip, false)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(co.Config.Cmd, []string{"--ory-dir", "/ory", "--host-proc", "/host/proc"}) || len(co.Config.Entrypoint) != 0 {
		t.Errorf("cmd %q entrypoint %q: want the image's entrypoint plus --ory-dir /ory --host-proc /host/proc", co.Config.Cmd, co.Config.Entrypoint)
	}
	if co.Config.Labels[LabelSpecHash] != withOry.hash() {
		t.Errorf("spec hash label %s, want %s", co.Config.Labels[LabelSpecHash], withOry.hash())
	}
	cp := s.ControlPlane
	want := map[string]bool{}
	for _, port := range []int{cp.AdminPort, cp.HealthPort, cp.HydraPublicPort, cp.OathkeeperPort} {
		want[strconv.Itoa(port)] = true
	}
	for port, bs := range co.HostConfig.PortBindings {
		if !want[port.Port()] || len(bs) != 1 || bs[0].HostIP.String() != "127.0.0.1" || bs[0].HostPort != port.Port() {
			t.Errorf("port %s bound as %+v", port, bs)
		}
		if _, ok := co.Config.ExposedPorts[port]; !ok {
			t.Errorf("port %s published but not exposed", port)
		}
		delete(want, port.Port())
	}
	if len(want) != 0 || len(co.Config.ExposedPorts) != 4 {
		t.Errorf("not published: %v; exposed %v", want, co.Config.ExposedPorts)
	}
	for _, internal := range []int{cp.HydraAdminPort, cp.KratosPublicPort, cp.KratosAdminPort, cp.OathkeeperAPIPort, cp.AgentPort} {
		for port := range co.Config.ExposedPorts {
			if port.Port() == strconv.Itoa(internal) {
				t.Errorf("internal port %d is exposed", internal)
			}
		}
	}
	noOry, _ := createOptions(o, plain, "img", "h", ip, false)
	if !slices.Equal(noOry.Config.Cmd, []string{"--host-proc", "/host/proc"}) {
		t.Errorf("cmd without Ory %q: the image's entrypoint plus --host-proc alone is meant", noOry.Config.Cmd)
	}
}

// EnsureRunning derives the spec from the bundle: a running container of
// an Ory bundle made with --ory-dir is current; one made without it is not.
func TestEnsureRunningOrySpec(t *testing.T) {
	s, p := testSettingsPaths(t)
	s.ControlPlane.HealthPort = greenPort(t)
	b := oryBundle(t)
	hash, _ := b.Hash()
	running := func(specHash string) *inspectOnly {
		return &inspectOnly{c: &container.InspectResponse{
			ID:    "cafe",
			State: &container.State{Status: container.StateRunning, Running: true},
			Config: &container.Config{Labels: map[string]string{
				LabelManaged: "true", LabelPurpose: PurposeControlPlane, LabelBinHash: hash, LabelSpecHash: specHash,
			}},
		}}
	}
	d := running(newSpec(s, p, dockerSocket).withBundle(b).hash())
	res, err := EnsureRunning(context.Background(), Options{Settings: s, Paths: p, Docker: d, Binaries: b})
	if err != nil || res.Outcome != OutcomeAlreadyRunning || !res.Ory {
		t.Errorf("with --ory-dir: %+v, %v", res, err)
	}
	// Inspect tells a container running the Ory servers by its command.
	d.c.Config.Cmd = []string{"--ory-dir", "/ory"}
	if st, err := Inspect(context.Background(), d); err != nil || !st.Ory {
		t.Errorf("inspect with --ory-dir: %+v, %v", st, err)
	}
	d.c.Config.Cmd = nil
	if st, err := Inspect(context.Background(), d); err != nil || st.Ory {
		t.Errorf("inspect without --ory-dir: %+v, %v", st, err)
	}
	r := &run{o: &Options{Settings: s, Paths: p}, b: b, sp: newSpec(s, p, dockerSocket).withBundle(b)}
	r.setHash(hash)
	st := State{Exists: true, Ours: true, Running: true, BinHash: hash, SpecHash: newSpec(s, p, dockerSocket).hash()}
	if r.current(st) {
		t.Error("a container of the Ory bundle's binaries made without --ory-dir counts as current")
	}
}
