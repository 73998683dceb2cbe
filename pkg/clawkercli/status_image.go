package clawkercli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"github.com/clawker/clawker-cp/pkg/cpboot"
)

// `controlplane status` with the running control plane's image: the
// report of status.go plus an image part, so that a control plane left
// running by an older clawker is visible before it misbehaves.

// ImageReport is the image part of `controlplane status --format json`.
type ImageReport struct {
	// Running is the running container's binaries hash (its
	// dev.clawker.binhash label): its image is clawker-controlplane:bin-<running>.
	Running string `json:"running"`
	// CLI is the hash of the binaries this clawker carries, "" when it
	// carries none (or they could not be read).
	CLI string `json:"cli"`
	// Current: the control plane runs the binaries this clawker carries.
	Current bool `json:"current"`
}

// statusImageReport is StatusReport with the image part after its fields.
type statusImageReport struct {
	StatusReport
	Image *ImageReport `json:"image,omitempty"`
}

// statusWithImage runs status.go's status and adds the image part: a line
// after its text, or a field after its JSON's (which is decoded and written
// again, so that status stays the one place the rest is built).
func statusWithImage(c *cli.Context, env Env) error {
	v, err := prologue(c, env, needs{format: true, settings: true})
	if err != nil {
		return err
	}
	defer v.release()
	var buf bytes.Buffer
	out := env.Stdout
	if v.asJSON {
		out = &buf
	}
	if err := status(c.Context, v, out); err != nil {
		return err
	}
	d, err := v.docker()
	if err != nil {
		return err
	}
	img := imageReport(c.Context, d)
	if !v.asJSON {
		writeImage(env.Stdout, img)
		return nil
	}
	var rep StatusReport
	if err := json.Unmarshal(buf.Bytes(), &rep); err != nil {
		return fmt.Errorf("controlplane status: %w", err)
	}
	return writeJSON(env.Stdout, statusImageReport{StatusReport: rep, Image: img})
}

// imageReport compares the running container's binaries with this
// clawker's; nil when the container carries no binhash label (not made by
// cpboot) or cannot be inspected (status already said what it could).
func imageReport(ctx context.Context, d cpboot.Docker) *ImageReport {
	st, err := cpboot.Inspect(ctx, d)
	// As collectStatus: a container waiting for its restart runs nothing.
	if err != nil || !st.Running || st.Restarting || st.BinHash == "" {
		return nil
	}
	r := &ImageReport{Running: st.BinHash}
	if h, err := embeddedHash(); err == nil {
		r.CLI, r.Current = h, h == st.BinHash
	}
	return r
}

func writeImage(w io.Writer, r *ImageReport) {
	switch {
	case r == nil:
	case r.Current:
		fmt.Fprintf(w, "CP image: bin-%s (the one this clawker carries)\n", r.Running)
	case r.CLI == "":
		fmt.Fprintf(w, "CP image: bin-%s (this clawker carries no control plane to compare)\n", r.Running)
	default:
		fmt.Fprintf(w, "CP image: bin-%s (this clawker carries bin-%s: run `clawker controlplane up` to replace it)\n", r.Running, r.CLI)
	}
}
