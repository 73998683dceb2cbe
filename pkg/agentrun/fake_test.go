package agentrun

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/image"
	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cpboot"
)

// fakeImage is an image the fake daemon knows: its config and the files
// CopyFromContainer finds in containers made from it.
type fakeImage struct {
	Entrypoint, Cmd []string
	User            string
	Files           map[string]string
}

// tarEntry is one entry CopyToContainer received.
type tarEntry struct {
	Header tar.Header
	Body   []byte
}

type fakeContainer struct {
	ID      string
	Name    string
	Image   string
	Opts    client.ContainerCreateOptions
	Copied  []tarEntry
	CopyDst string
	Running bool
	Started bool
}

// fakeDocker is an in-memory daemon for agentrun's calls. Errors set in
// the *Err fields are returned by the matching call.
type fakeDocker struct {
	mu         sync.Mutex
	images     map[string]fakeImage
	containers map[string]*fakeContainer // by id
	removed    []string                  // ids
	removeOpts []client.ContainerRemoveOptions
	calls      []string

	createErr, copyErr, startErr, removeErr, inspectErr error
	// labels overrides the labels inspect reports (Remove tests).
	labels map[string]string
}

func newFake() *fakeDocker {
	return &fakeDocker{images: map[string]fakeImage{}, containers: map[string]*fakeContainer{}}
}

func (f *fakeDocker) call(name string) {
	f.mu.Lock()
	f.calls = append(f.calls, name)
	f.mu.Unlock()
}

func (f *fakeDocker) byName(name string) *fakeContainer {
	for _, c := range f.containers {
		if c.Name == name || c.ID == name {
			return c
		}
	}
	return nil
}

func (f *fakeDocker) ImageInspect(_ context.Context, ref string, _ ...client.ImageInspectOption) (client.ImageInspectResult, error) {
	f.call("ImageInspect")
	img, ok := f.images[ref]
	if !ok {
		return client.ImageInspectResult{}, cerrdefs.ErrNotFound.WithMessage("No such image: " + ref)
	}
	// Through JSON: the config type lives in a module this one does not
	// require directly.
	b, _ := json.Marshal(map[string]any{"Id": "sha256:" + ref, "Config": map[string]any{"Entrypoint": img.Entrypoint, "Cmd": img.Cmd, "User": img.User}})
	var res image.InspectResponse
	if err := json.Unmarshal(b, &res); err != nil {
		return client.ImageInspectResult{}, err
	}
	return client.ImageInspectResult{InspectResponse: res}, nil
}

