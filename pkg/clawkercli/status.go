package clawkercli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// StatusReport is `controlplane status --format json`.
type StatusReport struct {
	// Container is "running" when the CP answers on its health port,
	// "stopped" otherwise.
	Container string        `json:"container"`
	Healthz   *HealthReport `json:"healthz,omitempty"`
}

// HealthReport is the healthz part of a StatusReport.
type HealthReport struct {
	OK      bool                `json:"ok"`
	Status  string              `json:"status"`
	Failing []string            `json:"failing,omitempty"`
	Probes  []cpapi.ProbeResult `json:"probes,omitempty"`
}

func status(c *cli.Context, env Env) error {
	asJSON, err := checkFormat(c)
	if err != nil {
		return err
	}
	s, err := loadSettings(env)
	if err != nil {
		return err
	}
	rep := probeStatus(healthBase(s))
	if asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	writeStatus(env.Stdout, rep)
	return nil
}

// probeStatus asks /healthz. Any HTTP answer means the CP process is up;
// no answer at all means it is not.
func probeStatus(base string) StatusReport {
	resp, err := httpClient.Get(base + "/healthz")
	if err != nil {
		return StatusReport{Container: "stopped"}
	}
	defer resp.Body.Close()
	var h cpapi.Health
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return StatusReport{Container: "running", Healthz: &HealthReport{Status: "unreadable answer: " + err.Error()}}
	}
	return StatusReport{Container: "running", Healthz: &HealthReport{
		OK:      resp.StatusCode == http.StatusOK && h.Status == cpapi.StatusOK,
		Status:  h.Status,
		Failing: h.Failing,
		Probes:  h.Probes,
	}}
}

func writeStatus(w io.Writer, r StatusReport) {
	fmt.Fprintf(w, "Container: %s\n", r.Container)
	if r.Healthz == nil {
		return
	}
	switch {
	case r.Healthz.OK:
		fmt.Fprintln(w, "Healthz: ✓")
	case len(r.Healthz.Failing) > 0:
		fmt.Fprintf(w, "Healthz: ✗ (failing: %s)\n", strings.Join(r.Healthz.Failing, ", "))
	default:
		fmt.Fprintf(w, "Healthz: ✗ (%s)\n", r.Healthz.Status)
	}
}
