//go:build unix

package certs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

const lockName = ".lock"

// lockDir takes an advisory lock on dir/.lock: exclusive for writers so two
// `clawker` processes starting at once do not both mint a CA and interleave
// their files; shared for readers so Load never sees a half-rotated group.
// A reader in a directory nobody has written yet gets a no-op unlock.
func lockDir(dir string, exclusive bool) (unlock func(), err error) {
	path := filepath.Join(dir, lockName)
	var f *os.File
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, keyMode)
	} else {
		f, err = os.Open(path)
		if errors.Is(err, fs.ErrNotExist) {
			return func() {}, nil
		}
	}
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil // closing the fd releases the lock
}
