package firewall

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/actors/request"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// The firewall CA, from which the proxy mints the leaves it presents for
// the names it inspects (rules with path rules). It lives in the rules
// store's directory (Config.RulesDir, the host's firewall dir mounted into
// the CP), beside the rules, and the host's `clawker run` puts its
// certificate into every agent. The firewall reads it at start and hands
// it to the stack service (which serves it to the proxy only); it makes it
// when a published rule set first needs it, and replaces it on RotateCA.
//
// Disk work runs on the mailbox, synchronously: two files of a few hundred
// bytes under a flock, and for a new CA one P-256 key, a few milliseconds
// at most, which the mailbox affords like the rule store's I/O.

// inspectCAState is the actor's part that owns the firewall CA.
type inspectCAState struct {
	ca *certs.FirewallCA // published to the stack service; nil: none yet
}

// RotateCA replaces the firewall CA (FirewallRotateCA). It is answered
// with *RotateCAResult.
type RotateCA struct{}

// RotateCAResult answers RotateCA.
type RotateCAResult struct {
	Fingerprint         string // hex SHA-256 of the new CA's DER
	PreviousFingerprint string // of the CA replaced; empty when there was none
	// StillTrustingOld are the running agents, "project/agent", sorted,
	// whose container trusts another CA than the new one (its
	// dockerx.LabelFirewallCA differs): they refuse the new leaves until
	// they are recreated.
	StillTrustingOld []string
	Err              error
}

// RotateCA asks the firewall to replace its CA.
func (c Client) RotateCA(ctx context.Context) (*RotateCAResult, error) {
	return request.Ask[*RotateCAResult](ctx, c.t, &RotateCA{})
}

// rotateCAReadTimeout bounds the worldview read and each label read of a
// rotation when Config.OpTimeout is unset.
const rotateCAReadTimeout = 5 * time.Second

// errNoFirewallDir answers RotateCA of a firewall without Config.RulesDir.
var errNoFirewallDir = errors.New("the firewall CA has no directory: this control plane runs without a rules directory")

// startInspectCA publishes the CA on disk, if there is one. Whether the
// rules need one when there is none is ensureInspectCA's business, at
// their first publish.
func (a *Actor) startInspectCA() {
	a.inspect = inspectCAState{}
	if a.cfg.RulesDir == "" || !a.cfg.Enable {
		return
	}
	ca, err := certs.LoadFirewallCA(a.cfg.RulesDir)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		a.rulesLog().Error("cannot read the firewall CA; inspected names are refused until it is made again",
			zap.String("event", "firewall_ca_unavailable"), zap.String("dir", a.cfg.RulesDir), zap.Error(err))
		return
	}
	a.publishInspectCA(ca)
	a.rulesLog().Info("firewall CA loaded", zap.String("event", "firewall_ca_loaded"), zap.String("fingerprint", ca.Fingerprint))
}

// ensureInspectCA makes the CA when doc, about to be published (start,
// add, reload), inspects a name and there is none yet: the stack service
// holds the CA before the proxy hears of the rule. A failure is logged and
// tried again at the next publish; meanwhile the proxy refuses the
// inspected names (it has no CA to mint from).
func (a *Actor) ensureInspectCA(doc *egressrules.Doc) {
	if a.inspect.ca != nil || a.cfg.RulesDir == "" || !a.cfg.Enable {
		return
	}
	if !slices.ContainsFunc(doc.Rules, func(e egressrules.Entry) bool { return e.Inspected() }) {
		return
	}
	ca, created, err := certs.EnsureFirewallCA(a.cfg.RulesDir)
	if err != nil {
		a.rulesLog().Error("cannot make the firewall CA; inspected names are refused", zap.String("event", "firewall_ca_unavailable"),
			zap.String("dir", a.cfg.RulesDir), zap.Error(err))
		return
	}
	a.publishInspectCA(ca)
	event := "firewall_ca_loaded" // a `clawker run` made it meanwhile
	if created {
		event = "firewall_ca_created"
	}
	a.rulesLog().Info("firewall CA ready for inspected names", zap.String("event", event), zap.String("fingerprint", ca.Fingerprint))
}

