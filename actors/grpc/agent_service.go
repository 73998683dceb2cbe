package grpc

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/actors/grpc/sessions"
	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/actors/registry"
	"github.com/clawker/clawker-cp/pkg/agentdb"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/oauth"
	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

// peers is what the handlers, running on gRPC's goroutines, need to reach
// the actors: a typed client per actor they ask (each request bounded by
// Config.RequestTimeout), and the PIDs they only send to.
type peers struct {
	sys      *actor.ActorSystem
	registry registry.Client
	sessions sessions.Client
	firewall firewall.Client // not wired: every request fails with request.ErrNoActor
	overseer *actor.PID
	log      *zap.Logger
}

func newPeers(sys *actor.ActorSystem, cfg Config, sessionsPID *actor.PID) peers {
	return peers{
		sys:      sys,
		registry: registry.NewClient(sys, cfg.Registry, cfg.RequestTimeout),
		sessions: sessions.NewClient(sys, sessionsPID, cfg.RequestTimeout),
		firewall: firewall.NewClient(sys, cfg.Firewall, cfg.RequestTimeout),
		overseer: cfg.Overseer,
		log:      cfg.Log,
	}
}

type agentService struct {
	agentv1.UnimplementedAgentServiceServer
	peers
	enforce bool
	// tokens checks the agent tokens of new bindings (Register); nil when
	// the control plane has no Hydra to ask, and then a certificate alone
	// makes a binding.
	tokens *Authz
	// bind refuses a certificate used from another address than its
	// container's (nil: Config.ContainerAddrs unset, no check).
	bind *peerBinding
	// assertionKeys is the CLI's signing JWKS, which verifies the client
	// assertion an agent token came from (signingKeys).
	assertionKeys func() (*certs.JWKS, error)
}

// signingKeys reads the CLI's signing JWKS from the server bundle at each
// call (new bindings only), so a rotated key counts at once.
func signingKeys(authDir string) func() (*certs.JWKS, error) {
	return func() (*certs.JWKS, error) {
		b, err := os.ReadFile(filepath.Join(authDir, certs.SigningJWKSFile))
		if err != nil {
			return nil, err
		}
		return certs.ParseJWKS(b)
	}
}

// identity is what the live TLS handshake proves about the caller.
type identity struct {
	certs.AgentIdentity
	// Thumbprint names the leaf's key (certs.KeyThumbprint), the same for
	// every leaf of the agent's chain: the registry binds it.
	Thumbprint string
	// LeafThumbprint names the leaf (certs.Thumbprint): a binding made
	// when the registry keyed on it is recognised by it and upgraded.
	LeafThumbprint string
	Key            string
	Peer           string
}

// refusal is a PermissionDenied with its logged reason.
type refusal struct {
	reason string
	msg    string
}

func (r *refusal) Error() string { return r.msg }

func refuse(reason, format string, args ...any) *refusal {
	return &refusal{reason: reason, msg: fmt.Sprintf(format, args...)}
}

// identify reads the caller's leaf certificate from the handshake: the agent
// cannot self-attest, the CP takes the thumbprint and container id from the
// certificate it presented.
func identify(ctx context.Context) (identity, *x509.Certificate, error) {
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return identity{}, nil, refuse("no_peer", "no peer information")
	}
	tlsInfo, ok := pr.AuthInfo.(credentials.TLSInfo)
	if !ok || len(tlsInfo.State.VerifiedChains) == 0 || len(tlsInfo.State.VerifiedChains[0]) == 0 {
		return identity{}, nil, refuse("no_client_cert", "no verified client certificate")
	}
	leaf := tlsInfo.State.VerifiedChains[0][0]
	id := identity{Peer: pr.Addr.String(), Thumbprint: certs.KeyThumbprint(leaf), LeafThumbprint: certs.Thumbprint(leaf)}
	if cn := leaf.Subject.CommonName; cn != certs.AgentCommonName {
		return id, leaf, refuse("wrong_cn", "certificate CN %q is not %q", cn, certs.AgentCommonName)
	}
	ai, err := certs.ParseAgentIdentity(leaf)
	if err != nil {
		reason := "bad_identity"
		switch {
		case errors.Is(err, certs.ErrMissingContainerSAN):
			reason = "missing_container_san"
		case errors.Is(err, certs.ErrMissingAgentSAN):
			reason = "missing_agent_san"
		}
		return id, leaf, refuse(reason, "certificate identity: %v", err)
	}
	id.AgentIdentity = ai
	id.Key = agentdb.Key(id.Thumbprint, ai.ContainerID)
	return id, leaf, nil
}

func (id identity) name() string { return id.Project + "." + id.Agent }

