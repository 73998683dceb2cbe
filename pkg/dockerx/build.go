package dockerx

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/moby/moby/client"
)

// ImageBuilder is the part of the client BuildImage needs.
type ImageBuilder interface {
	ImageBuild(ctx context.Context, buildContext io.Reader, o client.ImageBuildOptions) (client.ImageBuildResult, error)
}

// BuildImage builds ref from the tar stream buildContext (a Dockerfile at
// its root; nothing is pulled when it is FROM scratch) and reads the
// daemon's answer to its end: a failed build reports its error in one of
// the streamed JSON messages, not in the HTTP status. It returns the
// build's output; an error carries its last lines.
func BuildImage(ctx context.Context, d ImageBuilder, buildContext io.Reader, ref string) (string, error) {
	res, err := d.ImageBuild(ctx, buildContext, client.ImageBuildOptions{
		Tags:        []string{ref},
		Dockerfile:  "Dockerfile",
		Remove:      true,
		ForceRemove: true,
		PullParent:  false,
	})
	if err != nil {
		return "", fmt.Errorf("building image %s: %w", ref, err)
	}
	defer res.Body.Close()
	var out bytes.Buffer
	dec := json.NewDecoder(res.Body)
	for {
		var m struct {
			Stream      string `json:"stream"`
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); err == io.EOF {
			return out.String(), nil
		} else if err != nil {
			return out.String(), fmt.Errorf("building image %s: reading the daemon's answer: %w", ref, err)
		}
		out.WriteString(m.Stream)
		msg := m.Error
		if msg == "" && m.ErrorDetail != nil {
			msg = m.ErrorDetail.Message
		}
		if msg != "" {
			return out.String(), fmt.Errorf("building image %s: %s\n%s", ref, msg, LastLines(out.String(), 10))
		}
	}
}

// LastLines is the last n lines of s.
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
