package firewall

import (
	"context"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/request"
)

// Client asks the firewall from outside its mailbox (the gRPC handlers).
// The error of each method says only that the request got no proper
// answer (actor.ErrTimeout, actor.ErrDeadLetter, request.ErrNoActor,
// request.ErrWrongReply, ctx's error: see request.Ask); what the firewall
// said is the answer's Err.
type Client struct{ t request.Target }

// NewClient returns a client of the firewall at pid (nil: every request
// fails with request.ErrNoActor).
func NewClient(sys *actor.ActorSystem, pid *actor.PID, timeout time.Duration) Client {
	return Client{request.Target{Sys: sys, PID: pid, Timeout: timeout}}
}

// Wired reports whether there is a firewall actor to ask.
func (c Client) Wired() bool { return c.t.PID != nil }

// Timeout is how long each request waits for its answer.
func (c Client) Timeout() time.Duration { return c.t.Timeout }

// Mutation is a request answered with *Result.
type Mutation interface{ answeredWithResult() }

func (*Enable) answeredWithResult()     {}
func (*Disable) answeredWithResult()    {}
func (*Bypass) answeredWithResult()     {}
func (*SyncRoutes) answeredWithResult() {}
func (*StackUp) answeredWithResult()    {}
func (*StackDown) answeredWithResult()  {}

// RulesRequest is a request answered with *RulesResult.
type RulesRequest interface{ answeredWithRulesResult() }

func (*AddRules) answeredWithRulesResult()    {}
func (*RemoveRule) answeredWithRulesResult()  {}
func (*ListRules) answeredWithRulesResult()   {}
func (*ReloadRules) answeredWithRulesResult() {}

// Enforce enforces an agent container (see Enforce).
func (c Client) Enforce(ctx context.Context, containerID string) (*EnforceResult, error) {
	return request.Ask[*EnforceResult](ctx, c.t, &Enforce{ContainerID: containerID})
}

// Mutate runs one mutation on the action queue.
func (c Client) Mutate(ctx context.Context, m Mutation) (*Result, error) {
	return request.Ask[*Result](ctx, c.t, m)
}

// Rules runs one rule request.
func (c Client) Rules(ctx context.Context, m RulesRequest) (*RulesResult, error) {
	return request.Ask[*RulesResult](ctx, c.t, m)
}

// Status reads the enforcement state. A firewall that could not ask the
// eBPF owner answers *StatusError, which this reports as
// request.ErrWrongReply (it is not a *Status).
func (c Client) Status(ctx context.Context) (*Status, error) {
	return request.Ask[*Status](ctx, c.t, &GetStatus{})
}

// Denied reads the recent refusals of the stack (see GetDenied).
func (c Client) Denied(ctx context.Context, m GetDenied) (*DeniedResult, error) {
	return request.Ask[*DeniedResult](ctx, c.t, &m)
}
