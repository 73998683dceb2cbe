// Package grpc owns the CP's two gRPC listeners: the AgentService on
// agent_port (clawkerd: Register and the long-lived Session) and the
// AdminService on admin_port (the CLI). Both are mTLS; the admin listener
// admits only the CLI certificate. Bearer tokens are checked with Hydra:
// the AdminService's on every non-public method, an agent's on a Register
// that creates a binding. Under its child "sessions" live one actor
// per connected clawkerd. Its drain step, grpc_stop, ends every Session and
// then stops both servers gracefully (bounded).
package grpc

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"
	ggrpc "google.golang.org/grpc"

	"github.com/clawker/clawker-cp/actors/grpc/sessions"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/certs"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

// Config wires the grpc actor.
type Config struct {
	Tree      *supervise.Tree
	Intensity supervise.Intensity
	BindHost  string
	AgentPort int
	AdminPort int
	// AuthDir is the CP's server bundle (pkg/certs LoadServerBundle).
	AuthDir  string
	Registry *actor.PID
	Overseer *actor.PID
	// Firewall is the firewall actor, which the AdminService's Firewall*
	// methods ask (nil: they answer Unavailable).
	Firewall *actor.PID
	// Enforce is settings' firewall.enable: Register then enforces the
	// agent's container before answering, and says so (enforced=true).
	Enforce bool
	// Now is the clock GetSystemTime reports (and nothing else uses);
	// nil means time.Now. A debug knob skews it (ClockSkew).
	Now func() time.Time
	// Heartbeat is the Session heartbeat interval.
	Heartbeat time.Duration
	// RequestTimeout bounds each handler's request to another actor.
	RequestTimeout time.Duration
	// Introspector validates bearer tokens (Hydra's admin API:
	// oauth.NewIntrospector): the AdminService's, and the agent tokens a
	// Register must carry to create a new binding (scope
	// agent:self:register). Nil refuses every AdminService method but the
	// public GetSystemTime (fail closed), and lets a certificate alone
	// create a binding: without Ory no agent could get a token.
	Introspector TokenIntrospector
	// AdminReady reports whether the whole control plane is up; until then
	// the AdminService's non-public methods answer FailedPrecondition. Nil
	// means ready.
	AdminReady func() bool
	// AuthCacheTTL keeps positive introspections this long, never past a
	// token's exp; 0 asks Hydra on every call.
	AuthCacheTTL time.Duration
	// AgentLimits and AdminLimits bound each server's connections,
	// streams, message sizes and keepalives, and Register per peer (zero
	// fields: AgentLimits, AdminLimits).
	AgentLimits, AdminLimits Limits
	// ServerOptions adds options to a server ("agent" or "admin") ahead
	// of its own: the metrics' interceptors. Nil adds none.
	ServerOptions func(server string) []ggrpc.ServerOption
	// ContainerAddrs binds an agent's identity to its container's
	// addresses: Register and Session from any other (non-loopback)
	// address are refused (peerBinding). Nil: no such check.
	ContainerAddrs ContainerAddrs
	Log            *zap.Logger
}

// Actor owns the listeners and servers.
type Actor struct {
	cfg      Config
	agentSrv *ggrpc.Server
	adminSrv *ggrpc.Server
	agentLn  net.Listener
	adminLn  net.Listener
	sessions *actor.PID
	serving  bool
}

// New returns a producer of fresh grpc actors.
func New(cfg Config) actor.Producer {
	cfg.AgentLimits = cfg.AgentLimits.withDefaults(AgentLimits)
	cfg.AdminLimits = cfg.AdminLimits.withDefaults(AdminLimits)
	return func() actor.Actor { return &Actor{cfg: cfg} }
}

// Receive handles the actor's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if err := a.listen(); err != nil {
			a.closeListeners()
			supervise.ReportReady(ctx, err)
			return
		}
		pid, err := ctx.SpawnNamed(a.cfg.Tree.Props(sessions.New(sessions.Config{
			Tree: a.cfg.Tree, Intensity: a.cfg.Intensity, Overseer: a.cfg.Overseer, Registry: a.cfg.Registry,
			Heartbeat: a.cfg.Heartbeat, Log: a.cfg.Log,
		}), a.cfg.Intensity), "sessions")
		if err != nil {
			a.closeListeners()
			supervise.ReportReady(ctx, fmt.Errorf("spawning grpc/sessions: %w", err))
			return
		}
		a.sessions = pid
	case *supervise.Ready:
		if !a.serving {
			a.serve(ctx)
			supervise.ReportReady(ctx, m.Err)
		}
	case *actor.Stopping, *actor.Restarting:
		a.hardStop()
	case *supervise.DrainStep:
		// Only grpc_stop: the middleware answers any other step.
		a.gracefulStop(ctx, m)
	}
}

// listen opens both ports before anything is served, so a port conflict
// fails start-up with a clear error instead of half a service.
func (a *Actor) listen() error {
	if _, err := certs.LoadServerBundle(a.cfg.AuthDir); err != nil {
		return fmt.Errorf("grpc: %w", err)
	}
	var err error
	if a.agentLn, err = net.Listen("tcp", net.JoinHostPort(a.cfg.BindHost, strconv.Itoa(a.cfg.AgentPort))); err != nil {
		return fmt.Errorf("agent port: %w (change control_plane.agent_port)", err)
	}
	if a.adminLn, err = net.Listen("tcp", net.JoinHostPort(a.cfg.BindHost, strconv.Itoa(a.cfg.AdminPort))); err != nil {
		return fmt.Errorf("admin port: %w (change control_plane.admin_port)", err)
	}
	a.agentLn = newLimitListener(a.agentLn, a.cfg.AgentLimits, "agent", a.cfg.Log)
	a.adminLn = newLimitListener(a.adminLn, a.cfg.AdminLimits, "admin", a.cfg.Log)
	return nil
}

