package agentrun

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/dockerx"
)

const testCPAddr = "172.30.0.202:7444"

func testSpec(t *testing.T, img string) Spec {
	t.Helper()
	return Spec{
		Project: "myapp", Agent: "dev", Image: img, CPAddr: testCPAddr, Heartbeat: 500 * time.Millisecond,
		Labels: map[string]string{"dev.clawker.test": "run1", dockerx.LabelPurpose: "not-an-agent"},
		Auth:   testAuth(t), Binaries: testBundle(t, "#!clawkerd"),
	}
}

// The container Create makes: unprivileged, labelled, clawkerd as PID 1
// with the image's command after "--".
func TestCreateContainerShape(t *testing.T) {
	d := newFake()
	d.images["agent:1"] = fakeImage{Entrypoint: []string{"/agent"}, Cmd: []string{"serve"}}
	s := testSpec(t, "agent:1")
	res, err := Create(context.Background(), d, s)
	if err != nil {
		t.Fatal(err)
	}
	c := d.containers[res.ID]
	if c == nil || !c.Started || res.Name != "clawker.myapp.dev" || c.Name != res.Name {
		t.Fatalf("result %+v, container %+v", res, c)
	}
	cfg, hc := c.Opts.Config, c.Opts.HostConfig
	if !slices.Equal(cfg.Entrypoint, []string{"/clawker/clawkerd"}) || !slices.Equal(cfg.Cmd, []string{"--", "/agent", "serve"}) {
		t.Errorf("entrypoint %q cmd %q", cfg.Entrypoint, cfg.Cmd)
	}
	if !slices.Equal(res.Argv, []string{"/agent", "serve"}) {
		t.Errorf("argv %q", res.Argv)
	}
	wantEnv := []string{
		"CLAWKERD_CP_ADDR=" + testCPAddr, "CLAWKERD_CA=/clawker/ca.crt", "CLAWKERD_CERT=/clawker/agent.crt",
		"CLAWKERD_KEY=/clawker/agent.key", "CLAWKERD_PROJECT=myapp", "CLAWKERD_AGENT=dev", "CLAWKERD_HEARTBEAT=500ms",
	}
	if !slices.Equal(cfg.Env, wantEnv) {
		t.Errorf("env %q\nwant %q", cfg.Env, wantEnv)
	}
	wantLabels := map[string]string{
		"dev.clawker.managed": "true", "dev.clawker.purpose": "agent", "dev.clawker.project": "myapp",
		"dev.clawker.agent": "dev", "dev.clawker.test": "run1",
	}
	if !maps.Equal(cfg.Labels, wantLabels) {
		t.Errorf("labels %v\nwant %v", cfg.Labels, wantLabels)
	}
	// Unprivileged: everything dropped, nothing added, no new
	// privileges, clawker's seccomp profile (the daemon's default
	// AppArmor), limits, no mounts.
	want := container.HostConfig{
		NetworkMode:   "clawker-net",
		CapDrop:       []string{"ALL"},
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyDisabled},
	}
	if hc.NetworkMode != want.NetworkMode || !slices.Equal(hc.CapDrop, want.CapDrop) || hc.RestartPolicy != want.RestartPolicy ||
		hc.Privileged || len(hc.CapAdd) != 0 || len(hc.Mounts) != 0 || len(hc.Binds) != 0 ||
		len(hc.Devices) != 0 || len(hc.PortBindings) != 0 || hc.PidMode != "" || hc.IpcMode != "" || hc.UsernsMode != "" ||
		hc.CgroupnsMode != "" || len(hc.Tmpfs) != 0 || len(hc.VolumesFrom) != 0 {
		t.Errorf("host config %+v", hc)
	}
	if !slices.Equal(hc.SecurityOpt, []string{"no-new-privileges:true", "seccomp=" + SeccompProfile()}) {
		t.Errorf("security options %q", hc.SecurityOpt)
	}
	if hc.PidsLimit == nil || *hc.PidsLimit != DefaultPidsLimit || hc.Memory != DefaultMemory {
		t.Errorf("limits: pids %v memory %d", hc.PidsLimit, hc.Memory)
	}
	if cfg.Healthcheck == nil || !slices.Equal(cfg.Healthcheck.Test, []string{"NONE"}) {
		t.Errorf("healthcheck %+v, want the image's disabled", cfg.Healthcheck)
	}
	// Create, then inject, then start: the calls in order.
	var order []string
	for _, c := range d.calls {
		if c == "ContainerCreate" || c == "CopyToContainer" || c == "ContainerStart" {
			order = append(order, c)
		}
	}
	if !slices.Equal(order, []string{"ContainerCreate", "CopyToContainer", "ContainerStart"}) {
		t.Errorf("calls %v", d.calls)
	}
}