func (s *agentService) fail(id identity, err error) error {
	var r *refusal
	var u *unavailable
	if errors.As(err, &u) {
		s.log.Warn("agent not served now", zap.String("event", "register_failed"), zap.String("reason", "peer_lookup_failed"),
			zap.String("peer", id.Peer), zap.String("container_id", id.ContainerID), zap.String("agent", id.name()))
		return status.Error(codes.Unavailable, u.msg)
	}
	if errors.As(err, &r) {
		s.log.Warn("agent refused", zap.String("event", "register_failed"), zap.String("reason", r.reason), zap.String("error", r.msg),
			zap.String("peer", id.Peer), zap.String("container_id", id.ContainerID), zap.String("agent", id.name()),
			zap.String("thumbprint", id.Thumbprint))
		return status.Error(codes.PermissionDenied, r.msg)
	}
	s.log.Error("register failed", zap.String("event", "register_failed"), zap.String("reason", "internal"), zap.Error(err),
		zap.String("container_id", id.ContainerID), zap.String("agent", id.name()))
	return status.Error(codes.Unavailable, "registry unavailable, retry")
}

// Register binds the caller's certificate key to its container in the
// registry.
//
// The binding is of the key the certificate certifies, not of the leaf:
// `clawker run` gives an agent a chain of short leaves for one key
// (certs.MintAgentChain), and an agent presenting the next leaf of its
// chain registers its existing binding again. A leaf of another key for a
// bound container is refused (container_bound).
//
// When the control plane runs Ory (tokens set), creating a binding the
// registry does not hold yet also takes a bearer token that Hydra says is
// an active access token with scope agent:self:register: clawkerd gets one
// with the client assertion `clawker run` minted for it with the CLI's
// signing key, so only a container the CLI started can become an agent.
// No token: PermissionDenied, reason agent_token_missing; a token refused
// (inactive, expired, not an access token, without that scope, as an
// admin token is): PermissionDenied, agent_token_invalid; a good token
// not bound to the certificate's container (the assertion it came from,
// sent beside it, names another container or none: tokenContainer):
// PermissionDenied, token_container_mismatch; Hydra not
// answering: Unavailable, and clawkerd retries. Registering an existing
// binding again (the same key and container, after a reconnect or a
// control plane restart, whose Hydra has forgotten every token) needs no
// token: the certificate minted for that container is the proof, and the
// one-shot assertion could not be exchanged again anyway.
//
// The registry is asked once: the token is a verdict it evaluates lazily
// (registry.Register's MayCreate), only when the container turns out not
// to be bound yet, so a bound agent cannot make the CP call Hydra, and a
// new one costs one registry request, not a lookup and then an insert.
func (s *agentService) Register(ctx context.Context, req *agentv1.RegisterRequest) (*agentv1.RegisterResponse, error) {
	id, _, err := identify(ctx)
	if err != nil {
		return nil, s.fail(id, err)
	}
	if req.GetProject() != id.Project || req.GetAgentName() != id.Agent {
		return nil, s.fail(id, refuse("agent_san_mismatch", "request names %s.%s but the certificate is for %s",
			req.GetProject(), req.GetAgentName(), id.name()))
	}
	if err := s.bind.check(ctx, id); err != nil {
		return nil, s.fail(id, err)
	}
	reg := registry.Register{Agent: agentdb.Agent{
		Project: id.Project, AgentName: id.Agent, ContainerID: id.ContainerID, Thumbprint: id.Thumbprint,
		LeafThumbprint: id.LeafThumbprint, RegisteredAt: time.Now().UTC(),
	}}
	if s.tokens != nil {
		// The handler's ctx: the token is in its metadata, and the
		// introspection ends with the RPC.
		reg.MayCreate = func(context.Context) error { return s.tokenVerdict(ctx, id) }
	}
	r, err := s.registry.Register(ctx, reg)
	if err != nil {
		return nil, s.fail(id, fmt.Errorf("registry: %w", err))
	}
	var verdict *refusal
	var noVerdict *introspectionFailed
	switch {
	case errors.As(r.Err, &verdict), errors.As(r.Err, &noVerdict):
		return nil, s.refuseNewBinding(id, r.Err)
	case errors.Is(r.Err, agentdb.ErrContainerBound):
		return nil, s.fail(id, refuse("container_bound", "%v", r.Err))
	case r.Err != nil:
		return nil, s.fail(id, r.Err)
	}
	enforced := s.ensureEnforced(ctx, id)
	s.log.Info("agent registered", zap.String("event", "agent_registered"), zap.String("agent", id.name()),
		zap.String("container_id", id.ContainerID), zap.String("thumbprint", id.Thumbprint), zap.String("leaf_thumbprint", id.LeafThumbprint),
		zap.Bool("created", r.Created), zap.Bool("enforced", enforced))
	return &agentv1.RegisterResponse{AgentKey: r.Agent.Key, RegisteredAt: timestamppb.New(r.Agent.RegisteredAt), Enforced: enforced}, nil
}

