package cpboot

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/settings"
)

func TestIsBPFFSMounted(t *testing.T) {
	const base = "22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n" +
		"25 22 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n"
	cases := []struct {
		name, mountinfo string
		want            bool
	}{
		{"absent", base, false},
		{"mounted", base + "40 22 0:35 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:20 - bpf bpf rw,mode=700\n", true},
		{"no optional fields", base + "40 22 0:35 / /sys/fs/bpf rw,relatime - bpf none rw\n", true},
		{"other fs there", base + "40 22 0:35 / /sys/fs/bpf rw,relatime - tmpfs tmpfs rw\n", false},
		{"bpf covered by tmpfs", base + "40 22 0:35 / /sys/fs/bpf rw - bpf bpf rw\n41 40 0:36 / /sys/fs/bpf rw - tmpfs tmpfs rw\n", false},
		{"tmpfs covered by bpf", base + "40 22 0:36 / /sys/fs/bpf rw - tmpfs tmpfs rw\n41 40 0:35 / /sys/fs/bpf rw - bpf bpf rw\n", true},
		{"bpf elsewhere", base + "40 22 0:35 / /sys/fs/bpf/x rw - bpf bpf rw\n", false},
		{"escaped path", "40 22 0:35 / /sys/fs/b\\040pf rw - bpf bpf rw\n", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := isBPFFSMounted(strings.NewReader(c.mountinfo), BPFFSPath)
			if err != nil || got != c.want {
				t.Errorf("got %v, %v; want %v", got, err, c.want)
			}
		})
	}
	got, _ := isBPFFSMounted(strings.NewReader("40 22 0:35 / /mnt/with\\040space rw - bpf bpf rw\n"), "/mnt/with space")
	if !got {
		t.Error("an escaped mount point did not match its path")
	}
}

func TestCPAddress(t *testing.T) {
	cases := []struct {
		subnet, gw, want string // want "" means an error
	}{
		{"172.18.0.0/16", "172.18.0.1", "172.18.0.202"},
		{"192.168.215.0/24", "192.168.215.1", "192.168.215.202"},
		{"10.5.0.0/20", "10.5.0.1", "10.5.0.202"},
		{"192.168.1.128/25", "192.168.1.129", "192.168.1.202"},
		{"192.168.1.0/25", "192.168.1.1", ""},     // .202 is outside
		{"192.168.1.192/29", "192.168.1.193", ""}, // too small
		{"192.168.1.0/24", "192.168.1.202", ""},   // would be the gateway
		{"fd00::/64", "fd00::1", ""},
	}
	for _, c := range cases {
		got, err := cpAddress(netip.MustParsePrefix(c.subnet), netip.MustParseAddr(c.gw))
		switch {
		case c.want == "" && err == nil:
			t.Errorf("%s gw %s: got %s, want an error", c.subnet, c.gw, got)
		case c.want != "" && (err != nil || got.String() != c.want):
			t.Errorf("%s gw %s: got %s, %v; want %s", c.subnet, c.gw, got, err, c.want)
		case err != nil && !strings.Contains(err.Error(), "202") && !strings.Contains(err.Error(), "IPv4"):
			t.Errorf("%s gw %s: error does not say what is wrong: %v", c.subnet, c.gw, err)
		}
	}
}

func TestDynamicRange(t *testing.T) {
	cases := []struct {
		subnet, reserved, want string // want "" means no range
	}{
		{"172.18.0.0/16", "172.18.0.202", "172.18.128.0/17"},
		{"192.168.215.0/24", "192.168.215.202", "192.168.215.0/25"},
		{"10.5.0.0/20", "10.5.0.202", "10.5.8.0/21"},
		{"10.0.0.0/8", "10.0.0.202", "10.128.0.0/9"},
		{"192.168.1.128/25", "192.168.1.202", ""},
	}
	for _, c := range cases {
		got, ok := dynamicRange(netip.MustParsePrefix(c.subnet), netip.MustParseAddr(c.reserved))
		if c.want == "" {
			if ok {
				t.Errorf("%s: got %s, want none", c.subnet, got)
			}
			continue
		}
		if !ok || got.String() != c.want {
			t.Errorf("%s: got %s (%v), want %s", c.subnet, got, ok, c.want)
		}
		if got.Contains(netip.MustParseAddr(c.reserved)) {
			t.Errorf("%s: range %s holds the reserved %s", c.subnet, got, c.reserved)
		}
	}
}

