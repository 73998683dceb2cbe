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
	"strings"
	"sync"
)

// embedded holds the binaries `go tool task build` (or
// cptest.BuildClawkerWithCP) copied into embedded/ before building clawker:
// clawker-cp and clawkerd at its top, the Ory servers under embedded/ory/.
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

// OryDir is the directory of the Ory servers, inside the bundle (ory/hydra,
// ...) and in the control plane image (/ory/hydra, ...).
const OryDir = "ory"

// ContainerOryDir is where the image holds the Ory servers; clawker-cp is
// started with --ory-dir set to it when the bundle carries them.
const ContainerOryDir = "/" + OryDir

// OryNames are the Ory servers a bundle carries all of or none of.
var OryNames = []string{"hydra", "kratos", "oathkeeper"}

// binaryNames are the files of embedded/ that count as binaries (Ory's by
// their path, "ory/hydra"); anything else there (the README) is neither
// hashed nor copied into the image.
var binaryNames = []string{CPBinary, AgentBinary}

// OryPath is the path of an Ory server in a bundle: "ory/" + name.
func OryPath(name string) string { return OryDir + "/" + name }

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

// BundleFromDir reads the binaries in dir: clawker-cp, clawkerd and, when
// present, ory/{hydra,kratos,oathkeeper}.
func BundleFromDir(dir string) (*Bundle, error) { return newBundle(os.DirFS(dir)) }

// newBundle reads the binaries of fsys. The Ory servers are optional as a
// set: a bundle carries all three (and its control plane supervises them)
// or none (the control plane runs without Ory; bundles of fakes in tests),
// never some.
func newBundle(fsys fs.FS) (*Bundle, error) {
	b := &Bundle{fsys: fsys, sizes: map[string]int64{}}
	add := func(name string) (bool, error) {
		fi, err := fs.Stat(fsys, name)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("reading the embedded %s: %w", name, err)
		}
		if !fi.Mode().IsRegular() || fi.Size() == 0 {
			return false, fmt.Errorf("the embedded %s is not a binary (mode %s, %d bytes); rebuild clawker with `go tool task build`", name, fi.Mode(), fi.Size())
		}
		b.names = append(b.names, name)
		b.sizes[name] = fi.Size()
		return true, nil
	}
	for _, name := range binaryNames {
		if _, err := add(name); err != nil {
			return nil, err
		}
	}
	var have, missing []string
	for _, n := range OryNames {
		ok, err := add(OryPath(n))
		if err != nil {
			return nil, err
		}
		if ok {
			have = append(have, OryPath(n))
		} else {
			missing = append(missing, OryPath(n))
		}
	}
	if len(have) > 0 && len(missing) > 0 {
		return nil, fmt.Errorf("the embedded Ory servers are incomplete: %s present, %s missing; rebuild clawker with `go tool task build`",
			strings.Join(have, ", "), strings.Join(missing, ", "))
	}
	sort.Strings(b.names)
	if _, ok := b.sizes[CPBinary]; !ok {
		return nil, ErrNotEmbedded
	}
	return b, nil
}

// HasOry reports whether the bundle carries the Ory servers (all three).
func (b *Bundle) HasOry() bool { return b.Has(OryPath(OryNames[0])) }

// Names lists the binaries, sorted, by their path in the bundle
// ("clawker-cp", "ory/hydra").
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
// (its path in the bundle) and content, in name order: the tag suffix of
// the control plane image (clawker-controlplane:bin-<hash>) and the
// dev.clawker.binhash label. The Ory servers count like the others, so a
// new Ory build is a new image; a bundle without them hashes as bundles did
// before Ory existed. It is computed on the first call (a few hundred
// milliseconds for the embedded binaries, Ory included; the CLI caches it
// per executable, see hashcache.go).
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