// publishInspectCA hands ca to the stack service, which serves it to the
// proxy's identity only and tells the proxy when it changed.
func (a *Actor) publishInspectCA(ca *certs.FirewallCA) {
	a.inspect.ca = ca
	switch {
	case a.cfg.InspectCA != nil:
		a.cfg.InspectCA(ca.CertPEM, ca.KeyPEM)
	case a.cfg.Stack != nil && a.cfg.Stack.Server != nil:
		a.cfg.Stack.Server.SetInspectCA(ca.CertPEM, ca.KeyPEM)
	}
	// An adopted stack (no Stack config) gets its CA elsewhere.
}

// rotateCA replaces the CA, publishes the new one, and answers once it
// knows which running agents still trust another: the worldview lists the
// running agents, and their containers' labels (read off the mailbox) say
// which CA each was given. Without a Docker client every running agent is
// listed: each was started before this rotation.
func (a *Actor) rotateCA(ctx actor.Context) {
	to := ctx.Sender()
	fail := func(err error) { a.answer(ctx, to, &RotateCAResult{Err: err}) }
	switch {
	case a.queueClosed:
		fail(ErrQueueClosed)
		return
	case a.cfg.RulesDir == "":
		fail(errNoFirewallDir)
		return
	}
	old, cur, err := certs.RotateFirewallCA(a.cfg.RulesDir)
	if err != nil {
		a.rulesLog().Error("cannot rotate the firewall CA", zap.String("event", "firewall_ca_unavailable"), zap.Error(err))
		fail(err)
		return
	}
	if a.cfg.Enable {
		a.publishInspectCA(cur)
	}
	res := &RotateCAResult{Fingerprint: cur.Fingerprint}
	if old != nil {
		res.PreviousFingerprint = old.Fingerprint
	}
	log := a.rulesLog()
	log.Info("firewall CA rotated", zap.String("event", "firewall_ca_rotated"),
		zap.String("fingerprint", res.Fingerprint), zap.String("previous", res.PreviousFingerprint))
	if a.cfg.Overseer == nil || to == nil {
		a.answer(ctx, to, res)
		return
	}
	var docker interface {
		ContainerInspect(ctx context.Context, id string, o client.ContainerInspectOptions) (client.ContainerInspectResult, error)
	}
	if a.cfg.Stack != nil && a.cfg.Stack.Docker != nil {
		docker = a.cfg.Stack.Docker
	}
	timeout := a.cfg.OpTimeout
	if timeout <= 0 {
		timeout = rotateCAReadTimeout
	}
	request.Reenter(ctx, a.cfg.Overseer, &overseer.GetState{}, timeout, func(st *overseer.State, err error) {
		if err != nil {
			res.Err = fmt.Errorf("the firewall CA was rotated (now %s), but the running agents could not be listed: %w", res.Fingerprint, err)
			a.answer(ctx, to, res)
			return
		}
		var running []cpapi.ContainerView
		for _, c := range st.Containers {
			if c.Purpose == dockerx.PurposeAgent && c.State == cpapi.ContainerRunning {
				running = append(running, c)
			}
		}
		sys := ctx.ActorSystem()
		go func() {
			res.StillTrustingOld = stillTrustingOld(docker, running, res.Fingerprint, timeout, log)
			sys.Root.Send(to, res)
		}()
	})
}

// stillTrustingOld names the agents of running whose container's firewall
// CA label is not fingerprint. An agent whose container cannot be read is
// listed (it was started before the rotation); one gone meanwhile is not.
func stillTrustingOld(docker interface {
	ContainerInspect(ctx context.Context, id string, o client.ContainerInspectOptions) (client.ContainerInspectResult, error)
}, running []cpapi.ContainerView, fingerprint string, timeout time.Duration, log *zap.Logger) []string {
	out := []string{}
	for _, c := range running {
		name := c.Project + "/" + c.Agent
		if docker == nil {
			out = append(out, name)
			continue
		}
		in, err := dockerx.Call(context.Background(), timeout, func(ctx context.Context) (client.ContainerInspectResult, error) {
			return docker.ContainerInspect(ctx, c.ID, client.ContainerInspectOptions{})
		})
		switch {
		case cerrdefs.IsNotFound(err):
			continue
		case err != nil:
			log.Warn("cannot read an agent's firewall CA label; listing it as trusting the old CA", zap.String("event", "firewall_ca_agent_unknown"),
				zap.String("agent", name), zap.Error(err))
			out = append(out, name)
			continue
		}
		var labels map[string]string
		if in.Container.Config != nil {
			labels = in.Container.Config.Labels
		}
		if labels[dockerx.LabelFirewallCA] != fingerprint {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