// The files copied in: modes, owner, and a certificate for this very
// container: a chain of leaves for one key that covers CertValidity.
func TestCreateInjectsCredentials(t *testing.T) {
	for _, c := range []struct {
		name, user string
		files      map[string]string
		owner      string
	}{
		{"root", "", nil, "0:0"},
		{"numeric", "1000:1001", nil, "1000:1001"},
		{"numeric uid, group from passwd", "1000", map[string]string{"/etc/passwd": "root:x:0:0::/root:/bin/sh\nnode:x:1000:1002::/home/node:/bin/sh\n"}, "1000:1002"},
		{"numeric uid, no passwd", "4242", nil, "4242:0"},
		{"named", "node", map[string]string{"/etc/passwd": "root:x:0:0::/root:/bin/sh\nnode:x:1000:1002::/home/node:/bin/sh\n"}, "1000:1002"},
		{"named with group", "node:staff", map[string]string{
			"/etc/passwd": "node:x:1000:1002::/home/node:/bin/sh\n", "/etc/group": "root:x:0:\nstaff:x:50:node\n",
		}, "1000:50"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := newFake()
			d.images["agent:1"] = fakeImage{Entrypoint: []string{"/agent"}, User: c.user, Files: c.files}
			s := testSpec(t, "agent:1")
			before := time.Now()
			res, err := Create(context.Background(), d, s)
			if err != nil {
				t.Fatal(err)
			}
			if res.Owner != c.owner {
				t.Errorf("owner %s, want %s", res.Owner, c.owner)
			}
			ct := d.containers[res.ID]
			if ct.CopyDst != "/" {
				t.Errorf("copied to %q", ct.CopyDst)
			}
			type entry struct {
				mode int64
				typ  byte
			}
			want := map[string]entry{
				"clawker/": {0o500, '5'}, "clawker/clawkerd": {0o500, '0'},
				"clawker/ca.crt": {0o400, '0'}, "clawker/agent.crt": {0o400, '0'}, "clawker/agent.key": {0o400, '0'},
			}
			got := map[string][]byte{}
			for _, e := range ct.Copied {
				h := e.Header
				w, ok := want[h.Name]
				if !ok {
					t.Errorf("unexpected entry %s", h.Name)
					continue
				}
				if h.Mode != w.mode || h.Typeflag != w.typ {
					t.Errorf("%s: mode %o type %c, want %o %c", h.Name, h.Mode, h.Typeflag, w.mode, w.typ)
				}
				if own := (owner{h.Uid, h.Gid}).String(); own != c.owner {
					t.Errorf("%s: owner %s, want %s", h.Name, own, c.owner)
				}
				got[h.Name] = e.Body
			}
			if len(got) != len(want) {
				t.Fatalf("entries %v", slices.Collect(maps.Keys(got)))
			}
			if string(got["clawker/clawkerd"]) != "#!clawkerd" {
				t.Errorf("clawkerd %q", got["clawker/clawkerd"])
			}
			// The chain: DefaultAgentChain's leaves for one key, each for
			// this container, 48 h each, starting 24 h apart.
			var leaves []*x509.Certificate
			for rest := got["clawker/agent.crt"]; ; {
				var blk *pem.Block
				if blk, rest = pem.Decode(rest); blk == nil {
					break
				}
				leaf, err := x509.ParseCertificate(blk.Bytes)
				if err != nil {
					t.Fatal(err)
				}
				leaves = append(leaves, leaf)
			}
			dc := certs.DefaultAgentChain
			if len(leaves) != dc.Leaves || res.CertLeaves != dc.Leaves {
				t.Fatalf("%d leaves (result says %d), want %d", len(leaves), res.CertLeaves, dc.Leaves)
			}
			for i, leaf := range leaves {
				id, err := certs.ParseAgentIdentity(leaf)
				if err != nil || id != (certs.AgentIdentity{Project: "myapp", Agent: "dev", ContainerID: res.ID}) {
					t.Errorf("leaf %d: identity %+v %v; container %s", i, id, err, res.ID)
				}
				if certs.KeyThumbprint(leaf) != certs.KeyThumbprint(leaves[0]) {
					t.Errorf("leaf %d certifies another key", i)
				}
				from := leaf.NotBefore.Add(time.Hour).Sub(before) // NotBefore is backdated an hour for clock skew
				if want := time.Duration(i) * dc.Step; from < want-time.Minute || from > want+time.Minute {
					t.Errorf("leaf %d starts %s after the mint, want %s", i, from, want)
				}
				if life := leaf.NotAfter.Sub(leaf.NotBefore) - time.Hour; life != dc.Validity {
					t.Errorf("leaf %d valid %s, want %s", i, life, dc.Validity)
				}
			}
			last := leaves[len(leaves)-1].NotAfter
			if life := last.Sub(before); life < CertValidity-time.Minute || life > CertValidity+time.Minute || !last.Equal(res.CertNotAfter) {
				t.Errorf("chain ends %s (%s from now), result says %s", last, life, res.CertNotAfter)
			}
			ca, err := parseCertPEM(got["clawker/ca.crt"])
			if err != nil || !ca.Equal(s.Auth.CA) {
				t.Errorf("ca.crt is not the CA (%v)", err)
			}
			// The key matches the certificate and is usable by clawkerd.
			if _, err := certs.AgentClientTLSConfig(got["clawker/ca.crt"], got["clawker/agent.crt"], got["clawker/agent.key"], certs.ServerCommonName); err != nil {
				t.Errorf("agent TLS config: %v", err)
			}
		})
	}
}

