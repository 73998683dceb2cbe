// Package auth supervises the token-issuing stack: the three Ory servers,
// each a child process of the control plane owned by a child actor of auth.
//
//	auth
//	├── hydra       OAuth2 token issuer (client_credentials + private_key_jwt ES256)
//	├── kratos      operator identity store (no self-service flow yet)
//	└── oathkeeper  authenticating proxy: /debug/* for tokens with scope admin
//
// The auth actor spawns them one at a time in that order, each once the
// previous one is ready. When hydra is ready it registers the OAuth2
// clients clawker-cli and clawker-agent through Hydra's admin API (off the
// mailbox), and it reports Ready to the root only when all three servers
// are ready and both clients are registered.
//
// A server that exits unexpectedly makes its actor fail; the strategy of
// the auth actor restarts it (a fresh process, a fresh configuration)
// within the root's restart intensity, and past it the failure escalates to
// the root, which restarts auth as a whole. Hydra keeps everything in
// memory, so a restarted hydra knows no client: the auth actor registers
// them again every time hydra reports Ready.
//
// On stop (and before a restart of its own) the auth actor stops its
// children in reverse order, oathkeeper, kratos, hydra, each one's process
// with SIGTERM and, after StopGrace, SIGKILL.
//
// With Config.Enable false, auth is the placeholder it always was: it
// reports Ready at once and runs nothing.
package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/health"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/ory"
)

// Defaults of Config.
const (
	DefaultReadyTimeout    = 30 * time.Second
	DefaultStopGrace       = 3 * time.Second
	DefaultRegisterTimeout = 15 * time.Second
	registerRetry          = 200 * time.Millisecond
)

// Config wires the auth actor.
type Config struct {
	// Enable runs the Ory stack. False (the zero value) keeps the
	// placeholder: Ready at once, no process.
	Enable    bool
	Tree      *supervise.Tree
	Intensity supervise.Intensity

	// BinDir holds the binaries hydra, kratos and oathkeeper.
	BinDir string
	// RunDir receives the servers' configuration files, rewritten at each
	// start (0700 directory, 0600 files; Hydra's holds its system secret).
	// With a User it must lie under world-searchable directories.
	RunDir string
	// User, when set, is who the servers run as (ory.Config.User): no
	// capability, no_new_privs, no supplementary group. Nil runs them as
	// the control plane's own user.
	User *ory.User
	// BindHost is where Hydra public and the Oathkeeper proxy listen (the
	// CP's BindHost); every other Ory listener is on 127.0.0.1.
	BindHost string
	// Ports come from settings (ory.PortsFrom); Ports.Debug, the upstream
	// of the /debug/* rules, is the CP's internal debug listener
	// (health.ListenDebug).
	Ports ory.Ports
	// IssuerURL is Hydra's issuer; "" means https://127.0.0.1:<hydra_public_port>/.
	IssuerURL string
	// ServerBundleDir is the CP's server bundle (pkg/certs): server.crt and
	// server.key serve Hydra public and the Oathkeeper proxy over TLS,
	// ca.crt verifies them in the probes, signing.jwk.json is the CLI's
	// signing public key, the clients' JWKS.
	ServerBundleDir string
	// JWKS returns the CLI's signing public key; nil reads
	// <ServerBundleDir>/signing.jwk.json, at every registration (so a
	// restart of hydra after `clawker auth rotate` picks up the new key).
	JWKS func() (*certs.JWKS, error)

	ReadyTimeout    time.Duration // per server, from process start to healthy
	StopGrace       time.Duration // SIGTERM -> SIGKILL, per server
	RegisterTimeout time.Duration // registering both clients, retries included
	// Output receives the servers' stdout and stderr, each line prefixed
	// "<server>: "; nil means os.Stderr (docker logs).
	Output io.Writer
	Log    *zap.Logger
}

func (c Config) withDefaults() Config {
	if c.ReadyTimeout <= 0 {
		c.ReadyTimeout = DefaultReadyTimeout
	}
	if c.StopGrace <= 0 {
		c.StopGrace = DefaultStopGrace
	}
	if c.RegisterTimeout <= 0 {
		c.RegisterTimeout = DefaultRegisterTimeout
	}
	if c.Output == nil {
		c.Output = os.Stderr
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
	if c.JWKS == nil {
		path := filepath.Join(c.ServerBundleDir, certs.SigningJWKSFile)
		c.JWKS = func() (*certs.JWKS, error) {
			b, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("reading the CLI's signing key: %w", err)
			}
			return certs.ParseJWKS(b)
		}
	}
	return c
}

