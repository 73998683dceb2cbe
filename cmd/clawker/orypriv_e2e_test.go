package main_test

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/ory"
	"github.com/clawker/clawker-cp/pkg/ory/orytest"
	"github.com/clawker/clawker-cp/pkg/testkit"
)

// testOryUnprivilegedInContainer reads, from the host, the /proc status of
// each Ory server the CP runs in its container: the servers' uid and gid,
// no supplementary group, every capability set empty, no_new_privs. The
// Docker socket bind-mounted into the container is neither theirs nor
// their group's nor open to others, and their configuration (read through
// /proc/<pid>/root) names no file of the server bundle.
func testOryUnprivilegedInContainer(t *testing.T, e *e2e) {
	c := e.inspect(t, cpboot.ContainerName)
	if !slices.Contains(c.Config.Cmd, "--ory-dir") {
		testkit.SkipOrFail(t, "the control plane image carries no Ory servers (build them with `go tool task ory`)")
	}
	cpPid := c.State.Pid
	servers := childrenNamed(t, cpPid, ory.Names)
	if len(servers) != len(ory.Names) {
		t.Fatalf("Ory servers under the CP (host pid %d): %v, want one each of %v\n%s", cpPid, servers, ory.Names, e.cpLogs(t, 30))
	}
	for name, pid := range servers {
		priv, err := orytest.ReadPrivileges(pid)
		if err != nil {
			t.Fatal(err)
		}
		if err := priv.Dropped(ory.DefaultUser); err != nil {
			t.Errorf("%s (host pid %d) in the CP container: %v", name, pid, err)
		}
		t.Logf("%s: host pid %d, Uid %v Gid %v Groups %q %v NoNewPrivs %s", name, pid, priv.UID, priv.GID, priv.Groups, priv.Caps, priv.NoNewPrivs)
		// The host's /proc, bpffs, the cgroup tree and the Docker socket
		// are mounted in the CP's view, not in the server's.
		mi, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "mountinfo"))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(mi), "\n") {
			if f := strings.Fields(line); len(f) > 4 && slices.Contains(ory.HiddenMounts, f[4]) {
				t.Errorf("%s (host pid %d) sees the mount %s: %s", name, pid, f[4], line)
			}
		}
		cpMI, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(cpPid), "mountinfo"))
		if err != nil || !strings.Contains(string(cpMI), " "+cpboot.ContainerHostProc+" ") {
			t.Errorf("the CP itself lost the mount %s (%v)", cpboot.ContainerHostProc, err)
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if err != nil {
			t.Fatal(err)
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		i := slices.Index(args, "--config")
		if i < 0 || i+1 >= len(args) {
			t.Fatalf("%s's command line %q names no --config", name, args)
		}
		conf, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "root", args[i+1]))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(conf), "/controlplane/auth") {
			t.Errorf("%s's configuration %s names the server bundle:\n%s", name, args[i+1], conf)
		}
	}
	sock := filepath.Join("/proc", strconv.Itoa(cpPid), "root", "var/run/docker.sock")
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) == ory.DefaultUser.UID || int(st.Gid) == ory.DefaultUser.GID || fi.Mode().Perm()&0o007 != 0 {
		t.Errorf("the Docker socket in the CP container is %d:%d %04o: reachable by the Ory servers' user %s", st.Uid, st.Gid, fi.Mode().Perm(), ory.DefaultUser)
	}
}

// childrenNamed maps each of names to the pid of a child of parent with
// that command name, read from /proc/<pid>/stat on the host.
func childrenNamed(t *testing.T, parent int, names []string) map[string]int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, en := range entries {
		pid, err := strconv.Atoi(en.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", en.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at the last ')'.
		s := string(b)
		lp, rp := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if lp < 0 || rp < lp {
			continue
		}
		fields := strings.Fields(s[rp+1:])
		if len(fields) < 2 || fields[1] != strconv.Itoa(parent) {
			continue
		}
		if comm := s[lp+1 : rp]; slices.Contains(names, comm) {
			out[comm] = pid
		}
	}
	return out
}
