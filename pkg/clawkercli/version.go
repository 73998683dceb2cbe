package clawkercli

import (
	"errors"
	"fmt"
	"io"
	"runtime/debug"

	"github.com/clawker/clawker-cp/pkg/cpboot"
)

// Version is this clawker's release. cmd/clawker copies its main.version
// here, which a release build sets: go build -ldflags "-X main.version=v0.4.0".
var Version = "dev"

// Where --version and `controlplane status` get the commit and the hash of
// the embedded binaries; tests replace them (export_test.go), since a test
// binary has no VCS stamp and the embedded binaries depend on the last
// `go tool task build`.
var (
	buildCommit  = VCSCommit
	embeddedHash = func() (string, error) {
		b, err := cpboot.Embedded()
		if err != nil {
			return "", err
		}
		return b.Hash()
	}
)

// VCSCommit is the commit the running binary was built from, with
// "-dirty" when the work tree had changes; "" when the build carries no
// VCS stamp (go run, go test, -buildvcs=false).
func VCSCommit() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var rev, dirty string
	for _, s := range info.Settings {
		switch {
		case s.Key == "vcs.revision":
			rev = s.Value
		case s.Key == "vcs.modified" && s.Value == "true":
			dirty = "-dirty"
		}
	}
	if rev == "" {
		return ""
	}
	return rev + dirty
}

// writeVersion prints `clawker --version`:
//
//	clawker dev
//	commit: 45fb2a8c...
//	control plane image: clawker-controlplane:bin-0123456789abcdef
//
// The image is the one `controlplane up` runs: the hash of the binaries
// this clawker carries (hashing them takes a moment, so only --version
// and `controlplane status` do).
func writeVersion(w io.Writer) error {
	commit := buildCommit()
	if commit == "" {
		commit = "unknown (built without VCS information)"
	}
	image := "none: this clawker carries no control plane (build it with `go tool task build`)"
	hash, err := embeddedHash()
	switch {
	case err == nil:
		image = cpboot.ImageRef(hash)
	case !errors.Is(err, cpboot.ErrNotEmbedded):
		image = "unknown: " + err.Error()
	}
	_, err = fmt.Fprintf(w, "clawker %s\ncommit: %s\ncontrol plane image: %s\n", Version, commit, image)
	return err
}
