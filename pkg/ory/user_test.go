package ory_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/ory"
	"github.com/clawker/clawker-cp/pkg/ory/orytest"
	"github.com/clawker/clawker-cp/pkg/testkit"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testkit.SkipOrFail(t, "running a process as another user needs root")
	}
}

// runAsUser runs /bin/sh -c script through the launcher as u and returns
// its output (each line prefixed "probe: ") and exit.
func runAsUser(t *testing.T, u ory.User, script string) (string, ory.Exit) {
	t.Helper()
	if _, err := os.Stat("/bin/sh"); err != nil {
		testkit.SkipOrFail(t, "no /bin/sh to run as the servers' user")
	}
	out := &syncBuf{}
	p, err := ory.StartProcess(ory.ProcessConfig{Name: "probe", Path: "/bin/sh", Args: []string{"-c", script}, Output: out, User: &u})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-p.Exited():
		return out.String(), e
	case <-time.After(30 * time.Second):
		p.Stop(time.Second)
		t.Fatalf("the probe did not exit; output:\n%s", out.String())
	}
	return "", ory.Exit{}
}

// TestLauncherDropsEverything starts a shell through the launcher and reads
// its own /proc status: the servers' user throughout, no supplementary
// group, every capability set empty, no_new_privs; a root-only file and
// the Docker socket are out of its reach.
func TestLauncherDropsEverything(t *testing.T) {
	needRoot(t)
	u := ory.DefaultUser
	secret := filepath.Join(t.TempDir(), "server.key")
	if err := os.WriteFile(secret, []byte("not for the servers\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const socket = "/var/run/docker.sock"
	out, e := runAsUser(t, u, `cat /proc/$$/status; test -r `+secret+` && echo key-readable; `+
		`test -e `+socket+` && { test -r `+socket+` || test -w `+socket+` && echo socket-usable; }; echo end`)
	if e.Code != 0 || !strings.Contains(out, "probe: end\n") {
		t.Fatalf("probe exited %s:\n%s", e, out)
	}
	status := strings.ReplaceAll(out, "probe: ", "")
	if err := orytest.ParsePrivileges(status).Dropped(u); err != nil {
		t.Errorf("the launched process is not unprivileged: %v\n%s", err, status)
	}
	if strings.Contains(out, "key-readable") {
		t.Errorf("the servers' user can read a root-only 0600 file")
	}
	if strings.Contains(out, "socket-usable") {
		t.Errorf("the servers' user can use the Docker socket %s", socket)
	}
}

// TestLauncherIsTheServersProcess: the pid StartProcess reports is the
// server's own (the launcher execs, it does not fork), so Stop and the
// exit report reach the server.
func TestLauncherIsTheServersProcess(t *testing.T) {
	needRoot(t)
	out, e := runAsUser(t, ory.DefaultUser, `echo pid=$$; exit 7`)
	if e.Code != 7 || !strings.Contains(out, "probe: pid="+strconv.Itoa(e.PID)+"\n") {
		t.Errorf("exit %s (pid %d), output:\n%s", e, e.PID, out)
	}
}

func TestLauncherRefusesRootAndUnreachableBinaries(t *testing.T) {
	for _, u := range []ory.User{{UID: 0, GID: 100}, {UID: 100, GID: 0}} {
		_, err := ory.StartProcess(ory.ProcessConfig{Name: "x", Path: "/bin/true", User: &u})
		if err == nil || !strings.Contains(err.Error(), "must not be root") {
			t.Errorf("user %s: %v, want a refusal naming root", u, err)
		}
	}
	if os.Geteuid() != 0 {
		return // the mode check below reads ownership; as root it is decisive
	}
	hidden := filepath.Join(t.TempDir(), "hydra") // t.TempDir's parents are 0700
	if err := os.WriteFile(hidden, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	u := ory.DefaultUser
	_, err := ory.StartProcess(ory.ProcessConfig{Name: "x", Path: hidden, User: &u})
	if err == nil || !strings.Contains(err.Error(), "not reachable by the servers' user") || !strings.Contains(err.Error(), "mode 0700") {
		t.Errorf("binary under a 0700 directory: %v, want a refusal naming the directory's mode", err)
	}
}

// TestPrepareAsUser: with a User the run dir and every file in it are the
// user's (0700, 0600), Hydra and Oathkeeper read their own copies of the
// TLS pair, Kratos gets none, and a run dir under a 0700 directory is
// refused with the directory named.
func TestPrepareAsUser(t *testing.T) {
	needRoot(t)
	u := ory.DefaultUser
	env := orytest.NewEnv(t).AsUser(t, u)
	cfg := env.Config
	owned := func(path string, mode os.FileMode) {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if int(st.Uid) != u.UID || int(st.Gid) != u.GID || fi.Mode().Perm() != mode {
			t.Errorf("%s is %d:%d %04o, want %d:%d %04o", path, st.Uid, st.Gid, fi.Mode().Perm(), u.UID, u.GID, mode)
		}
	}
	for _, name := range ory.Names {
		spec, err := cfg.Prepare(name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(spec.Files.Remove)
		for _, f := range spec.Files {
			owned(f, 0o600)
		}
		conf, err := os.ReadFile(spec.Config)
		if err != nil {
			t.Fatal(err)
		}
		copies := filepath.Join(cfg.RunDir, name+"-tls.")
		switch name {
		case ory.Kratos:
			if strings.Contains(string(conf), "tls") || len(spec.Files) != 2 {
				t.Errorf("kratos got TLS material: files %v\n%s", spec.Files, conf)
			}
		default:
			if !strings.Contains(string(conf), copies+"crt") || !strings.Contains(string(conf), copies+"key") ||
				strings.Contains(string(conf), env.BundleDir) {
				t.Errorf("%s's configuration does not name its own TLS copies %s{crt,key}:\n%s", name, copies, conf)
			}
			key, err := os.ReadFile(copies + "key")
			orig, _ := os.ReadFile(cfg.TLSKeyFile)
			if err != nil || string(key) != string(orig) {
				t.Errorf("%s's key copy: %v", name, err)
			}
		}
	}
	owned(cfg.RunDir, 0o700)

	bad := cfg
	bad.RunDir = filepath.Join(t.TempDir(), "run")
	if _, err := bad.Prepare(ory.Hydra); err == nil || !strings.Contains(err.Error(), filepath.Dir(bad.RunDir)) ||
		!strings.Contains(err.Error(), "mode 0700") {
		t.Errorf("run dir under a 0700 directory: %v, want a refusal naming it", err)
	}
}

// TestRealStackAsUser starts the three real servers as the servers' user
// and reads each one's /proc status while it serves: ready (Hydra and
// Oathkeeper over TLS from their copies), nothing privileged left.
func TestRealStackAsUser(t *testing.T) {
	t.Parallel()
	bin := orytest.BinDir(t)
	u := ory.DefaultUser
	env := orytest.NewEnv(t).AsUser(t, u)
	out := &syncBuf{}
	for _, name := range ory.Names {
		p := startServer(t, bin, env.Config, name, out)
		priv, err := orytest.ReadPrivileges(p.PID())
		if err != nil {
			t.Fatal(err)
		}
		if err := priv.Dropped(u); err != nil {
			t.Errorf("%s (pid %d): %v", name, p.PID(), err)
		}
	}
	if err := ory.NewAdmin(env.Config.HydraAdminURL()).RegisterClawkerClients(context.Background(), env.Material.SigningJWK); err != nil {
		t.Errorf("registering the clients with Hydra run as %s: %v", u, err)
	}
}
