//go:build !unix

package certs

// lockDir is a no-op where flock is unavailable; atomic writes plus the
// key/cert match check still keep the directory recoverable.
func lockDir(dir string, exclusive bool) (unlock func(), err error) {
	return func() {}, nil
}
