package agentd

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

const (
	mcpDirMode  os.FileMode = 0o700
	mcpFileMode os.FileMode = 0o600
)

// writeMCP writes data to <home>/.clawker/mcp/<name>.json atomically: a
// temp file in the same directory, fsync, rename over the target, fsync
// the directory. A reader (or a crash) sees the old file or the new one.
//
// Everything happens inside os.Root(home): clawkerd may run as root while
// home belongs to the agent's user, and a symlink planted there must not
// make clawkerd write, chmod or chown anything outside home. When clawkerd
// is root, what it creates is given to home's owner.
func writeMCP(home, name string, data []byte) (path string, err error) {
	root, err := os.OpenRoot(home)
	if err != nil {
		return "", err
	}
	defer root.Close()
	uid, gid := ownerOf(home)

	dir := filepath.Join(".clawker", "mcp")
	for _, d := range []string{".clawker", dir} {
		if err := root.Mkdir(d, mcpDirMode); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", err
		}
		fi, err := root.Lstat(d)
		if err != nil {
			return "", err
		}
		if !fi.IsDir() {
			return "", fmt.Errorf("%s is not a directory", filepath.Join(home, d))
		}
		// Also tightens a directory that existed with a looser mode.
		if err := root.Chmod(d, mcpDirMode); err != nil {
			return "", err
		}
		if uid >= 0 {
			if err := root.Lchown(d, uid, gid); err != nil {
				return "", err
			}
		}
	}

	target := filepath.Join(dir, name+".json")
	var suffix [8]byte
	_, _ = rand.Read(suffix[:])
	tmp := filepath.Join(dir, "."+name+".json.tmp-"+hex.EncodeToString(suffix[:]))
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mcpFileMode)
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			f.Close()
			root.Remove(tmp)
		}
	}()
	if err = f.Chmod(mcpFileMode); err != nil { // exact, whatever the umask
		return "", err
	}
	if uid >= 0 {
		if err = f.Chown(uid, gid); err != nil {
			return "", err
		}
	}
	if _, err = f.Write(data); err != nil {
		return "", err
	}
	if err = f.Sync(); err != nil {
		return "", err
	}
	if err = f.Close(); err != nil {
		return "", err
	}
	if err = root.Rename(tmp, target); err != nil {
		return "", err
	}
	d, err := root.Open(dir)
	if err != nil {
		return "", err
	}
	defer d.Close()
	if err = d.Sync(); err != nil {
		return "", err
	}
	return filepath.Join(home, target), nil
}
