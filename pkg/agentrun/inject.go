package agentrun

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// binary is clawkerd as the bundle holds it.
type binary struct {
	open func() (fs.File, error)
	size int64
}

// clawkerd finds clawkerd in b (nil: the embedded binaries) and checks it
// can be read, before any container exists.
func clawkerd(b *cpboot.Bundle) (binary, error) {
	if b == nil {
		var err error
		if b, err = cpboot.Embedded(); err != nil {
			return binary{}, err
		}
	}
	if !b.Has(cpboot.AgentBinary) {
		return binary{}, fmt.Errorf("this clawker carries no %s; build it with `go tool task build`", cpboot.AgentBinary)
	}
	f, err := b.Open(cpboot.AgentBinary)
	if err != nil {
		return binary{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return binary{}, fmt.Errorf("reading the embedded %s: %w", cpboot.AgentBinary, err)
	}
	return binary{open: func() (fs.File, error) { return b.Open(cpboot.AgentBinary) }, size: fi.Size()}, nil
}

// owner is the numeric owner of the injected files.
type owner struct{ UID, GID int }

func (o owner) String() string { return strconv.Itoa(o.UID) + ":" + strconv.Itoa(o.GID) }

// maxIDFile bounds what is read of the container's /etc/passwd or
// /etc/group.
const maxIDFile = 1 << 20

// resolveOwner is the uid:gid the container's processes run as, given the
// image's User ("", "uid", "uid:gid", "name", "name:group", ...), resolved
// as Docker resolves it: names through the container's own /etc/passwd and
// /etc/group (read from the created container, not the host's); a numeric
// uid without a group takes its passwd entry's group if it has one, else 0.
// A name that does not resolve is an error: the container would not start.
func resolveOwner(ctx context.Context, d Docker, id, user string) (owner, error) {
	return parseOwner(user, func(file string) ([]byte, error) { return readContainerFile(ctx, d, id, file) })
}

// parseOwner is resolveOwner with the files read by read (which returns
// nil, nil for a file that does not exist).
func parseOwner(user string, read func(file string) ([]byte, error)) (owner, error) {
	if user == "" {
		return owner{}, nil
	}
	u, g, hasGroup := strings.Cut(user, ":")
	var o owner
	uidNumeric := false
	if n, err := strconv.Atoi(u); err == nil && n >= 0 {
		o.UID, uidNumeric = n, true
	}
	var passwdGID = -1
	if !uidNumeric || !hasGroup {
		passwd, err := read("/etc/passwd")
		if err != nil {
			return owner{}, fmt.Errorf("resolving the image's user %q: reading /etc/passwd: %w", user, err)
		}
		uid, gid, found := lookupPasswd(passwd, u, uidNumeric)
		switch {
		case found:
			o.UID, passwdGID = uid, gid
		case !uidNumeric:
			return owner{}, fmt.Errorf("the image's user %q is not in the image's /etc/passwd", u)
		}
	}
	switch {
	case !hasGroup:
		o.GID = max(passwdGID, 0)
	case g == "":
		return owner{}, fmt.Errorf("the image's user %q has an empty group", user)
	default:
		if n, err := strconv.Atoi(g); err == nil && n >= 0 {
			o.GID = n
			break
		}
		group, err := read("/etc/group")
		if err != nil {
			return owner{}, fmt.Errorf("resolving the image's group %q: reading /etc/group: %w", g, err)
		}
		gid, found := lookupGroup(group, g)
		if !found {
			return owner{}, fmt.Errorf("the image's group %q is not in the image's /etc/group", g)
		}
		o.GID = gid
	}
	return o, nil
}

// lookupPasswd finds a user by name, or by uid when byUID, in passwd
// content (name:pw:uid:gid:...).
func lookupPasswd(passwd []byte, user string, byUID bool) (uid, gid int, found bool) {
	sc := bufio.NewScanner(bytes.NewReader(passwd))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 4 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if (byUID && f[2] != user) || (!byUID && f[0] != user) {
			continue
		}
		u, err1 := strconv.Atoi(f[2])
		g, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil || u < 0 || g < 0 {
			continue
		}
		return u, g, true
	}
	return 0, 0, false
}

// lookupGroup finds a group by name in group content (name:pw:gid:...).
func lookupGroup(group []byte, name string) (gid int, found bool) {
	sc := bufio.NewScanner(bytes.NewReader(group))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 3 || f[0] != name {
			continue
		}
		if g, err := strconv.Atoi(f[2]); err == nil && g >= 0 {
			return g, true
		}
	}
	return 0, false
}

// readContainerFile reads a small regular file of a created container;
// nil, nil when it does not exist (a FROM scratch image has no /etc).
func readContainerFile(ctx context.Context, d Docker, id, file string) ([]byte, error) {
	return dockerx.Call(ctx, callTimeout, func(ctx context.Context) ([]byte, error) {
		res, err := d.CopyFromContainer(ctx, id, client.CopyFromContainerOptions{SourcePath: file})
		if cerrdefs.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		defer res.Content.Close()
		tr := tar.NewReader(res.Content)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				return nil, nil
			}
			if err != nil {
				return nil, err
			}
			if h.Typeflag != tar.TypeReg {
				continue // a symlink's target is not followed: treat as absent
			}
			b, err := io.ReadAll(io.LimitReader(tr, maxIDFile+1))
			if err != nil {
				return nil, err
			}
			if len(b) > maxIDFile {
				return nil, fmt.Errorf("%s is larger than %d bytes", file, maxIDFile)
			}
			return b, nil
		}
	})
}

// file is one small file to inject.
type file struct {
	path string
	body []byte
}

// writeTar writes the archive extracted at the container's /: the
// directory, clawkerd, then the small files, all owned by own.
func writeTar(w io.Writer, own owner, now time.Time, bin binary, files []file) error {
	tw := tar.NewWriter(w)
	rel := func(p string) string { return strings.TrimPrefix(p, "/") }
	hdr := func(name string, mode int64, size int64, typ byte) *tar.Header {
		return &tar.Header{Name: name, Mode: mode, Size: size, Typeflag: typ, Uid: own.UID, Gid: own.GID, ModTime: now, Format: tar.FormatPAX}
	}
	if err := tw.WriteHeader(hdr(rel(Dir)+"/", dirMode, 0, tar.TypeDir)); err != nil {
		return err
	}
	f, err := bin.open()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(hdr(rel(ClawkerdPath), binMode, bin.size, tar.TypeReg)); err != nil {
		f.Close()
		return err
	}
	n, err := io.Copy(tw, f)
	f.Close()
	if err != nil {
		return fmt.Errorf("copying %s: %w", cpboot.AgentBinary, err)
	}
	if n != bin.size {
		return fmt.Errorf("copying %s: read %d bytes, expected %d", cpboot.AgentBinary, n, bin.size)
	}
	for _, f := range files {
		if path.Dir(f.path) != Dir {
			return fmt.Errorf("%s is not in %s", f.path, Dir)
		}
		if err := tw.WriteHeader(hdr(rel(f.path), fileMode, int64(len(f.body)), tar.TypeReg)); err != nil {
			return err
		}
		if _, err := tw.Write(f.body); err != nil {
			return err
		}
	}
	return tw.Close()
}

func parseCertPEM(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	return x509.ParseCertificate(blk.Bytes)
}
