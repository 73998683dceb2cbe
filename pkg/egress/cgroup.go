package egress

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/clawker/clawker-cp/pkg/naming"
)

// CgroupID returns the id of the cgroup v2 directory at path: the inode
// number of the directory, which is what bpf_get_current_cgroup_id returns
// for a task in that cgroup.
func CgroupID(path string) (uint64, error) {
	ok, err := isFS(path, unix.CGROUP2_SUPER_MAGIC)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("%s: not a cgroup v2 directory", path)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, fmt.Errorf("%s: not a directory", path)
	}
	return st.Ino, nil
}

// Cgroup2Mount returns the mount point of the cgroup v2 hierarchy:
// /sys/fs/cgroup on a pure v2 host, /sys/fs/cgroup/unified on a hybrid one.
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	var found []string
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) || len(fields) < 5 {
			continue
		}
		if fields[sep+1] == "cgroup2" {
			found = append(found, unescapeMount(fields[4]))
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	if len(found) == 0 {
		return "", errors.New("no cgroup v2 hierarchy is mounted")
	}
	for _, p := range found {
		if p == "/sys/fs/cgroup" || p == "/sys/fs/cgroup/unified" {
			return p, nil
		}
	}
	return found[0], nil
}

func unescapeMount(s string) string {
	// mountinfo escapes space, tab, newline and backslash as \ooo.
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ContainerCgroup resolves the cgroup v2 directory of a Docker container
// (by its full 64-hex id) and returns it with its cgroup id. It tries, under
// the cgroup v2 mount: docker/<id> (cgroupfs driver, also the v1/v2 hybrid
// at /sys/fs/cgroup/unified), system.slice/docker-<id>.scope (systemd
// driver), then walks the hierarchy (rootless and nested layouts) for a
// directory named <id> or docker-<id>.scope.
//
// The id changes when the container restarts: resolve it again on every
// enable.
func ContainerCgroup(containerID string) (path string, id uint64, err error) {
	root, err := Cgroup2Mount()
	if err != nil {
		return "", 0, err
	}
	return containerCgroupUnder(root, containerID)
}

func containerCgroupUnder(root, containerID string) (string, uint64, error) {
	if !naming.ValidContainerID(containerID) {
		return "", 0, fmt.Errorf("container id %q: want the full 64-hex id", containerID)
	}
	scope := "docker-" + containerID + ".scope"
	for _, rel := range []string{
		filepath.Join("docker", containerID),
		filepath.Join("system.slice", scope),
		scope,
	} {
		p := filepath.Join(root, rel)
		if id, err := CgroupID(p); err == nil {
			return p, id, nil
		}
	}
	found, err := walkForContainer(root, containerID, scope, 8)
	if err != nil {
		return "", 0, err
	}
	if found == "" {
		return "", 0, fmt.Errorf("cgroup of container %s: %w", containerID[:12], os.ErrNotExist)
	}
	id, err := CgroupID(found)
	return found, id, err
}

func walkForContainer(root, containerID, scope string, maxDepth int) (string, error) {
	var found string
	rootDepth := strings.Count(root, string(filepath.Separator))
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == root {
				return err
			}
			return nil // a cgroup that vanished under us
		}
		if !d.IsDir() {
			return nil
		}
		if strings.Count(p, string(filepath.Separator))-rootDepth > maxDepth {
			return filepath.SkipDir
		}
		if name := d.Name(); name == containerID || name == scope {
			found = p
			return filepath.SkipAll
		}
		return nil
	})
	return found, err
}