// OryConfig is the configuration the three servers are written from.
func (c Config) OryConfig() ory.Config {
	return ory.Config{
		RunDir: c.RunDir, BindHost: c.BindHost, Ports: c.Ports, IssuerURL: c.IssuerURL, User: c.User,
	}.FromServerBundle(c.ServerBundleDir)
}

// Probes are the /healthz probes of the stack, ory_hydra, ory_kratos and
// ory_oathkeeper: each server's readiness check. None without Enable.
func (c Config) Probes() []health.Probe {
	if !c.Enable {
		return nil
	}
	oc := c.OryConfig()
	var out []health.Probe
	for _, n := range ory.Names {
		name := n
		out = append(out, health.Probe{Name: "ory_" + name, Check: func(ctx context.Context) error {
			// Built per call: the CA file is read when the probe runs.
			p, err := oc.Probe(name)
			if err != nil {
				return err
			}
			return p(ctx)
		}})
	}
	return out
}

type phase int

const (
	phaseStarting phase = iota
	phaseReady
	phaseFailed
	phaseStopping
)

// Actor is the auth actor.
type Actor struct {
	cfg   Config
	ory   ory.Config
	phase phase
	begin time.Time
	kids  map[string]*actor.PID
	ready map[string]bool

	regGen     int
	registered bool
	regCancel  context.CancelFunc
}

// clientsRegistered reports a registration of the clients.
type clientsRegistered struct {
	gen      int
	err      error
	took     time.Duration
	attempts int
}

// New returns a producer of fresh auth actors.
func New(cfg Config) actor.Producer {
	cfg = cfg.withDefaults()
	return func() actor.Actor {
		return &Actor{cfg: cfg, ory: cfg.OryConfig(), kids: map[string]*actor.PID{}, ready: map[string]bool{}}
	}
}

// Receive handles the actor's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.start(ctx)
	case *actor.Stopping, *actor.Restarting:
		a.stopChildren(ctx)
	case *supervise.Ready:
		a.childReady(ctx, m)
	case *clientsRegistered:
		a.onRegistered(ctx, m)
	}
}

func (a *Actor) start(ctx actor.Context) {
	a.begin = time.Now()
	if !a.cfg.Enable {
		a.cfg.Log.Info("Ory stack not configured; auth runs as a placeholder", zap.String("event", "auth_placeholder"))
		supervise.ReportReady(ctx, nil)
		return
	}
	if err := a.check(); err != nil {
		a.fail(ctx, err)
		return
	}
	a.spawn(ctx, ory.Hydra)
}

// check rejects a configuration that cannot work before any process runs.
func (a *Actor) check() error {
	if a.cfg.Tree == nil {
		return errors.New("auth: no supervision tree")
	}
	for _, n := range ory.Names {
		p := filepath.Join(a.cfg.BinDir, n)
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("auth: Ory server binary: %w", err)
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("auth: Ory server binary %s is not an executable file", p)
		}
	}
	if err := a.ory.Validate(); err != nil {
		return err
	}
	if _, err := a.cfg.JWKS(); err != nil {
		return fmt.Errorf("auth: the OAuth2 clients' key: %w", err)
	}
	return nil
}

func (a *Actor) spawn(ctx actor.Context, name string) {
	if a.kids[name] != nil {
		return
	}
	mc := memberConfig{
		name: name, binary: filepath.Join(a.cfg.BinDir, name), ory: a.ory,
		readyTimeout: a.cfg.ReadyTimeout, stopGrace: a.cfg.StopGrace, output: a.cfg.Output,
		log: a.cfg.Log, // its lines carry server=<name>
	}
	pid, err := ctx.SpawnNamed(a.cfg.Tree.Props(newMember(mc), a.cfg.Intensity), name)
	if err != nil {
		a.fail(ctx, fmt.Errorf("spawning auth/%s: %w", name, err))
		return
	}
	a.kids[name] = pid
}

// fail reports a start-up failure (once).
func (a *Actor) fail(ctx actor.Context, err error) {
	if a.phase != phaseStarting {
		return
	}
	a.phase = phaseFailed
	supervise.ReportReady(ctx, err)
}

func (a *Actor) childReady(ctx actor.Context, m *supervise.Ready) {
	pid := a.kids[m.Name]
	if pid == nil || a.phase == phaseFailed || a.phase == phaseStopping {
		return
	}
	if m.Err != nil {
		a.ready[m.Name] = false
		if a.phase == phaseStarting {
			a.fail(ctx, fmt.Errorf("auth/%s: %w", m.Name, m.Err))
			return
		}
		// A restarted server that does not come up: fail its actor, so
		// the restart is counted against the intensity bound.
		a.cfg.Log.Error("Ory server unavailable after a restart", zap.String("event", "ory_process_unavailable"),
			zap.String("server", m.Name), zap.Error(m.Err))
		ctx.Send(pid, &failMember{reason: fmt.Sprintf("%s did not come back: %v", m.Name, m.Err)})
		return
	}
	a.ready[m.Name] = true
	switch m.Name {
	case ory.Hydra:
		// First start or a restart: either way its memory is empty.
		a.register(ctx)
		a.spawn(ctx, ory.Kratos)
	case ory.Kratos:
		a.spawn(ctx, ory.Oathkeeper)
	}
	a.maybeReady(ctx)
}

