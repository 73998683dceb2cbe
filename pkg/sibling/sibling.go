// Package sibling brings up one firewall sibling container (the DNS server
// or the egress proxy) through the Docker API: an image built FROM scratch
// from one static binary the control plane carries (nothing is pulled),
// tagged by the binary's content, and a container at a fixed address on the
// agent network that holds no capability, runs as nobody on a read-only
// root filesystem and is replaced whenever its spec changes.
//
// This package never imports actors/.
package sibling

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// Labels on sibling images and containers (besides managed and purpose).
const (
	// LabelSpecHash is the hash of everything the container was created
	// from; a container with another hash is replaced.
	LabelSpecHash = "dev.clawker.spec-hash"
	// LabelNetwork is the agent network a sibling serves, so the control
	// plane of one network never touches another's stack.
	LabelNetwork = "dev.clawker.network"
	// LabelRole is "dns" or "proxy".
	LabelRole = "dev.clawker.stack-role"
	// PurposeFirewall is the purpose label of the siblings.
	PurposeFirewall = "firewall"
)

// uid and gid the siblings run as: nobody.
const nobody = "65534:65534"

// Spec is one sibling container.
type Spec struct {
	Role    string // "dns" or "proxy"
	Name    string // container name
	Repo    string // image repository; the tag is bin-<hash of Binary>
	Binary  string // path of the static binary to put in the image
	Network string
	IP      netip.Addr
	Args    []string // after the binary
	// Env is passed as is. SecretEnv is passed too but left out of the
	// spec hash (fresh key material on every creation must not force a
	// replacement by itself); put a fingerprint of its issuer in HashExtra.
	Env, SecretEnv []string
	HashExtra      string
	Labels         map[string]string // extra labels (tests)
	// Files are copied into the image besides the binary: image path ->
	// host path (the proxy's CA bundle). A host file that does not exist
	// is left out; the binary must cope. Their content is part of the
	// image tag, so a changed file makes a new image.
	Files map[string]string
}

// Docker is what this package needs of the Docker API client.
type Docker interface {
	ContainerInspect(ctx context.Context, id string, o client.ContainerInspectOptions) (client.ContainerInspectResult, error)
	ContainerCreate(ctx context.Context, o client.ContainerCreateOptions) (client.ContainerCreateResult, error)
	ContainerStart(ctx context.Context, id string, o client.ContainerStartOptions) (client.ContainerStartResult, error)
	ContainerRemove(ctx context.Context, id string, o client.ContainerRemoveOptions) (client.ContainerRemoveResult, error)
	ContainerLogs(ctx context.Context, id string, o client.ContainerLogsOptions) (client.ContainerLogsResult, error)
	ImageInspect(ctx context.Context, ref string, o ...client.ImageInspectOption) (client.ImageInspectResult, error)
	ImageBuild(ctx context.Context, buildContext io.Reader, o client.ImageBuildOptions) (client.ImageBuildResult, error)
}

var _ Docker = (*client.Client)(nil)

const (
	callTimeout  = 30 * time.Second
	buildTimeout = 3 * time.Minute
)