// Like docker run: CMD replaces the image's Cmd and keeps its Entrypoint.
func TestCommand(t *testing.T) {
	for _, c := range []struct {
		ep, imgCmd, cmd, want []string
	}{
		{[]string{"/agent"}, []string{"serve"}, nil, []string{"/agent", "serve"}},
		{[]string{"/agent"}, []string{"serve"}, []string{"exit", "3"}, []string{"/agent", "exit", "3"}},
		{nil, []string{"/bin/sh"}, nil, []string{"/bin/sh"}},
		{nil, []string{"/bin/sh"}, []string{"/bin/true"}, []string{"/bin/true"}},
		{nil, nil, nil, []string{}},
		{nil, nil, []string{"--flag"}, []string{"--flag"}},
	} {
		if got := command(c.ep, c.imgCmd, c.cmd); !slices.Equal(got, c.want) || got == nil {
			t.Errorf("command(%q, %q, %q) = %q, want %q", c.ep, c.imgCmd, c.cmd, got, c.want)
		}
	}
	// No command at all: clawkerd gets "--" alone, never an empty Cmd
	// (Docker would fill in the image's).
	o := createOptions(Spec{Project: "p", Agent: "a", Image: "i"}, "n", "clawker-net", []string{})
	if !slices.Equal(o.Config.Cmd, []string{"--"}) {
		t.Errorf("cmd %q", o.Config.Cmd)
	}
	if slices.ContainsFunc(o.Config.Env, func(e string) bool { return strings.HasPrefix(e, EnvHeartbeat+"=") }) {
		t.Errorf("heartbeat set without one: %q", o.Config.Env)
	}
}