func (a *Actor) maybeReady(ctx actor.Context) {
	if a.phase != phaseStarting || !a.registered {
		return
	}
	for _, n := range ory.Names {
		if !a.ready[n] {
			return
		}
	}
	a.phase = phaseReady
	a.cfg.Log.Info("Ory stack ready", zap.String("event", "ory_stack_ready"),
		zap.Float64("startup_ms", cpapi.Millis(time.Since(a.begin))), zap.String("issuer", a.ory.Issuer()))
	supervise.ReportReady(ctx, nil)
}

// register upserts the two clients in Hydra, off the mailbox, retrying
// until RegisterTimeout. A newer registration supersedes an older one.
func (a *Actor) register(ctx actor.Context) {
	if a.regCancel != nil {
		a.regCancel()
	}
	a.regGen++
	a.registered = false
	gen := a.regGen
	run, cancel := context.WithTimeout(context.Background(), a.cfg.RegisterTimeout)
	a.regCancel = cancel
	admin := ory.NewAdmin(a.ory.HydraAdminURL())
	jwks := a.cfg.JWKS
	sys, self := ctx.ActorSystem(), ctx.Self()
	go func() {
		begin := time.Now()
		var err error
		attempts := 0
		for {
			attempts++
			var keys *certs.JWKS
			if keys, err = jwks(); err == nil {
				if err = admin.RegisterClawkerClients(run, keys); err == nil {
					break
				}
			}
			t := time.NewTimer(registerRetry)
			select {
			case <-t.C:
			case <-run.Done():
				t.Stop()
			}
			if run.Err() != nil {
				break
			}
		}
		if errors.Is(run.Err(), context.Canceled) {
			return // superseded, or the actor stops
		}
		sys.Root.Send(self, &clientsRegistered{gen: gen, err: err, took: time.Since(begin), attempts: attempts})
	}()
}

func (a *Actor) onRegistered(ctx actor.Context, m *clientsRegistered) {
	if m.gen != a.regGen || a.phase == phaseFailed || a.phase == phaseStopping {
		return
	}
	a.regCancel()
	a.regCancel = nil
	if m.err != nil {
		err := fmt.Errorf("registering the OAuth2 clients in hydra: %w", m.err)
		a.cfg.Log.Error("cannot register the OAuth2 clients", zap.String("event", "ory_clients_register_failed"),
			zap.Int("attempts", m.attempts), zap.Error(err))
		if a.phase == phaseStarting {
			a.fail(ctx, err)
			return
		}
		// A hydra that cannot take its clients is of no use: restart it.
		if pid := a.kids[ory.Hydra]; pid != nil {
			ctx.Send(pid, &failMember{reason: err.Error()})
		}
		return
	}
	a.registered = true
	a.cfg.Log.Info("OAuth2 clients registered", zap.String("event", "ory_clients_registered"),
		zap.Strings("clients", []string{ory.ClientCLI, ory.ClientAgent}), zap.Int("attempts", m.attempts),
		zap.Float64("took_ms", cpapi.Millis(m.took)))
	a.maybeReady(ctx)
}

// stopChildren stops the servers in reverse start order, each completely
// (its process gone) before the next: oathkeeper, kratos, hydra.
func (a *Actor) stopChildren(ctx actor.Context) {
	if a.phase == phaseStopping {
		return
	}
	a.phase = phaseStopping
	if a.regCancel != nil {
		a.regCancel()
		a.regCancel = nil
	}
	for i := len(ory.Names) - 1; i >= 0; i-- {
		name := ory.Names[i]
		pid := a.kids[name]
		if pid == nil {
			continue
		}
		if err := ctx.StopFuture(pid).Wait(); err != nil {
			a.cfg.Log.Warn("Ory server actor did not stop in time", zap.String("event", "ory_child_stop_timeout"),
				zap.String("server", name), zap.Error(err))
		}
		delete(a.kids, name)
	}
	if a.cfg.User != nil {
		// Empty once every member removed its files; a non-empty one stays.
		_ = os.Remove(a.cfg.RunDir)
	}
}
