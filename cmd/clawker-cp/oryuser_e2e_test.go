package main_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/ory"
	"github.com/clawker/clawker-cp/pkg/ory/orytest"
	"github.com/clawker/clawker-cp/pkg/testkit"
)

// TestOryServersRunUnprivileged starts a root clawker-cp with the Ory
// servers and reads each server's /proc status while the CP is green: the
// servers' own uid and gid, no supplementary group (so not the docker
// group), every capability set empty, no_new_privs. Their configuration
// names TLS copies in their own run dir, never the CP's server bundle; the
// drain removes that run dir.
func TestOryServersRunUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.SkipOrFail(t, "dropping the Ory servers' privileges needs a root control plane")
	}
	home := identityHome(t, "")
	home.EnsureAuth(t)
	p := cptest.Start(t, home, cpBinary(t), []string{"--ory-dir", cptest.OryDir(t)})
	p.WaitHealthy(t, healthyTimeout)

	bundle := home.Paths(t).CPAuthDir
	var runDir string
	started := p.Events("ory_process_started")
	if len(started) != len(ory.Names) {
		t.Fatalf("ory_process_started events %v, want one per server", started)
	}
	for _, ev := range started {
		name, _ := ev["server"].(string)
		pid, _ := ev["pid"].(float64)
		config, _ := ev["config"].(string)
		if want := ory.DefaultUser.String(); ev["user"] != want {
			t.Errorf("%s: logged user %v, want %s", name, ev["user"], want)
		}
		priv, err := orytest.ReadPrivileges(int(pid))
		if err != nil {
			t.Fatalf("%s (pid %v): %v", name, pid, err)
		}
		if err := priv.Dropped(ory.DefaultUser); err != nil {
			t.Errorf("%s (pid %v) is not unprivileged: %v", name, pid, err)
		}
		runDir = filepath.Dir(config)
		b, err := os.ReadFile(config)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), bundle) {
			t.Errorf("%s's configuration names the CP's server bundle %s:\n%s", name, bundle, b)
		}
		fi, err := os.Stat(config)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != ory.DefaultUser.UID || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s's configuration is uid %d mode %04o, want the servers' %d and 0600", name, st.Uid, fi.Mode().Perm(), ory.DefaultUser.UID)
		}
	}
	if strings.HasPrefix(runDir, home.Paths(t).CPDir) {
		t.Errorf("the servers' run dir %s is inside the CP's data dir, which their user cannot traverse", runDir)
	}

	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.MustExit(t, 60*time.Second); code != 0 {
		t.Fatalf("the drain exited %d", code)
	}
	if _, err := os.Stat(runDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the servers' run dir %s outlived the drain: %v", runDir, err)
	}
}

// TestOryRunDirGoneAfterAKill: a root CP SIGKILLed (as the helpers' cleanup
// does to a CP still running) leaves its Ory run dir behind; the test home
// removes that exact dir when its test ends.
func TestOryRunDirGoneAfterAKill(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.SkipOrFail(t, "the Ory run dir outside the home exists only for a root control plane")
	}
	var runDir string
	t.Run("cp", func(t *testing.T) {
		home := identityHome(t, "")
		p := cptest.Start(t, home, cpBinary(t), []string{"--ory-dir", cptest.OryDir(t)})
		p.WaitHealthy(t, healthyTimeout)
		runDir = ory.RunDirFor(home.Paths(t).CPDir)
		if _, err := os.Stat(filepath.Join(runDir, ory.HydraConfigFile)); err != nil {
			t.Fatalf("the running CP's Hydra configuration: %v", err)
		}
		if err := p.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_, _ = p.Wait(30 * time.Second) // killed: no exit code
		if _, err := os.Stat(runDir); err != nil {
			t.Fatalf("the killed CP's run dir should still be there before the cleanup: %v", err)
		}
	})
	if _, err := os.Stat(runDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the run dir %s outlived its test: %v", runDir, err)
	}
}