// BinaryHash is the first 12 hex digits of the SHA-256 of the file.
func BinaryHash(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("firewall sibling binary: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

// ImageRef is the image the spec's binary (and Files) make.
func (sp Spec) ImageRef() (string, error) {
	h, err := BinaryHash(sp.Binary)
	if err != nil {
		return "", err
	}
	if files := sp.presentFiles(); len(files) > 0 {
		sum := sha256.New()
		sum.Write([]byte(h))
		for _, f := range files {
			b, err := os.ReadFile(f.host)
			if err != nil {
				return "", fmt.Errorf("firewall sibling file %s: %w", f.host, err)
			}
			fmt.Fprintf(sum, "\n%s %d\n", f.image, len(b))
			sum.Write(b)
		}
		h = hex.EncodeToString(sum.Sum(nil))[:12]
	}
	return sp.Repo + ":bin-" + h, nil
}

type imageFile struct{ image, host string }

// presentFiles are the Files whose host file exists, by image path.
func (sp Spec) presentFiles() []imageFile {
	var out []imageFile
	for img, host := range sp.Files {
		if fi, err := os.Stat(host); err == nil && fi.Mode().IsRegular() {
			out = append(out, imageFile{img, host})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].image < out[j].image })
	return out
}

// hash covers everything a running container was made from.
func (sp Spec) hash(image string) string {
	h := sha256.New()
	args, _ := json.Marshal(sp.Args)
	env, _ := json.Marshal(sp.Env)
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n%s\n%s\n%d\n", image, sp.Network, sp.IP, args, env, sp.HashExtra, len(sp.SecretEnv))
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func (sp Spec) labels() map[string]string {
	l := map[string]string{
		dockerx.LabelManaged: "true",
		dockerx.LabelPurpose: PurposeFirewall,
		LabelRole:            sp.Role,
		LabelNetwork:         sp.Network,
	}
	for k, v := range sp.Labels {
		l[k] = v
	}
	return l
}

// Outcome says what Ensure did.
type Outcome struct {
	ID         string
	Image      string
	ImageBuilt bool
	// Adopted: a running container of the same spec was kept (its
	// connections survive a control plane restart).
	Adopted bool
	// Replaced: a container of that name with another spec, or not
	// running, was removed first.
	Replaced bool
}

// Ensure makes the sibling run as specified: builds the image if its tag
// is missing, keeps a running container whose spec hash matches, and
// otherwise removes whatever holds the name and creates and starts a new
// one.
func Ensure(ctx context.Context, d Docker, sp Spec) (Outcome, error) {
	var out Outcome
	image, err := sp.ImageRef()
	if err != nil {
		return out, err
	}
	out.Image = image
	built, err := ensureImage(ctx, d, sp, image)
	if err != nil {
		return out, err
	}
	out.ImageBuilt = built
	hash := sp.hash(image)

	cur, err := inspect(ctx, d, sp.Name)
	if err != nil {
		return out, err
	}
	if cur != nil {
		if cur.running && cur.spec == hash {
			out.ID, out.Adopted = cur.id, true
			return out, nil
		}
		if cur.purpose != PurposeFirewall {
			return out, fmt.Errorf("a container named %s exists and was not made by clawker's control plane (purpose %q); remove or rename it", sp.Name, cur.purpose)
		}
		if err := Remove(ctx, d, sp.Name); err != nil {
			return out, err
		}
		out.Replaced = true
	}
	id, err := create(ctx, d, sp, image, hash)
	if err != nil {
		return out, err
	}
	out.ID = id
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if _, err := d.ContainerStart(cctx, id, client.ContainerStartOptions{}); err != nil {
		return out, fmt.Errorf("starting %s at %s: %w", sp.Name, sp.IP, err)
	}
	return out, nil
}

type containerState struct {
	id, spec, purpose string
	running           bool
	exitCode          int
}

func inspect(ctx context.Context, d Docker, name string) (*containerState, error) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	res, err := d.ContainerInspect(cctx, name, client.ContainerInspectOptions{})
	if cerrdefs.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("inspecting %s: %w", name, err)
	}
	c := res.Container
	st := &containerState{id: c.ID}
	if c.State != nil {
		st.running = c.State.Running && !c.State.Restarting
		st.exitCode = c.State.ExitCode
	}
	if c.Config != nil {
		st.spec = c.Config.Labels[LabelSpecHash]
		st.purpose = c.Config.Labels[dockerx.LabelPurpose]
	}
	return st, nil
}

// Running reports whether the named container runs, and its id.
func Running(ctx context.Context, d Docker, name string) (string, bool, error) {
	st, err := inspect(ctx, d, name)
	if err != nil || st == nil {
		return "", false, err
	}
	return st.id, st.running, nil
}

// Remove force-removes the named container; a missing one is not an
// error.
func Remove(ctx context.Context, d Docker, name string) error {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	_, err := d.ContainerRemove(cctx, name, client.ContainerRemoveOptions{Force: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("removing %s: %w", name, err)
	}
	return nil
}

// LogTail is the last n lines the container wrote, for error messages.
func LogTail(ctx context.Context, d Docker, name string, n int) string {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rc, err := d.ContainerLogs(cctx, name, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(n)})
	if err != nil {
		return ""
	}
	defer rc.Close()
	var out strings.Builder
	_, _ = stdcopy.StdCopy(&out, &out, rc)
	return strings.TrimRight(out.String(), "\n")
}

