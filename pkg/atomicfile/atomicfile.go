// Package atomicfile replaces a file so that a reader, or a crash, sees the
// old contents or the new ones and never a part of either: a temporary file
// in the same directory (named ".<base>.tmp-*"), its mode set before any
// byte is written, fsynced, renamed over the target, and the directory
// fsynced so the rename itself is durable.
//
// pkg/certs keeps its own writer: its sweep of stale temporaries and its
// crash tests depend on its temporary names and hook.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write replaces path with data, mode perm. On any error the temporary file
// is removed and path is left as it was.
func Write(path string, data []byte, perm os.FileMode) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
			err = fmt.Errorf("writing %s: %w", path, err)
		}
	}()
	// Chmod is not subject to the umask, and before the write a key is
	// never readable by others, not even briefly.
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
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
