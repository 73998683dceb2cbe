package egress

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// BPFFSRoot is where the host's bpffs is (or gets) mounted.
const BPFFSRoot = "/sys/fs/bpf"

// DefaultPinDir is where clawker pins its maps and links.
const DefaultPinDir = BPFFSRoot + "/clawker"

// EnsureBPFFS mounts bpffs at BPFFSRoot when something else (or nothing) is
// mounted there. Pins outlive the process only on the host's bpffs: run this
// on the host (or in a container that bind-mounts the host's /sys/fs/bpf),
// never in a private mount namespace.
func EnsureBPFFS() error {
	ok, err := isFS(BPFFSRoot, unix.BPF_FS_MAGIC)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if ok {
		return nil
	}
	if err := os.MkdirAll(BPFFSRoot, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", BPFFSRoot, err)
	}
	if err := unix.Mount("bpf", BPFFSRoot, "bpf", 0, "mode=0700"); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("mount bpffs at %s: needs CAP_SYS_ADMIN (as root on the host: mount -t bpf bpf %s): %w",
				BPFFSRoot, BPFFSRoot, err)
		}
		if errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("mount bpffs at %s: kernel has no bpf filesystem: %w", BPFFSRoot, ebpf.ErrNotSupported)
		}
		return fmt.Errorf("mount bpffs at %s: %w", BPFFSRoot, err)
	}
	return nil
}

// errNoHostBPFFS explains what a process in a container needs.
func errNoHostBPFFS() error {
	return fmt.Errorf("%s is not a bpffs mount: mount it on the host (mount -t bpf bpf %s) and bind-mount it into this container; "+
		"a bpffs mounted inside the container would vanish with it, and every pinned link with it", BPFFSRoot, BPFFSRoot)
}

func isFS(path string, magic int64) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	return int64(st.Type) == magic, nil
}

// preparePinDir makes sure dir is a directory on bpffs, creating it (and
// its missing parents) only after checking that the nearest existing
// ancestor is on bpffs. It returns the directories it created, deepest
// last, so a failed Open can remove them.
func preparePinDir(dir string) (created []string, err error) {
	dir = filepath.Clean(dir)
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("pin dir %q: not an absolute path", dir)
	}
	existing := dir
	var missing []string
	for {
		_, err := os.Stat(existing)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		missing = append(missing, existing)
		parent := filepath.Dir(existing)
		if parent == existing {
			return nil, fmt.Errorf("pin dir %q: no existing ancestor", dir)
		}
		existing = parent
	}
	ok, err := isFS(existing, unix.BPF_FS_MAGIC)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("pin dir %q: %s is not on bpffs; refusing to pin there", dir, existing)
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			removeDirs(created)
			return nil, err
		}
		created = append(created, missing[i])
	}
	return created, nil
}

func removeDirs(dirs []string) {
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = os.Remove(dirs[i])
	}
}