// A failure after the container exists removes it: no half-made agent.
func TestCreateRemovesOnFailure(t *testing.T) {
	boom := errors.New("boom")
	for _, c := range []struct {
		name  string
		setup func(d *fakeDocker)
		want  string
	}{
		{"copy fails", func(d *fakeDocker) { d.copyErr = boom }, "copying clawkerd"},
		{"start fails", func(d *fakeDocker) { d.startErr = boom }, "starting container clawker.myapp.dev"},
		{"unknown user", func(d *fakeDocker) {
			d.images["agent:1"] = fakeImage{Entrypoint: []string{"/agent"}, User: "ghost"}
		}, `the image's user "ghost" is not in the image's /etc/passwd`},
		{"unknown group", func(d *fakeDocker) {
			d.images["agent:1"] = fakeImage{Entrypoint: []string{"/agent"}, User: "0:ghosts"}
		}, `the image's group "ghosts" is not in the image's /etc/group`},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := newFake()
			d.images["agent:1"] = fakeImage{Entrypoint: []string{"/agent"}}
			c.setup(d)
			res, err := Create(context.Background(), d, testSpec(t, "agent:1"))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want %q", err, c.want)
			}
			if len(d.containers) != 0 || len(d.removed) != 1 || !d.removeOpts[0].Force || res.ID != "" {
				t.Errorf("containers left %d, removed %v (%+v), result id %q", len(d.containers), d.removed, d.removeOpts, res.ID)
			}
		})
	}
	// An interrupted run (ctx cancelled during the copy) still removes.
	d := newFake()
	d.images["agent:1"] = fakeImage{Entrypoint: []string{"/agent"}}
	d.copyErr = context.Canceled
	if _, err := Create(context.Background(), d, testSpec(t, "agent:1")); err == nil || len(d.containers) != 0 {
		t.Errorf("err %v, containers left %d", err, len(d.containers))
	}
}

// Failures before the container exists leave nothing behind and say what
// to do.
func TestCreateRefusals(t *testing.T) {
	d := newFake()
	d.images["agent:1"] = fakeImage{Entrypoint: []string{"/agent"}}
	s := testSpec(t, "agent:1")
	var err error

	bad := s
	bad.Agent = "Dev.1"
	var fe *certs.InvalidFieldError
	if _, err := Create(context.Background(), d, bad); !errors.As(err, &fe) || fe.Field != certs.FieldAgent {
		t.Errorf("bad agent: %v", err)
	}
	bad = s
	bad.Project = "-x"
	if _, err := Create(context.Background(), d, bad); !errors.As(err, &fe) || fe.Field != certs.FieldProject {
		t.Errorf("bad project: %v", err)
	}
	bad = s
	bad.Image = "missing:1"
	if _, err := Create(context.Background(), d, bad); !errors.Is(err, ErrImageNotFound) || !strings.Contains(err.Error(), "does not pull") {
		t.Errorf("missing image: %v", err)
	}
	bad = s
	bad.Auth = &certs.Material{CA: s.Auth.CA}
	if _, err := Create(context.Background(), d, bad); err == nil || !strings.Contains(err.Error(), "CA key") {
		t.Errorf("no CA key: %v", err)
	}
	bad = s
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, cpboot.CPBinary), []byte("cp"), 0o755); err != nil {
		t.Fatal(err)
	}
	if bad.Binaries, err = cpboot.BundleFromDir(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(context.Background(), d, bad); err == nil || !strings.Contains(err.Error(), "carries no clawkerd") {
		t.Errorf("no clawkerd: %v", err)
	}
	if len(d.containers) != 0 || slices.Contains(d.calls, "ContainerCreate") {
		t.Errorf("calls %v", d.calls)
	}

	// The name is taken: ErrExists, and the existing container is not
	// touched.
	if _, err := Create(context.Background(), d, s); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(context.Background(), d, s); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "clawker.myapp.dev") {
		t.Errorf("second create: %v", err)
	}
	if len(d.containers) != 1 || len(d.removed) != 0 {
		t.Errorf("containers %d, removed %v", len(d.containers), d.removed)
	}
}

