package cpboot

import (
	"crypto/sha256"
	"embed"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"sync"
)

// embedded holds the binaries `go tool task build` (or
// cptest.BuildClawkerWithCP) copied into embedded/ before building clawker.
// A checkout without them still compiles: the committed README.md is the
// only file then.
//
//go:embed all:embedded
var embedded embed.FS

// Names of the binaries the CLI carries.
const (
	// CPBinary is the control plane, PID 1 of the clawker-controlplane
	// container. A bundle without it cannot bring the control plane up.
	CPBinary = "clawker-cp"
	// AgentBinary is the in-agent daemon the CLI injects into agent
	// containers.
	AgentBinary = "clawkerd"
)

// binaryNames are the files of embedded/ that count as binaries; anything
// else there (the README) is neither hashed nor copied into the image.
var binaryNames = []string{CPBinary, AgentBinary}

// ErrNotEmbedded is returned when this clawker carries no clawker-cp.
var ErrNotEmbedded = errors.New("this clawker was built without the control plane; build it with `go tool task build`")

// Bundle is a set of binaries: the ones embedded in this clawker, or a
// directory of freshly built ones (tests). Contents are streamed from the
// underlying file system, never held in memory twice.
type Bundle struct {
	fsys  fs.FS
	names []string // sorted
	sizes map[string]int64

	hashOnce sync.Once
	hash     string
	hashErr  error
}

var embeddedBundle = sync.OnceValues(func() (*Bundle, error) {
	sub, err := fs.Sub(embedded, "embedded")
	if err != nil {
		return nil, err
	}
	return newBundle(sub)
})

// Embedded returns the binaries compiled into this clawker. It fails with
// ErrNotEmbedded when clawker-cp is not among them.
func Embedded() (*Bundle, error) { return embeddedBundle() }

// BundleFromDir reads the binaries (clawker-cp, clawkerd) in dir.
func BundleFromDir(dir string) (*Bundle, error) { return newBundle(os.DirFS(dir)) }

func newBundle(fsys fs.FS) (*Bundle, error) {
	b := &Bundle{fsys: fsys, sizes: map[string]int64{}}
	for _, name := range binaryNames {
		fi, err := fs.Stat(fsys, name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading the embedded %s: %w", name, err)
		}
		if !fi.Mode().IsRegular() || fi.Size() == 0 {
			return nil, fmt.Errorf("the embedded %s is not a binary (mode %s, %d bytes); rebuild clawker with `go tool task build`", name, fi.Mode(), fi.Size())
		}
		b.names = append(b.names, name)
		b.sizes[name] = fi.Size()
	}
	sort.Strings(b.names)
	if _, ok := b.sizes[CPBinary]; !ok {
		return nil, ErrNotEmbedded
	}
	return b, nil
}

// Names lists the binaries, sorted.
func (b *Bundle) Names() []string { return append([]string(nil), b.names...) }

// Has reports whether the bundle carries name.
func (b *Bundle) Has(name string) bool { _, ok := b.sizes[name]; return ok }

// Open opens one binary for reading.
func (b *Bundle) Open(name string) (fs.File, error) {
	if !b.Has(name) {
		return nil, fmt.Errorf("this clawker carries no %s", name)
	}
	return b.fsys.Open(name)
}

// Hash is the first 16 hex digits of the SHA-256 over every binary's name
// and content, in name order: the tag suffix of the control plane image
// (clawker-controlplane:bin-<hash>) and the dev.clawker.binhash label. It
// is computed on the first call (tens of milliseconds for the embedded
// binaries).
func (b *Bundle) Hash() (string, error) {
	b.hashOnce.Do(func() { b.hash, b.hashErr = b.computeHash() })
	return b.hash, b.hashErr
}

func (b *Bundle) computeHash() (string, error) {
	h := sha256.New()
	var n [8]byte
	for _, name := range b.names {
		// Length-prefixed fields, so no two different bundles can feed the
		// hash the same byte stream.
		binary.BigEndian.PutUint64(n[:], uint64(len(name)))
		h.Write(n[:])
		io.WriteString(h, name)
		binary.BigEndian.PutUint64(n[:], uint64(b.sizes[name]))
		h.Write(n[:])
		f, err := b.fsys.Open(name)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("hashing %s: %w", name, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}
