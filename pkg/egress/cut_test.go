package egress

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestInCgroup(t *testing.T) {
	const base = "docker-0123abcd.scope"
	for _, c := range []struct {
		text string
		want bool
	}{
		{"0::/system.slice/docker-0123abcd.scope\n", true},
		// As a CP in its own cgroup namespace reads it.
		{"0::/../../system.slice/docker-0123abcd.scope\n", true},
		{"0::/../docker-0123abcd.scope/child\n", true},
		{"0::/system.slice/docker-0123abcd.scope.other\n", false},
		{"0::/system.slice/docker-0123abcdef.scope\n", false},
		// A cgroup v1 hierarchy's line is not the unified one.
		{"1:name=systemd:/docker-0123abcd.scope\n0::/user.slice\n", false},
		{"", false},
	} {
		if got := inCgroup(c.text, base); got != c.want {
			t.Errorf("inCgroup(%q) = %v, want %v", c.text, got, c.want)
		}
	}
}

// TestHostNetns opens the network namespace of a task in a test cgroup
// the way a containerized CP opens an agent's (here /proc is "the
// host's"), and refuses a pid whose cgroup is not the one named, or that
// is gone.
func TestHostNetns(t *testing.T) {
	requirePrivileged(t)
	dir, _ := newCgroup(t, "")
	sleeper := exec.Command("/bin/sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() })
	pid := sleeper.Process.Pid
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		t.Fatal(err)
	}

	f, err := hostNetns("/proc", pid, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got, want unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &got); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat("/proc/self/ns/net", &want); err != nil {
		t.Fatal(err)
	}
	if got.Ino != want.Ino {
		t.Errorf("opened namespace inode %d, want the sleeper's (this process's) %d", got.Ino, want.Ino)
	}

	if f, err := hostNetns("/proc", os.Getpid(), dir); err == nil {
		f.Close()
		t.Error("a task outside the named cgroup: opened its namespace, want an error")
	} else if !strings.Contains(err.Error(), "is not in cgroup") {
		t.Errorf("a task outside the named cgroup: %v", err)
	}

	_ = sleeper.Process.Kill()
	_ = sleeper.Wait()
	if f, err := hostNetns("/proc", pid, dir); err == nil {
		f.Close()
		t.Errorf("an exited pid %d: opened a namespace, want an error", pid)
	}
}