func TestRemove(t *testing.T) {
	ctx := context.Background()
	setup := func(t *testing.T) (*fakeDocker, Result) {
		d := newFake()
		d.images["agent:1"] = fakeImage{Entrypoint: []string{"/agent"}}
		res, err := Create(ctx, d, testSpec(t, "agent:1"))
		if err != nil {
			t.Fatal(err)
		}
		return d, res
	}

	t.Run("running without force is refused", func(t *testing.T) {
		d, res := setup(t)
		r, err := Remove(ctx, d, "myapp", "dev", false)
		if !errors.Is(err, ErrRunning) || r.ID != res.ID || !r.WasRunning || len(d.removed) != 0 {
			t.Errorf("%+v %v removed %v", r, err, d.removed)
		}
	})
	t.Run("force kills and removes", func(t *testing.T) {
		d, res := setup(t)
		r, err := Remove(ctx, d, "myapp", "dev", true)
		if err != nil || r.ID != res.ID || !r.WasRunning || r.Status != "running" || !slices.Equal(d.removed, []string{res.ID}) ||
			!d.removeOpts[0].Force || !d.removeOpts[0].RemoveVolumes {
			t.Errorf("%+v %v removed %v %+v", r, err, d.removed, d.removeOpts)
		}
	})
	t.Run("stopped without force", func(t *testing.T) {
		d, res := setup(t)
		d.containers[res.ID].Running = false
		r, err := Remove(ctx, d, "myapp", "dev", false)
		if err != nil || r.WasRunning || r.Status != "exited" || len(d.removed) != 1 || d.removeOpts[0].Force {
			t.Errorf("%+v %v %+v", r, err, d.removeOpts)
		}
	})
	t.Run("not found", func(t *testing.T) {
		d := newFake()
		if _, err := Remove(ctx, d, "myapp", "dev", true); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "clawker.myapp.dev") {
			t.Errorf("%v", err)
		}
	})
	t.Run("not ours", func(t *testing.T) {
		for _, labels := range []map[string]string{
			{},
			{"dev.clawker.managed": "true", "dev.clawker.purpose": "controlplane", "dev.clawker.project": "myapp", "dev.clawker.agent": "dev"},
			{"dev.clawker.managed": "true", "dev.clawker.purpose": "agent", "dev.clawker.project": "other", "dev.clawker.agent": "dev"},
		} {
			d, _ := setup(t)
			d.labels = labels
			if _, err := Remove(ctx, d, "myapp", "dev", true); !errors.Is(err, ErrNotAgent) || len(d.removed) != 0 {
				t.Errorf("labels %v: %v, removed %v", labels, err, d.removed)
			}
		}
	})
	t.Run("daemon error", func(t *testing.T) {
		d, _ := setup(t)
		d.inspectErr = cerrdefs.ErrUnavailable.WithMessage("Cannot connect to the Docker daemon")
		if _, err := Remove(ctx, d, "myapp", "dev", true); err == nil || !strings.Contains(err.Error(), "Cannot connect") {
			t.Errorf("%v", err)
		}
	})
	t.Run("bad names", func(t *testing.T) {
		var fe *certs.InvalidFieldError
		if _, err := Remove(ctx, newFake(), "myapp", "a.b", true); !errors.As(err, &fe) || fe.Field != certs.FieldAgent {
			t.Errorf("%v", err)
		}
	})
}

func TestProjectFromDir(t *testing.T) {
	for _, c := range []struct {
		dir, want string
		ok        bool
	}{
		{"/home/me/myapp", "myapp", true},
		{"/home/me/My App", "my-app", true},
		{"/home/me/my.site/", "my.site", true},
		{"/src/_private", "private", true},
		{"/src/Ünïcode", "n-code", true},
		{"/src/" + strings.Repeat("x", 80), strings.Repeat("x", 63), true},
		{"/", "", false},
		{"/src/___", "", false},
		{"", "", false},
	} {
		got, ok := ProjectFromDir(c.dir)
		if got != c.want || ok != c.ok {
			t.Errorf("ProjectFromDir(%q) = %q %v, want %q %v", c.dir, got, ok, c.want, c.ok)
		}
		if ok {
			if err := ValidateNames(got, "a"); err != nil {
				t.Errorf("%q: %v", got, err)
			}
		}
	}
}

func TestParseOwnerReadsOnlyWhatItNeeds(t *testing.T) {
	reads := 0
	read := func(string) ([]byte, error) { reads++; return nil, nil }
	for _, u := range []string{"", "0:0", "1000:1000"} {
		if _, err := parseOwner(u, read); err != nil {
			t.Fatal(err)
		}
	}
	if reads != 0 {
		t.Errorf("%d reads for numeric users", reads)
	}
	if _, err := parseOwner("1000:", read); err == nil {
		t.Error("empty group accepted")
	}
	failing := func(string) ([]byte, error) { return nil, errors.New("daemon gone") }
	if _, err := parseOwner("node", failing); err == nil || !strings.Contains(err.Error(), "daemon gone") {
		t.Errorf("%v", err)
	}
}