// tokenVerdict is Register's token check for a new binding (see
// Register): nil when the caller's token is good, else why not, for
// refuseNewBinding to answer.
func (s *agentService) tokenVerdict(ctx context.Context, id identity) error {
	token, reason := bearerToken(ctx)
	switch reason {
	case "token_missing":
		return refuse("agent_token_missing", "a new agent binding needs a bearer token of client %s with scope %s "+
			"(clawkerd gets one with the client assertion clawker run copies in); none was sent", oauth.ClientAgent, oauth.ScopeAgentRegister)
	case "":
	default:
		return refuse("agent_token_invalid", "the agent token is refused: malformed bearer token (%s)", reason)
	}
	in, why, msg, err := s.tokens.check(ctx, token, oauth.ScopeAgentRegister)
	if err != nil {
		return &introspectionFailed{err}
	}
	if why != "" {
		return refuse("agent_token_invalid", "the agent token is refused: %s (%s; client %q, scope %q)", msg, why, in.ClientID, in.Scope)
	}
	return s.tokenContainer(ctx, id, in)
}

// assertionSkew is how far the token's iat may lie outside its assertion's
// validity: Hydra's clock (the CP's) and the CLI's (the host's) differ.
const assertionSkew = 5 * time.Minute

// tokenContainer binds a good agent token to the caller's container. A
// client_credentials token carries no claim of the assertion it was
// exchanged for, so the caller sends that assertion beside it: signed by
// the CLI, minted by `clawker run` after the container was created, it
// names the container (oauth.ContainerClaim), which must be the one the
// certificate names, and the token must have been issued while it was
// valid. Anything else: token_container_mismatch.
func (s *agentService) tokenContainer(ctx context.Context, id identity, in *oauth.Introspection) error {
	mismatch := func(format string, args ...any) error {
		return refuse("token_container_mismatch", "the agent token is refused: "+format, args...)
	}
	vals := metadata.ValueFromIncomingContext(ctx, oauth.AgentAssertionHeader)
	if len(vals) != 1 {
		return mismatch("a new binding needs, beside the token, the one client assertion (%s) it was exchanged for, "+
			"which names the container; %d were sent (clawkerd sends the one clawker run copied in)", oauth.AgentAssertionHeader, len(vals))
	}
	keys, err := s.assertionKeys()
	if err != nil {
		return &introspectionFailed{fmt.Errorf("reading the CLI's signing key to verify the agent's assertion: %w", err)}
	}
	cl, err := oauth.VerifyAgentAssertion(vals[0], keys)
	if err != nil {
		return mismatch("%v", err)
	}
	if cl.ContainerID != id.ContainerID {
		return mismatch("it was minted for container %.12s, but the certificate names container %.12s", cl.ContainerID, id.ContainerID)
	}
	if in.IssuedAt != 0 {
		iat := time.Unix(in.IssuedAt, 0)
		if iat.Before(cl.IssuedAt.Add(-assertionSkew)) || iat.After(cl.Expiry.Add(assertionSkew)) {
			return mismatch("it was issued at %s, not while the assertion sent with it was valid (%s to %s): it was not exchanged for that assertion",
				iat.UTC().Format(time.RFC3339), cl.IssuedAt.UTC().Format(time.RFC3339), cl.Expiry.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// introspectionFailed is a verdict Hydra could not give.
type introspectionFailed struct{ err error }

func (e *introspectionFailed) Error() string { return e.err.Error() }

// refuseNewBinding answers a Register whose binding is new with the token
// verdict against it: PermissionDenied for a refusal, Unavailable (retry)
// when Hydra did not answer.
func (s *agentService) refuseNewBinding(id identity, verdict error) error {
	var nf *introspectionFailed
	if errors.As(verdict, &nf) {
		s.log.Warn("agent token not validated", zap.String("event", "register_failed"), zap.String("reason", "introspection_failed"),
			zap.Error(nf.err), zap.String("peer", id.Peer), zap.String("container_id", id.ContainerID), zap.String("agent", id.name()),
			zap.String("thumbprint", id.Thumbprint))
		return status.Error(codes.Unavailable, "the agent token cannot be validated now, retry")
	}
	return s.fail(id, verdict)
}

// ensureEnforced asks the firewall to enforce the caller's container (the
// one its certificate names) and reports whether it is. Idempotent: the
// Docker start event usually got there first. A failure is logged and
// answered as enforced=false; a clawkerd told to require enforcement then
// keeps its command waiting and registers again.
func (s *agentService) ensureEnforced(ctx context.Context, id identity) bool {
	if !s.enforce || !s.firewall.Wired() {
		return false
	}
	r, err := s.firewall.Enforce(ctx, id.ContainerID)
	if err == nil {
		err = r.Err
	}
	if err != nil {
		s.log.Warn("cannot enforce the agent's container", zap.String("event", "agent_enforce_failed"), zap.String("agent", id.name()),
			zap.String("container_id", id.ContainerID), zap.Error(err))
		return false
	}
	return true
}

// helloTimeout bounds the wait for the Session's first message.
const helloTimeout = 10 * time.Second

// Session holds one agent's stream. The handler only moves messages; the
// session actor under grpc/sessions owns the Session's state.
func (s *agentService) Session(stream agentv1.AgentService_SessionServer) error {
	id, _, err := identify(stream.Context())
	if err != nil {
		return s.fail(id, err)
	}
	first, err := recvWithin(stream, helloTimeout)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "hello: %v", err)
	}
	hello := first.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "hello: the first message of a Session must be Hello")
	}
	if hello.GetProject() != id.Project || hello.GetAgentName() != id.Agent {
		return s.fail(id, refuse("agent_san_mismatch", "hello names %s.%s but the certificate is for %s",
			hello.GetProject(), hello.GetAgentName(), id.name()))
	}
	if err := s.bind.check(stream.Context(), id); err != nil {
		return s.fail(id, err)
	}
	s.publish(id, overseer.SessionConnecting, "")
	g, err := s.registry.Get(stream.Context(), id.Key)
	if err != nil {
		s.publish(id, overseer.SessionFailed, "registry unavailable")
		return status.Error(codes.Unavailable, "registry unavailable, retry")
	}
	if g.Err != nil {
		s.publish(id, overseer.SessionFailed, "not registered")
		return s.fail(id, refuse("not_registered", "call Register before opening a Session: %v", g.Err))
	}

	ctx, end := context.WithCancelCause(stream.Context())
	defer end(nil)
	outbox := make(chan *agentv1.ControlMessage, 256)
	opened, err := s.sessions.Open(ctx, sessions.Open{Agent: id.name(), Key: id.Key, ContainerID: id.ContainerID, Outbox: outbox, End: end})
	if err != nil {
		s.publish(id, overseer.SessionFailed, "sessions unavailable")
		return status.Error(codes.Unavailable, "sessions unavailable, retry")
	}
	if opened.Err != nil {
		s.publish(id, overseer.SessionFailed, opened.Err.Error())
		return status.Error(codes.Unavailable, opened.Err.Error())
	}

	go func() { // the only goroutine that sends on the stream
		for {
			select {
			case m := <-outbox:
				if err := stream.Send(m); err != nil {
					end(err)
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			s.sys.Root.Send(opened.PID, &sessions.FromAgent{Msg: m})
		}
	}()
	select {
	case err := <-recvErr:
		s.sys.Root.Send(opened.PID, &sessions.StreamClosed{Err: err})
		return nil
	case <-ctx.Done():
		// An agent that half-closed and hung up at once makes both ready:
		// its clean end-of-stream wins.
		select {
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				s.sys.Root.Send(opened.PID, &sessions.StreamClosed{Err: err})
				return nil
			}
		default:
		}
		cause := context.Cause(ctx)
		if errors.Is(cause, context.Canceled) && stream.Context().Err() != nil {
			s.sys.Root.Send(opened.PID, &sessions.StreamClosed{Err: stream.Context().Err()})
			return nil
		}
		return status.Error(codes.Unavailable, cause.Error())
	}
}

func (s *agentService) publish(id identity, st overseer.SessionState, reason string) {
	s.sys.Root.Send(s.overseer, &overseer.Publish{Event: &overseer.SessionEvent{
		Agent: id.name(), ContainerID: id.ContainerID, State: st, Reason: reason, At: time.Now().UTC(),
	}})
}

// recvWithin receives one message or gives up after d.
func recvWithin(stream agentv1.AgentService_SessionServer, d time.Duration) (*agentv1.AgentMessage, error) {
	type result struct {
		m   *agentv1.AgentMessage
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, err := stream.Recv()
		ch <- result{m, err}
	}()
	select {
	case r := <-ch:
		return r.m, r.err
	case <-time.After(d):
		return nil, fmt.Errorf("no message within %s", d)
	}
}
