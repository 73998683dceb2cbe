package certs

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// File and directory modes. Keys are owner-only; certificates and the JWKS
// are public by nature, so 0644 lets a CP container running as another uid
// read them.
const (
	dirMode  os.FileMode = 0o700
	keyMode  os.FileMode = 0o600
	certMode os.FileMode = 0o644
)

// tmpInfix marks our temp files so a later run can sweep the leftovers of a
// crash (a killed process cannot run its deferred cleanup).
const tmpInfix = ".tmp-"

// testHookBeforeRename, when set by tests, runs after the temp file has been
// fully written and synced but before it replaces the target, to simulate a
// failure at the worst possible moment.
var testHookBeforeRename func(tmpPath string) error

// writeFileAtomic replaces path with data so that readers (and a crash) see
// either the old contents or the new ones, never a mix. On any error the temp
// file is removed and the previous file is left untouched.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+tmpInfix+"*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close() // may already be closed; the error is irrelevant then
			os.Remove(tmp)
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	// Chmod before writing so a key is never readable by others, even
	// briefly. Chmod is not subject to the umask, so the mode is exact.
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if testHookBeforeRename != nil {
		if err = testHookBeforeRename(tmp); err != nil {
			return err
		}
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	// The rename is only durable once the directory entry is on disk.
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ensureDir creates dir (and parents) and forces it to 0700: the auth dir
// holds private keys, so a pre-existing looser mode is tightened, not kept.
func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return err
	}
	return os.Chmod(dir, dirMode)
}

// removeStaleTemps deletes temp files left by a crashed writer. Callers hold
// the exclusive lock, so no live writer owns them.
func removeStaleTemps(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if n := e.Name(); strings.HasPrefix(n, ".") && strings.Contains(n, tmpInfix) && e.Type().IsRegular() {
			if err := os.Remove(filepath.Join(dir, n)); err != nil && !os.IsNotExist(err) {
				return err
			}
		}
	}
	return nil
}
