//go:build !unix

package cpboot

import "context"

// lockFile is a no-op where flock is unavailable.
func lockFile(ctx context.Context, path string, onWait func()) (unlock func(), err error) {
	return func() {}, nil
}