func writeBins(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func hashOf(t *testing.T, files map[string]string) string {
	t.Helper()
	b, err := BundleFromDir(writeBins(t, files))
	if err != nil {
		t.Fatal(err)
	}
	h, err := b.Hash()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestBundleHash(t *testing.T) {
	base := map[string]string{CPBinary: "cp-bytes", AgentBinary: "agent-bytes"}
	h := hashOf(t, base)
	if len(h) != 16 || strings.Trim(h, "0123456789abcdef") != "" {
		t.Fatalf("hash %q is not 16 hex digits", h)
	}
	if again := hashOf(t, base); again != h {
		t.Errorf("same binaries, different hash: %s, %s", h, again)
	}
	withReadme := map[string]string{CPBinary: "cp-bytes", AgentBinary: "agent-bytes", "README.md": "placeholder"}
	if got := hashOf(t, withReadme); got != h {
		t.Errorf("the README changed the hash: %s, %s", h, got)
	}
	for name, files := range map[string]map[string]string{
		"cp content":    {CPBinary: "cp-bytes!", AgentBinary: "agent-bytes"},
		"agent content": {CPBinary: "cp-bytes", AgentBinary: "agent-bytes!"},
		"no agent":      {CPBinary: "cp-bytes"},
		// Bytes moved from one file to the other: the stream differs only
		// by the length prefixes.
		"boundary": {CPBinary: "cp-bytesagent", AgentBinary: "-bytes"},
	} {
		if got := hashOf(t, files); got == h {
			t.Errorf("%s: changed binaries kept hash %s", name, h)
		}
	}
}

func TestBundleWithoutCP(t *testing.T) {
	for _, files := range []map[string]string{
		{"README.md": "placeholder"},
		{AgentBinary: "agent-bytes"},
	} {
		_, err := BundleFromDir(writeBins(t, files))
		if !errors.Is(err, ErrNotEmbedded) {
			t.Errorf("%v: err %v, want ErrNotEmbedded", files, err)
		}
	}
	if !strings.Contains(ErrNotEmbedded.Error(), "go tool task build") {
		t.Errorf("ErrNotEmbedded does not say how to build: %v", ErrNotEmbedded)
	}
	if _, err := BundleFromDir(writeBins(t, map[string]string{CPBinary: ""})); err == nil || !strings.Contains(err.Error(), "not a binary") {
		t.Errorf("an empty clawker-cp: %v", err)
	}
}

// Embedded reflects the build: with the binaries copied in (task build,
// cptest.BuildClawkerWithCP) it has clawker-cp, without them it says how to
// build.
func TestEmbedded(t *testing.T) {
	// What counts is what was embedded when this test binary was compiled,
	// not what embedded/ holds now: other packages' tests copy binaries in.
	b, err := Embedded()
	if errors.Is(err, ErrNotEmbedded) {
		return
	}
	if err != nil || !b.Has(CPBinary) {
		t.Fatalf("Embedded() = %v, %v", b, err)
	}
	if b.Has("README.md") {
		t.Error("the README counts as a binary")
	}
}

func TestBuildContext(t *testing.T) {
	b, err := BundleFromDir(writeBins(t, map[string]string{CPBinary: "cp-bytes", AgentBinary: "agent-bytes", "README.md": "x"}))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := buildContext(&buf, b, map[string]string{dockerx.LabelPurpose: "controlplane", dockerx.LabelManaged: "true", "dev.clawker.test": `a "quoted" \ value`}); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	modes := map[string]int64{}
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
		files[h.Name], modes[h.Name] = string(body), h.Mode
	}
	want := "FROM scratch\nCOPY rootfs/ /\n" +
		`LABEL dev.clawker.managed="true" dev.clawker.purpose="controlplane" dev.clawker.test="a \"quoted\" \\ value"` + "\n" +
		"ENTRYPOINT [\"/clawker-cp\", \"--bind\", \"0.0.0.0\"]\n"
	if files["Dockerfile"] != want {
		t.Errorf("Dockerfile:\n%s\nwant:\n%s", files["Dockerfile"], want)
	}
	if files["rootfs/"+CPBinary] != "cp-bytes" || files["rootfs/"+AgentBinary] != "agent-bytes" ||
		modes["rootfs/"+CPBinary] != 0o755 || modes["rootfs/"+AgentBinary] != 0o755 || modes["rootfs/"] != 0o755 {
		t.Errorf("binaries in the context: %q, modes %v", files, modes)
	}
	if len(files) != 4 { // Dockerfile, rootfs/, the two binaries; no README, no ory/
		t.Errorf("context holds %d entries: %v", len(files), files)
	}
	for _, bad := range []map[string]string{{"bad key": "v"}, {`k"`: "v"}, {"k": "line\nbreak"}} {
		if err := buildContext(io.Discard, b, bad); err == nil {
			t.Errorf("labels %q made a Dockerfile", bad)
		}
	}
}

func testSettingsPaths(t *testing.T) (settings.Settings, settings.Paths) {
	t.Helper()
	dir := t.TempDir()
	p, err := settings.ResolvePaths(func(k string) string {
		return map[string]string{"XDG_CONFIG_HOME": dir + "/config", "XDG_DATA_HOME": dir + "/data", "XDG_STATE_HOME": dir + "/state"}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	return settings.Default(), p
}

func TestCreateOptions(t *testing.T) {
	s, p := testSettingsPaths(t)
	o := &Options{Settings: s, Paths: p, Labels: map[string]string{"dev.clawker.test": "run1", dockerx.LabelManaged: "false"}}
	sp := newSpec(s, p, o.socket())
	ip := netip.MustParseAddr("172.18.0.202")
	co, err := createOptions(o, sp, ImageRef("0123456789abcdef"), "0123456789abcdef", ip, false)
	if err != nil {
		t.Fatal(err)
	}
	if co.Name != ContainerName || co.Config.Image != "clawker-controlplane:bin-0123456789abcdef" {
		t.Errorf("name %q image %q", co.Name, co.Config.Image)
	}
	l := co.Config.Labels
	if l[dockerx.LabelManaged] != "true" || l[dockerx.LabelPurpose] != dockerx.PurposeControlPlane || l[dockerx.LabelBinHash] != "0123456789abcdef" ||
		l["dev.clawker.test"] != "run1" || l[dockerx.LabelSpecHash] != sp.hash() {
		t.Errorf("labels %v", l)
	}
	hc := co.HostConfig
	if strings.Join(hc.CapAdd, ",") != "SYS_ADMIN" {
		t.Errorf("caps %v", hc.CapAdd)
	}
	if strings.Join(hc.SecurityOpt, ",") != "apparmor=unconfined,no-new-privileges:true" {
		t.Errorf("security opts %v", hc.SecurityOpt)
	}
	if hc.RestartPolicy.Name != "on-failure" || hc.RestartPolicy.MaximumRetryCount != 3 {
		t.Errorf("restart policy %+v", hc.RestartPolicy)
	}
	published := map[string]string{}
	for port, bs := range hc.PortBindings {
		if len(bs) != 1 || bs[0].HostIP.String() != "127.0.0.1" || bs[0].HostPort != port.Port() {
			t.Errorf("port %s bound as %+v", port, bs)
		}
		published[port.Port()] = string(port.Proto())
	}
	for _, want := range []int{7443, 7080, 4444, 4456} {
		if published[strconv.Itoa(want)] != "tcp" {
			t.Errorf("port %d not published: %v", want, published)
		}
	}
	if len(published) != 4 {
		t.Errorf("published %v; the agent port and the container-internal Ory ports stay unpublished", published)
	}
	mounts := map[string]mount.Mount{}
	for _, m := range hc.Mounts {
		if m.Type != mount.TypeBind {
			t.Errorf("mount %+v is not a bind mount", m)
		}
		mounts[m.Target] = m
	}
	wantMounts := []struct {
		src, dst string
		ro       bool
	}{
		{p.ConfigDir, "/config/clawker", true},
		{p.CPDir, "/data/clawker/controlplane", false},
		{p.LogDir, "/state/clawker/logs", false},
		{p.FirewallDir, "/data/clawker/firewall", false},
		{"/sys/fs/bpf", "/sys/fs/bpf", false},
		{"/sys/fs/cgroup", "/sys/fs/cgroup", true},
		{"/var/run/docker.sock", "/var/run/docker.sock", true},
		{"/proc", "/host/proc", true},
	}
	for _, w := range wantMounts {
		m, ok := mounts[w.dst]
		if !ok || m.Source != w.src || m.ReadOnly != w.ro {
			t.Errorf("mount at %s: %+v, want source %s read-only %v", w.dst, m, w.src, w.ro)
		}
	}
	if len(mounts) != len(wantMounts) {
		t.Errorf("%d mounts, want %d: %v", len(mounts), len(wantMounts), hc.Mounts)
	}
	for _, m := range hc.Mounts {
		if strings.HasPrefix(p.AuthDir, m.Source) {
			t.Errorf("mount %s exposes the CLI's auth directory %s", m.Source, p.AuthDir)
		}
	}
	if got, want := hc.Sysctls["net.ipv4.ip_local_reserved_ports"], reservedPorts(s); got != want || strings.Count(got, ",") != len(s.Ports())-1 {
		t.Errorf("reserved ports %q, want every listening port: %q", got, want)
	}
	env := strings.Join(co.Config.Env, " ")
	if env != "XDG_CONFIG_HOME=/config XDG_DATA_HOME=/data XDG_STATE_HOME=/state" {
		t.Errorf("env %s", env)
	}
	if !slices.Equal(co.Config.Cmd, []string{"--host-proc", "/host/proc"}) || len(co.Config.Entrypoint) != 0 {
		t.Errorf("cmd %v entrypoint %v: the image's entrypoint plus --host-proc /host/proc are meant", co.Config.Cmd, co.Config.Entrypoint)
	}
	ep := co.NetworkingConfig.EndpointsConfig[NetworkName]
	if string(hc.NetworkMode) != NetworkName || ep == nil || ep.IPAMConfig.IPv4Address != ip {
		t.Errorf("network %s endpoint %+v", hc.NetworkMode, ep)
	}

	withBPF, _ := createOptions(o, sp, "img", "h", ip, true)
	if strings.Join(withBPF.HostConfig.CapAdd, ",") != "SYS_ADMIN,BPF" {
		t.Errorf("caps with BPF %v", withBPF.HostConfig.CapAdd)
	}
}

func TestSpecHash(t *testing.T) {
	s, p := testSettingsPaths(t)
	a := newSpec(s, p, dockerSocket).hash()
	if b := newSpec(s, p, dockerSocket).hash(); a != b {
		t.Errorf("same spec, different hashes %s %s", a, b)
	}
	s2 := s
	s2.ControlPlane.HealthPort = 17080
	if b := newSpec(s2, p, dockerSocket).hash(); a == b {
		t.Error("a new health port kept the spec hash")
	}
	s3 := s
	s3.Firewall.Enable = !s.Firewall.Enable // read by the CP from its mounted settings: no new container
	if b := newSpec(s3, p, dockerSocket).hash(); a != b {
		t.Error("firewall.enable changed the spec hash")
	}
}

func TestDaemonKnowsCapBPF(t *testing.T) {
	for v, want := range map[string]bool{"1.41": false, "1.42": false, "1.43": true, "1.56": true, "": false} {
		if got := daemonKnowsCapBPF(v); got != want {
			t.Errorf("API %q: %v, want %v", v, got, want)
		}
	}
}

// capDocker rejects CAP_BPF at create time, as Docker 20.10 does.
type capDocker struct {
	Docker
	version string
	creates [][]string
}

func (d *capDocker) ClientVersion() string { return d.version }

func (d *capDocker) ContainerCreate(_ context.Context, o client.ContainerCreateOptions) (client.ContainerCreateResult, error) {
	d.creates = append(d.creates, o.HostConfig.CapAdd)
	for _, c := range o.HostConfig.CapAdd {
		if c == "BPF" {
			return client.ContainerCreateResult{}, cerrdefs.ErrInvalidArgument.WithMessage(`invalid CapAdd: unknown capability: "CAP_BPF"`)
		}
	}
	return client.ContainerCreateResult{ID: "abc"}, nil
}

func TestCreateWithCaps(t *testing.T) {
	s, p := testSettingsPaths(t)
	o := &Options{Settings: s, Paths: p}
	sp := newSpec(s, p, dockerSocket)
	opts := func(capBPF bool) (client.ContainerCreateOptions, error) {
		return createOptions(o, sp, "img", "h", netip.MustParseAddr("172.18.0.202"), capBPF)
	}
	// Old API: CAP_BPF is not even tried.
	d := &capDocker{version: "1.41"}
	id, capBPF, err := createWithCaps(context.Background(), d, opts)
	if err != nil || id != "abc" || capBPF || len(d.creates) != 1 {
		t.Errorf("API 1.41: %q %v %v, creates %v", id, capBPF, err, d.creates)
	}
	// New API, daemon still refuses: one retry without it.
	d = &capDocker{version: "1.44"}
	id, capBPF, err = createWithCaps(context.Background(), d, opts)
	if err != nil || id != "abc" || capBPF || len(d.creates) != 2 || strings.Join(d.creates[0], ",") != "SYS_ADMIN,BPF" {
		t.Errorf("API 1.44, refused: %q %v %v, creates %v", id, capBPF, err, d.creates)
	}
}

func TestStopTimeout(t *testing.T) {
	s := settings.Default()
	if got := StopTimeout(s); got < 90*time.Second {
		t.Errorf("default stop timeout %s, want at least 90s", got)
	}
	s.ControlPlane.Supervisor.DrainStepTimeout = 20 * time.Second
	if got := StopTimeout(s); got != 7*20*time.Second+15*time.Second {
		t.Errorf("stop timeout with 20s steps: %s", got)
	}
}

func TestPlainReporter(t *testing.T) {
	var buf bytes.Buffer
	r := NewPlainReporter(&buf)
	r.Begin("building image x")
	r.End("built image x", nil)
	r.Begin("starting y")
	r.End("", errors.New("boom\nsecond line"))
	r.Note("a remark")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "built image x (") ||
		!strings.HasPrefix(lines[1], "failed: starting y (") || strings.Contains(lines[1], "boom") ||
		lines[2] != "note: a remark" {
		t.Errorf("output:\n%s", buf.String())
	}
	for _, l := range lines {
		if strings.ContainsAny(l, "\r\x1b✓✗") {
			t.Errorf("plain output has terminal decorations: %q", l)
		}
	}
}

func TestTTYReporter(t *testing.T) {
	var buf lockedBuffer
	r := NewTTYReporter(&buf)
	r.Begin("waiting for /healthz")
	time.Sleep(250 * time.Millisecond)
	r.End("control plane healthy", nil)
	out := buf.String()
	if !strings.Contains(out, "⠙") || !strings.HasSuffix(out, "\r\x1b[K✓ control plane healthy ("+out[strings.LastIndex(out, "(")+1:]) {
		t.Errorf("output %q", out)
	}
	if !strings.HasSuffix(out, ")\n") {
		t.Errorf("the step does not end its line: %q", out)
	}
}

type lockedBuffer struct {
	mu  chan struct{}
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	if b.mu == nil {
		b.mu = make(chan struct{}, 1)
	}
	b.mu <- struct{}{}
	defer func() { <-b.mu }()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string { return b.buf.String() }

func TestLockFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", LockFileName)
	unlock, err := lockFile(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A second holder (flock locks belong to the open file) waits.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	waited := false
	if _, err := lockFile(ctx, path, func() { waited = true }); err == nil || !waited || !strings.Contains(err.Error(), "another clawker") {
		t.Fatalf("second lock: %v (waited %v)", err, waited)
	}
	got := make(chan error, 1)
	go func() {
		u, err := lockFile(context.Background(), path, nil)
		if err == nil {
			u()
		}
		got <- err
	}()
	time.Sleep(100 * time.Millisecond)
	unlock()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting locker did not get the lock after unlock")
	}
}

func TestHashCache(t *testing.T) {
	dir := t.TempDir()
	if h := cachedHash(dir); h != "" {
		t.Fatalf("empty cache gave %q", h)
	}
	storeHash(dir, "0123456789abcdef")
	if h := cachedHash(dir); h != "0123456789abcdef" {
		t.Fatalf("cache gave %q", h)
	}
	// Another executable's entry is not used.
	if err := os.WriteFile(filepath.Join(dir, hashCacheFile), []byte(`{"exe":"/other|1|2|3|4.5|6.7","hash":"0123456789abcdef"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if h := cachedHash(dir); h != "" {
		t.Fatalf("another executable's cache gave %q", h)
	}
}

func TestExitErrorMessage(t *testing.T) {
	e := &ExitError{ExitCode: 1, RestartCount: 2, LogTail: "line one\nline two"}
	msg := e.Error()
	for _, want := range []string{"code 1", "restarted it 2 time", "  line one\n  line two\n", "`docker logs clawker-controlplane`"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
}

func TestSummarizeLog(t *testing.T) {
	lines := []string{
		`{"level":"info","ts":"t","caller":"c","msg":"clawker-cp starting","event":"process_start","pid":1}`,
		`{"level":"error","ts":"t","caller":"c","msg":"control plane failed to start","actor":"clawker-cp","event":"startup_failed","error":"firewall.enable is true but ...; set firewall.enable: false in settings.yaml"}`,
		`{"level":"info","ts":"t","msg":"subsystem stopped","event":"subsystem_stopped","subsystem":"ebpf"}`,
		`{"level":"info","ts":"t","msg":"subsystem stopped","event":"subsystem_stopped","subsystem":"registry"}`,
		`{"level":"info","ts":"t","msg":"subsystem stopped","event":"subsystem_stopped","subsystem":"health"}`,
		"",
	}
	got := summarizeLog(lines, 2)
	want := "error: control plane failed to start: firewall.enable is true but ...; set firewall.enable: false in settings.yaml (event=startup_failed)\n" +
		"…\n" +
		"info: subsystem stopped (event=subsystem_stopped, subsystem=registry)\n" +
		"info: subsystem stopped (event=subsystem_stopped, subsystem=health)"
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	// An error among the last lines is not repeated; a panic trace is kept
	// verbatim.
	got = summarizeLog([]string{"panic: boom", "goroutine 1 [running]:"}, 5)
	if got != "panic: boom\ngoroutine 1 [running]:" {
		t.Errorf("got %q", got)
	}
}