func (a *Actor) closeListeners() {
	for _, ln := range []net.Listener{a.agentLn, a.adminLn} {
		if ln != nil {
			_ = ln.Close()
		}
	}
}

func (a *Actor) serve(ctx actor.Context) {
	m, err := certs.LoadServerBundle(a.cfg.AuthDir)
	if err != nil { // checked in listen; a rotation in between is reported here
		a.cfg.Log.Error("auth material unreadable", zap.String("event", "grpc_unavailable"), zap.Error(err))
		return
	}
	peers := newPeers(ctx.ActorSystem(), a.cfg, a.sessions)
	agentCreds, err := agentCredentials(m, a.cfg.Log)
	if err != nil {
		a.cfg.Log.Error("agent TLS config", zap.String("event", "grpc_unavailable"), zap.Error(err))
		return
	}
	adminCreds, err := adminCredentials(m, a.cfg.Log)
	if err != nil {
		a.cfg.Log.Error("admin TLS config", zap.String("event", "grpc_unavailable"), zap.Error(err))
		return
	}
	var agentTokens *Authz
	if a.cfg.Introspector != nil {
		agentTokens = NewAuthz(AuthzConfig{Introspector: a.cfg.Introspector, CacheTTL: a.cfg.AuthCacheTTL, Log: a.cfg.Log})
	}
	extra := func(string) []ggrpc.ServerOption { return nil }
	if a.cfg.ServerOptions != nil {
		extra = a.cfg.ServerOptions
	}
	// The Register limiter is the outermost interceptor of the server's
	// own: a refused call costs no token or registry work.
	registers := newRegisterLimiter(a.cfg.AgentLimits, a.cfg.Log)
	agentOpts := append(append(extra("agent"), ggrpc.Creds(agentCreds), ggrpc.ChainUnaryInterceptor(registers.unary)),
		a.cfg.AgentLimits.serverOptions()...)
	a.agentSrv = ggrpc.NewServer(agentOpts...)
	agentv1.RegisterAgentServiceServer(a.agentSrv, &agentService{peers: peers, enforce: a.cfg.Enforce, tokens: agentTokens,
		bind: newPeerBinding(a.cfg.ContainerAddrs), assertionKeys: signingKeys(a.cfg.AuthDir)})
	authz := NewAuthz(AuthzConfig{Introspector: a.cfg.Introspector, Ready: a.cfg.AdminReady, CacheTTL: a.cfg.AuthCacheTTL, Log: a.cfg.Log})
	adminOpts := append(append(append(extra("admin"), ggrpc.Creds(adminCreds)), authz.ServerOptions()...), a.cfg.AdminLimits.serverOptions()...)
	a.adminSrv = ggrpc.NewServer(adminOpts...)
	adminv1.RegisterAdminServiceServer(a.adminSrv, &adminService{peers: peers, now: a.cfg.Now})
	for _, p := range []struct {
		srv *ggrpc.Server
		ln  net.Listener
		svc string
	}{{a.agentSrv, a.agentLn, "agent"}, {a.adminSrv, a.adminLn, "admin"}} {
		go func() {
			if err := p.srv.Serve(p.ln); err != nil {
				a.cfg.Log.Error("gRPC server stopped", zap.String("event", "grpc_unavailable"), zap.String("service", p.svc), zap.Error(err))
			}
		}()
		a.cfg.Log.Info("gRPC listening", zap.String("event", "grpc_listening"), zap.String("service", p.svc), zap.String("addr", p.ln.Addr().String()))
	}
	a.serving = true
}

func (a *Actor) hardStop() {
	for _, s := range []*ggrpc.Server{a.agentSrv, a.adminSrv} {
		if s != nil {
			s.Stop()
		}
	}
	a.closeListeners()
	a.agentSrv, a.adminSrv = nil, nil
}

// gracefulStop ends every Session first (a Session is a stream that never
// ends by itself, so GracefulStop alone would wait it out), then stops both
// servers gracefully. It runs off the mailbox and answers the root itself.
func (a *Actor) gracefulStop(ctx actor.Context, m *supervise.DrainStep) {
	sender, sys := ctx.Sender(), ctx.ActorSystem()
	sess := sessions.NewClient(sys, a.sessions, 0)
	servers := []*ggrpc.Server{a.agentSrv, a.adminSrv}
	budget := m.Left() * 8 / 10 // the rest for the answer's way back
	go func() {
		n := 0
		if e, err := sess.EndAll(context.Background(), budget/2); err == nil {
			n = e.Sessions
		}
		forced := false
		for _, s := range servers {
			if s == nil {
				continue
			}
			done := make(chan struct{})
			go func() { s.GracefulStop(); close(done) }()
			select {
			case <-done:
			case <-time.After(budget / 2):
				s.Stop()
				forced = true
			}
		}
		detail := fmt.Sprintf("ended %d session(s), agent and admin servers stopped", n)
		if forced {
			detail += " (forced after the graceful bound)"
		}
		sys.Root.Send(sender, &supervise.StepDone{Step: m.Step, Outcome: supervise.OutcomeDone, Detail: detail})
	}()
}
