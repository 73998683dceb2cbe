package ory

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
)

// User is the unprivileged identity the servers run as when the control
// plane is root: Hydra's public port and Oathkeeper's proxy are reachable
// from agents, so an exploited server must not inherit the control plane's
// root, capabilities, Docker socket or server bundle.
type User struct {
	UID, GID int
}

// DefaultUser is the servers' identity: a uid and gid of their own, in no
// supplementary group, so neither the Docker socket (root:docker, 0660) nor
// anything else the control plane owns is theirs. Not nobody (65534), which
// the firewall siblings use in their containers.
var DefaultUser = User{UID: 65532, GID: 65532}

// RunBase holds the servers' run dirs when they run as User: the control
// plane's data dir is 0700 (the host's, bind-mounted into the container),
// which User cannot traverse, and the files need not outlive the servers.
// In the FROM-scratch container it is created 0755 on the container's own
// filesystem.
const RunBase = "/run/clawker-cp"

// RunDirFor is the run dir of the servers of the control plane whose data
// dir is cpDir: one per CP home, so that control planes run as host
// processes (tests) never share one, and a test can remove its own.
func RunDirFor(cpDir string) string {
	h := sha256.Sum256([]byte(cpDir))
	return filepath.Join(RunBase, "ory-"+hex.EncodeToString(h[:6]))
}

func (u User) String() string { return fmt.Sprintf("uid %d gid %d", u.UID, u.GID) }

func (u User) validate() error {
	if u.UID <= 0 || u.GID <= 0 {
		return fmt.Errorf("ory: the servers' user (%s) must not be root: set a non-zero uid and gid", u)
	}
	return nil
}

// checkReachable fails unless u can traverse every directory above path
// (path itself excluded: the run dir is made u's own, a binary is checked
// for its execute bit by the caller).
func (u User) checkReachable(path, what string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("ory: %s %s: %w", what, path, err)
	}
	for dir := filepath.Dir(abs); ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("ory: %s %s: %w", what, path, err)
		}
		if !u.searchable(fi) {
			return fmt.Errorf("ory: %s %s is not reachable by the servers' user (%s): %s is mode %04o; choose a %s under world-searchable directories (0755, /tmp or /run)",
				what, path, u, dir, fi.Mode().Perm(), what)
		}
		if dir == filepath.Dir(dir) {
			return nil
		}
	}
}
