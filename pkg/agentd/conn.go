package agentd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

const (
	// initialBackoff is the first reconnect delay's cap; it doubles per
	// failed attempt up to Config.MaxBackoff, and the delay is drawn
	// uniformly below the cap (full jitter).
	initialBackoff = 200 * time.Millisecond
	// registerTimeout bounds one Register call, dial and handshake included.
	registerTimeout = 10 * time.Second
	// silentBeats heartbeat intervals without any message from the CP
	// break the Session.
	silentBeats = 3
)

// errSilent is the cause of a Session broken by silence.
var errSilent = errors.New("control plane silent")

// errNotEnforced ends an attempt whose Register answered enforced=false
// while Config.RequireEnforced is set: no Session is opened, and the
// connect loop registers again after its backoff.
var errNotEnforced = errors.New("the control plane does not enforce this agent's egress yet")

// refusal is a Register answer that retrying will not change.
type refusal struct{ st *status.Status }

func (r *refusal) Error() string {
	return fmt.Sprintf("registration refused: %s: %s", r.st.Code(), r.st.Message())
}

// retryable reports whether a failed Register is worth another attempt:
// only when the CP could not be reached or did not answer in time. Any
// other status is an answer, and a refusal stays a refusal. (The caller
// has ruled out our own cancellation, so Canceled here means the
// connection went away under the call.)
func retryable(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return true // not a gRPC status: a connection error
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return true
	}
	return false
}

// backoffDelay is the delay before reconnect attempt n (1-based).
func backoffDelay(n int, maxDelay time.Duration) time.Duration {
	d := min(initialBackoff, maxDelay)
	for i := 1; i < n && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	return rand.N(d + 1)
}