func (f *fakeDocker) ContainerCreate(_ context.Context, o client.ContainerCreateOptions) (client.ContainerCreateResult, error) {
	f.call("ContainerCreate")
	if f.createErr != nil {
		return client.ContainerCreateResult{}, f.createErr
	}
	if f.byName(o.Name) != nil {
		return client.ContainerCreateResult{}, cerrdefs.ErrConflict.WithMessage(`Conflict. The container name "/` + o.Name + `" is already in use`)
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	c := &fakeContainer{ID: hex.EncodeToString(b), Name: o.Name, Image: o.Config.Image, Opts: o}
	f.containers[c.ID] = c
	return client.ContainerCreateResult{ID: c.ID}, nil
}

func (f *fakeDocker) CopyFromContainer(_ context.Context, id string, o client.CopyFromContainerOptions) (client.CopyFromContainerResult, error) {
	f.call("CopyFromContainer " + o.SourcePath)
	c := f.containers[id]
	if c == nil {
		return client.CopyFromContainerResult{}, cerrdefs.ErrNotFound.WithMessage("No such container: " + id)
	}
	body, ok := f.images[c.Image].Files[o.SourcePath]
	if !ok {
		return client.CopyFromContainerResult{}, cerrdefs.ErrNotFound.WithMessage("Could not find the file " + o.SourcePath)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = tw.WriteHeader(&tar.Header{Name: filepath.Base(o.SourcePath), Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
	_, _ = tw.Write([]byte(body))
	_ = tw.Close()
	return client.CopyFromContainerResult{Content: io.NopCloser(&buf)}, nil
}

func (f *fakeDocker) CopyToContainer(_ context.Context, id string, o client.CopyToContainerOptions) (client.CopyToContainerResult, error) {
	f.call("CopyToContainer")
	c := f.containers[id]
	if c == nil {
		return client.CopyToContainerResult{}, cerrdefs.ErrNotFound.WithMessage("No such container: " + id)
	}
	// Read it all, as the daemon would, even when failing afterwards.
	tr := tar.NewReader(o.Content)
	var got []tarEntry
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return client.CopyToContainerResult{}, err
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			return client.CopyToContainerResult{}, err
		}
		got = append(got, tarEntry{Header: *h, Body: body})
	}
	if f.copyErr != nil {
		return client.CopyToContainerResult{}, f.copyErr
	}
	c.Copied, c.CopyDst = got, o.DestinationPath
	return client.CopyToContainerResult{}, nil
}

func (f *fakeDocker) ContainerStart(_ context.Context, id string, _ client.ContainerStartOptions) (client.ContainerStartResult, error) {
	f.call("ContainerStart")
	if f.startErr != nil {
		return client.ContainerStartResult{}, f.startErr
	}
	c := f.containers[id]
	if c == nil {
		return client.ContainerStartResult{}, cerrdefs.ErrNotFound.WithMessage("No such container: " + id)
	}
	c.Running, c.Started = true, true
	return client.ContainerStartResult{}, nil
}

func (f *fakeDocker) ContainerRemove(_ context.Context, id string, o client.ContainerRemoveOptions) (client.ContainerRemoveResult, error) {
	f.call("ContainerRemove")
	if f.removeErr != nil {
		return client.ContainerRemoveResult{}, f.removeErr
	}
	c := f.byName(id)
	if c == nil {
		return client.ContainerRemoveResult{}, cerrdefs.ErrNotFound.WithMessage("No such container: " + id)
	}
	if c.Running && !o.Force {
		return client.ContainerRemoveResult{}, cerrdefs.ErrConflict.WithMessage("You cannot remove a running container")
	}
	delete(f.containers, c.ID)
	f.removed = append(f.removed, c.ID)
	f.removeOpts = append(f.removeOpts, o)
	return client.ContainerRemoveResult{}, nil
}

func (f *fakeDocker) ContainerInspect(_ context.Context, id string, _ client.ContainerInspectOptions) (client.ContainerInspectResult, error) {
	f.call("ContainerInspect")
	if f.inspectErr != nil {
		return client.ContainerInspectResult{}, f.inspectErr
	}
	c := f.byName(id)
	if c == nil {
		return client.ContainerInspectResult{}, cerrdefs.ErrNotFound.WithMessage("No such container: " + id)
	}
	labels := c.Opts.Config.Labels
	if f.labels != nil {
		labels = f.labels
	}
	st := &container.State{Status: container.StateCreated}
	if c.Running {
		st = &container.State{Status: container.StateRunning, Running: true}
	} else if c.Started {
		st = &container.State{Status: container.StateExited}
	}
	return client.ContainerInspectResult{Container: container.InspectResponse{
		ID: c.ID, Name: "/" + c.Name, State: st, Config: &container.Config{Labels: labels},
	}}, nil
}

// testAuth is fresh host auth material.
func testAuth(t *testing.T) *certs.Material {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "auth")
	if _, err := certs.Ensure(dir, certs.Options{}); err != nil {
		t.Fatal(err)
	}
	m, err := certs.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// testBundle is a bundle whose clawkerd is the given bytes.
func testBundle(t *testing.T, clawkerd string) *cpboot.Bundle {
	t.Helper()
	dir := t.TempDir()
	for name, body := range map[string]string{cpboot.CPBinary: "cp", cpboot.AgentBinary: clawkerd} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := cpboot.BundleFromDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