func create(ctx context.Context, d Docker, sp Spec, image, hash string) (string, error) {
	labels := sp.labels()
	labels[LabelSpecHash] = hash
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	res, err := d.ContainerCreate(cctx, client.ContainerCreateOptions{
		Name: sp.Name,
		Config: &container.Config{
			Image:  image,
			Cmd:    sp.Args,
			Env:    append(append([]string(nil), sp.Env...), sp.SecretEnv...),
			User:   nobody,
			Labels: labels,
		},
		HostConfig: &container.HostConfig{
			NetworkMode: container.NetworkMode(sp.Network),
			// No capability at all: port 53 is bindable by nobody through
			// the namespaced sysctl below, which affects only this
			// container's network namespace.
			CapDrop:        []string{"ALL"},
			Sysctls:        map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"},
			ReadonlyRootfs: true,
			SecurityOpt:    []string{"no-new-privileges:true"},
			// The control plane recreates a dead sibling; a restart policy
			// would race it.
			RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyDisabled},
			LogConfig:     container.LogConfig{Type: "json-file", Config: map[string]string{"max-size": "10m", "max-file": "2"}},
		},
		NetworkingConfig: &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
			sp.Network: {IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: sp.IP}},
		}},
	})
	if err != nil {
		return "", fmt.Errorf("creating %s at %s: %w", sp.Name, sp.IP, err)
	}
	return res.ID, nil
}

func ensureImage(ctx context.Context, d Docker, sp Spec, ref string) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	_, err := d.ImageInspect(cctx, ref)
	cancel()
	if err == nil {
		return false, nil
	}
	if !cerrdefs.IsNotFound(err) {
		return false, fmt.Errorf("inspecting image %s: %w", ref, err)
	}
	return true, buildImage(ctx, d, sp, ref)
}

// dockerfile: the binary at /<name>, the Files (file<i> in the context),
// nobody, and its entrypoint. Nothing else is in the image: no shell, no
// libc.
func dockerfile(sp Spec, bin string, files []imageFile) string {
	// Not the container's labels: one image serves every network's stack.
	labels := map[string]string{dockerx.LabelManaged: "true", dockerx.LabelPurpose: PurposeFirewall}
	for k, v := range sp.Labels {
		labels[k] = v
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var s strings.Builder
	s.WriteString("FROM scratch\nCOPY " + bin + " /" + bin + "\n")
	for i, f := range files {
		fmt.Fprintf(&s, "COPY file%d %s\n", i, f.image)
	}
	s.WriteString("LABEL")
	for _, k := range keys {
		fmt.Fprintf(&s, " %s=%q", k, labels[k])
	}
	s.WriteString("\nUSER " + nobody + "\n")
	fmt.Fprintf(&s, "ENTRYPOINT [\"/%s\"]\n", bin)
	return s.String()
}

func buildImage(ctx context.Context, d Docker, sp Spec, ref string) error {
	bin := filepath.Base(sp.Binary)
	f, err := os.Open(sp.Binary)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		files := sp.presentFiles()
		df := []byte(dockerfile(sp, bin, files))
		epoch := time.Unix(0, 0)
		err := tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(df)), ModTime: epoch, Typeflag: tar.TypeReg})
		if err == nil {
			_, err = tw.Write(df)
		}
		if err == nil {
			err = tw.WriteHeader(&tar.Header{Name: bin, Mode: 0o755, Size: fi.Size(), ModTime: epoch, Typeflag: tar.TypeReg})
		}
		if err == nil {
			_, err = io.Copy(tw, f)
		}
		for i, file := range files {
			if err != nil {
				break
			}
			var b []byte
			if b, err = os.ReadFile(file.host); err == nil {
				if err = tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("file%d", i), Mode: 0o644, Size: int64(len(b)), ModTime: epoch, Typeflag: tar.TypeReg}); err == nil {
					_, err = tw.Write(b)
				}
			}
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	defer pr.Close()
	bctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	_, err = dockerx.BuildImage(bctx, d, pr, ref)
	return err
}