// connectLoop keeps a Session up until clawkerd stops or is refused.
func (a *agent) connectLoop(ctx context.Context) {
	attempt := 0
	for {
		established, err := a.runSession(ctx)
		if a.stopping.Load() || ctx.Err() != nil {
			return
		}
		var ref *refusal
		if errors.As(err, &ref) {
			a.refused <- struct{}{}
			return
		}
		if established {
			attempt = 0
		}
		attempt++
		delay := backoffDelay(attempt, a.cfg.MaxBackoff)
		a.log.info("reconnecting", "reconnecting to the control plane", "attempt", attempt,
			"delay", delay.String(), "delay_ms", delay.Milliseconds())
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

// runSession dials, registers and holds one Session until it ends. It
// reports whether the Session was established (the CP sent something).
func (a *agent) runSession(ctx context.Context) (established bool, err error) {
	// The agent's token, exchanged before the first Register (token.go).
	bearer, err := a.bearer(ctx)
	if err != nil {
		return false, err
	}
	a.checkLeaves()
	// A fresh connection per attempt: our backoff, not gRPC's, paces the
	// reconnects, and nothing of a broken connection is reused.
	conn, err := grpc.NewClient(a.cfg.CPAddr,
		grpc.WithTransportCredentials(credentials.NewTLS(a.tls)),
		grpc.WithDisableServiceConfig())
	if err != nil {
		a.log.error("dial_failed", "cannot set up the connection", "cp_addr", a.cfg.CPAddr, "error", err.Error())
		return false, err
	}
	defer conn.Close()
	client := agentv1.NewAgentServiceClient(conn)
	if err := a.register(ctx, client, bearer); err != nil {
		return false, err
	}

	sctx, scancel := context.WithCancelCause(ctx)
	defer scancel(nil)
	stream, err := client.Session(sctx)
	if err != nil {
		if ctx.Err() == nil {
			a.log.warn("session_broken", "cannot open the session", "error", err.Error(), "established", false)
		}
		return false, err
	}
	s := &session{stream: stream, ids: map[string]struct{}{}}
	a.setSession(s)
	defer a.setSession(nil)
	defer s.markDead()
	// A failed send surfaces as the Recv error below.
	_ = s.send(&agentv1.AgentMessage{Msg: &agentv1.AgentMessage_Hello{Hello: &agentv1.Hello{
		Project: a.cfg.Project, AgentName: a.cfg.Agent}}})

	// heard is when the CP was last heard from, in nanoseconds since
	// epoch (a monotonic clock reading).
	epoch := time.Now()
	var heard atomic.Int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a.heartbeats(sctx, s) }()
	go func() { defer wg.Done(); a.watchdog(sctx, epoch, &heard, scancel) }()
	defer wg.Wait()
	defer scancel(nil) // runs before wg.Wait

	var recvErr error
	for {
		msg, err := stream.Recv()
		if err != nil {
			recvErr = err
			break
		}
		heard.Store(int64(time.Since(epoch)))
		if !established {
			established = true
			a.log.info("session_established", "session established")
			a.markEstablished()
		}
		switch m := msg.GetMsg().(type) {
		case *agentv1.ControlMessage_Heartbeat:
		case *agentv1.ControlMessage_Command:
			a.dispatch(s, m.Command)
		default:
			a.log.warn("control_message_unknown", "ignored a control message of an unknown kind")
		}
	}
	cause := recvErr
	if c := context.Cause(sctx); errors.Is(c, errSilent) {
		cause = c
	}
	switch {
	case errors.Is(recvErr, io.EOF) && a.stopping.Load():
		a.log.info("session_closed", "session closed")
		return established, nil
	case ctx.Err() != nil:
		return established, ctx.Err()
	}
	a.log.warn("session_broken", "session broken", "error", cause.Error(), "established", established)
	return established, cause
}

// register calls Register, with "authorization: Bearer <bearer>" and the
// assertion it was exchanged for unless bearer is empty.
func (a *agent) register(ctx context.Context, client agentv1.AgentServiceClient, bearer string) error {
	rctx, cancel := context.WithTimeout(ctx, registerTimeout)
	defer cancel()
	if bearer != "" {
		// The assertion the token came from beside it: its container
		// claim binds the token to this container (token.go).
		rctx = metadata.AppendToOutgoingContext(rctx, "authorization", "Bearer "+bearer, assertionHeader, a.token.assertion.jws)
	}
	resp, err := client.Register(rctx, &agentv1.RegisterRequest{Project: a.cfg.Project, AgentName: a.cfg.Agent})
	if err == nil {
		a.registered()
		a.log.info("registered", "registered with the control plane", "agent_key", resp.GetAgentKey(),
			"registered_at", resp.GetRegisteredAt().AsTime().UTC().Format(time.RFC3339), "enforced", resp.GetEnforced(),
			"with_token", bearer != "")
		if a.cfg.RequireEnforced && !resp.GetEnforced() {
			a.notEnforced++
			a.log.info("waiting_for_enforcement", "the control plane does not enforce this agent's egress yet; the command waits, registering again",
				"attempt", a.notEnforced)
			return errNotEnforced
		}
		a.notEnforced = 0
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	st := status.Convert(err)
	if retryable(err) {
		a.log.warn("register_retry", "cannot register with the control plane, will retry", "cp_addr", a.cfg.CPAddr,
			"code", st.Code().String(), "error", st.Message())
		return err
	}
	a.log.error("register_failed", "the control plane refused the registration", "cp_addr", a.cfg.CPAddr,
		"code", st.Code().String(), "error", st.Message())
	return &refusal{st: st}
}

// heartbeats sends a Heartbeat every interval until ctx ends.
func (a *agent) heartbeats(ctx context.Context, s *session) {
	t := time.NewTicker(a.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_ = s.send(&agentv1.AgentMessage{Msg: &agentv1.AgentMessage_Heartbeat{Heartbeat: &agentv1.Heartbeat{SentAt: timestamppb.Now()}}})
	}
}

// watchdog breaks the Session (cancel with errSilent) once nothing was
// heard from the CP for silentBeats heartbeat intervals. It never sends, so
// a send stuck on flow control cannot keep it from firing.
func (a *agent) watchdog(ctx context.Context, epoch time.Time, heard *atomic.Int64, cancel context.CancelCauseFunc) {
	limit := silentBeats * a.cfg.Heartbeat
	t := time.NewTimer(limit)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		silent := time.Since(epoch) - time.Duration(heard.Load())
		if silent >= limit {
			cancel(fmt.Errorf("%w: nothing received for %s (%d heartbeat intervals)", errSilent, silent.Round(time.Millisecond), silentBeats))
			return
		}
		t.Reset(limit - silent)
	}
}

// session is one open Session stream. gRPC allows one sender at a time:
// every Send (and CloseSend) goes through mu.
type session struct {
	stream agentv1.AgentService_SessionClient

	mu     sync.Mutex
	closed bool

	idsMu sync.Mutex
	ids   map[string]struct{} // command ids seen on this Session
}

var errSessionClosed = errors.New("session closed")

func (s *session) send(m *agentv1.AgentMessage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errSessionClosed
	}
	return s.stream.Send(m)
}

// closeSend half-closes the stream: the CP sees a clean end.
func (s *session) closeSend() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		_ = s.stream.CloseSend()
	}
}

// markDead makes later sends fail fast once the stream is over.
func (s *session) markDead() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

// claim records a command id; false if this Session already saw it.
func (s *session) claim(id string) bool {
	s.idsMu.Lock()
	defer s.idsMu.Unlock()
	if _, dup := s.ids[id]; dup {
		return false
	}
	s.ids[id] = struct{}{}
	return true
}
