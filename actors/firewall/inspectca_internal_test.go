package firewall

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/stackapi"
)

// labelDocker answers ContainerInspect with each container's labels, or
// its error.
type labelDocker struct {
	labels map[string]map[string]string
	errs   map[string]error
}

func (d labelDocker) ContainerInspect(_ context.Context, id string, _ client.ContainerInspectOptions) (client.ContainerInspectResult, error) {
	if err := d.errs[id]; err != nil {
		return client.ContainerInspectResult{}, err
	}
	return client.ContainerInspectResult{Container: container.InspectResponse{ID: id, Config: &container.Config{Labels: d.labels[id]}}}, nil
}

func TestStillTrustingOld(t *testing.T) {
	const fp = "new"
	d := labelDocker{
		labels: map[string]map[string]string{
			"current": {dockerx.LabelFirewallCA: fp},
			"old":     {dockerx.LabelFirewallCA: "old"},
			"none":    {},
		},
		errs: map[string]error{
			"gone":    cerrdefs.ErrNotFound.WithMessage("No such container"),
			"unknown": errors.New("daemon hiccup"),
		},
	}
	running := []cpapi.ContainerView{
		{ID: "old", Project: "p", Agent: "old"},
		{ID: "current", Project: "p", Agent: "current"},
		{ID: "none", Project: "a", Agent: "nolabel"},
		{ID: "gone", Project: "p", Agent: "gone"},
		{ID: "unknown", Project: "p", Agent: "unknown"},
	}
	got := stillTrustingOld(d, running, fp, time.Second, zap.NewNop())
	if want := []string{"a/nolabel", "p/old", "p/unknown"}; !reflect.DeepEqual(got, want) {
		t.Errorf("still trusting the old CA: %v, want %v", got, want)
	}
	if got := stillTrustingOld(nil, running, fp, time.Second, zap.NewNop()); len(got) != len(running) {
		t.Errorf("without Docker: %v, want every running agent", got)
	}
	if got := stillTrustingOld(d, nil, fp, time.Second, zap.NewNop()); got == nil || len(got) != 0 {
		t.Errorf("no agents: %#v, want an empty list", got)
	}
}

// Without Config.InspectCA the CA goes to the stack service the siblings
// fetch it from, fingerprint for fingerprint.
func TestPublishInspectCAToTheStackService(t *testing.T) {
	srv := stackapi.NewServer(nil)
	a := &Actor{cfg: Config{Stack: &StackConfig{Server: srv}}}
	ca, _, err := certs.EnsureFirewallCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a.publishInspectCA(ca)
	if got := srv.InspectCAFingerprint(); got != ca.Fingerprint {
		t.Errorf("the stack service serves CA %q, want %s", got, ca.Fingerprint)
	}
}
