package ory

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// launcherArg is argv[1] of the control plane re-executed as the servers'
// launcher: /proc/self/exe launcherArg <uid> <gid> <binary> <args...>.
//
// Go's SysProcAttr sets the uid, gid and groups between fork and exec but
// cannot empty the capability bounding set or set no_new_privs there, and
// those are per-thread attributes: only the thread that calls execve
// passes them on. So the child is the control plane's own binary, which
// does every step on its locked main thread and then execs the server.
const launcherArg = "__clawker-ory-launch"

// launcherPath is the binary StartProcess runs as the launcher: the running
// program itself, whatever its name (clawker-cp, a test binary). Through
// /proc the kernel resolves it even if the file was replaced or removed.
const launcherPath = "/proc/self/exe"

// The launcher runs from init, so that every binary linking this package
// (clawker-cp, and any test binary that starts the servers) serves it
// without a hook in its main, and before anything else of the program runs.
// The main goroutine is on the main thread during init.
func init() {
	if len(os.Args) < 2 || os.Args[1] != launcherArg {
		return
	}
	runtime.LockOSThread()
	err := launch(os.Args[2:])
	// The launcher is a child that has not become the server yet: exiting
	// here fails that start, which the auth actor reports and retries.
	fmt.Fprintf(os.Stderr, "launcher: %v\n", err)
	os.Exit(126)
}

func launcherArgs(u User, path string, args []string) []string {
	return append([]string{launcherArg, strconv.Itoa(u.UID), strconv.Itoa(u.GID), path}, args...)
}

// launch drops every privilege and execs the server; it returns only on
// failure.
func launch(args []string) error {
	if len(args) < 3 {
		return errors.New("usage: " + launcherArg + " <uid> <gid> <binary> [args...]")
	}
	uid, err1 := strconv.Atoi(args[0])
	gid, err2 := strconv.Atoi(args[1])
	if err1 != nil || err2 != nil {
		return fmt.Errorf("uid %q and gid %q must be numbers", args[0], args[1])
	}
	u := User{UID: uid, GID: gid}
	if err := u.validate(); err != nil {
		return err
	}
	path := args[2]
	ppid := os.Getppid()
	if err := hideHostMounts(); err != nil {
		return err
	}
	if err := dropPrivileges(u); err != nil {
		return err
	}
	// A change of credentials clears the parent-death signal StartProcess
	// set: set it again, and give up if the control plane died meanwhile.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("setting the parent-death signal: %w", err)
	}
	if os.Getppid() != ppid {
		return errors.New("the control plane exited before the server started")
	}
	if err := checkDropped(u); err != nil {
		return err
	}
	argv := append([]string{path}, args[3:]...)
	return fmt.Errorf("exec %s: %w", path, unix.Exec(path, argv, os.Environ()))
}

// HiddenMounts are the mounts of the CP's container that the servers have
// no use for and do not see: the host's /proc (the CP's way into agents'
// network namespaces), bpffs, the host's cgroup tree and the Docker
// socket. Hydra's public port is reachable from agents: a server taken
// over through it must not read the host's process table.
var HiddenMounts = []string{"/host/proc", "/sys/fs/bpf", "/sys/fs/cgroup", "/var/run/docker.sock"}

// hideHostMounts gives the launcher (and the server it becomes: the thread
// that execs passes its namespaces on) a mount namespace of its own, with
// HiddenMounts detached. The CP's own view is untouched. A path that is
// not a mount point (a CP on the host) is left as it is.
func hideHostMounts() error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("a mount namespace of its own (needs CAP_SYS_ADMIN): %w", err)
	}
	// Nothing done here may propagate back to the CP's namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making the mounts private: %w", err)
	}
	for _, p := range HiddenMounts {
		err := unix.Unmount(p, unix.MNT_DETACH)
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("detaching %s: %w", p, err)
		}
	}
	return nil
}

// dropPrivileges empties the bounding and ambient sets, sets no_new_privs,
// then becomes u with no supplementary group (which clears the permitted
// and effective sets) and clears the inheritable set. The order matters:
// dropping from the bounding set needs CAP_SETPCAP, and setgroups and
// setres[ug]id need CAP_SETGID and CAP_SETUID, all gone after setresuid.
func dropPrivileges(u User) error {
	for c := 0; c < 64; c++ {
		err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0)
		if errors.Is(err, unix.EINVAL) && c > 0 {
			break // past the kernel's last capability
		}
		if err != nil {
			return fmt.Errorf("dropping capability %d from the bounding set (needs CAP_SETPCAP): %w", c, err)
		}
	}
	// EINVAL: a kernel without ambient capabilities (before 4.3) has none to clear.
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clearing the ambient capabilities: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("setting no_new_privs: %w", err)
	}
	if err := syscall.Setgroups([]int{}); err != nil {
		return fmt.Errorf("clearing the supplementary groups: %w", err)
	}
	if err := syscall.Setresgid(u.GID, u.GID, u.GID); err != nil {
		return fmt.Errorf("setting gid %d: %w", u.GID, err)
	}
	if err := syscall.Setresuid(u.UID, u.UID, u.UID); err != nil {
		return fmt.Errorf("setting uid %d: %w", u.UID, err)
	}
	// Lowering the inheritable set needs no capability.
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var none [2]unix.CapUserData
	if err := unix.Capset(&hdr, &none[0]); err != nil {
		return fmt.Errorf("clearing the capability sets: %w", err)
	}
	return nil
}

// checkDropped verifies, on this thread, what exec will pass on: no
// capability in any set, no_new_privs, u's ids, no supplementary group.
func checkDropped(u User) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var caps [2]unix.CapUserData
	if err := unix.Capget(&hdr, &caps[0]); err != nil {
		return fmt.Errorf("reading the capability sets: %w", err)
	}
	for _, d := range caps {
		if d.Effective|d.Permitted|d.Inheritable != 0 {
			return fmt.Errorf("capabilities left after the drop: %+v", caps)
		}
	}
	for c := 0; c < 64; c++ {
		in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0)
		if errors.Is(err, unix.EINVAL) {
			break
		}
		if err != nil || in != 0 {
			return fmt.Errorf("capability %d still in the bounding set (%v)", c, err)
		}
	}
	if nnp, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); err != nil || nnp != 1 {
		return fmt.Errorf("no_new_privs is not set (%v)", err)
	}
	groups, err := syscall.Getgroups()
	if err != nil || len(groups) != 0 {
		return fmt.Errorf("supplementary groups left: %v (%v)", groups, err)
	}
	if r, e, s := unix.Getresuid(); r != u.UID || e != u.UID || s != u.UID {
		return fmt.Errorf("uids are %d/%d/%d, want %d", r, e, s, u.UID)
	}
	if r, e, s := unix.Getresgid(); r != u.GID || e != u.GID || s != u.GID {
		return fmt.Errorf("gids are %d/%d/%d, want %d", r, e, s, u.GID)
	}
	return nil
}

// searchable reports whether u may traverse dir. The servers open their
// configuration, schema and TLS files by absolute path, so every ancestor
// of the run dir must let them through.
func (u User) searchable(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fi.Mode().Perm()&0o001 != 0
	}
	m := fi.Mode().Perm()
	switch {
	case int(st.Uid) == u.UID:
		return m&0o100 != 0
	case int(st.Gid) == u.GID:
		return m&0o010 != 0
	}
	return m&0o001 != 0
}
