package registry

import (
	"context"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/request"
)

// Client asks the registry from outside its mailbox (gRPC handlers,
// probes). Each method waits for the typed answer within the client's
// timeout and ctx; its error says only that the request got no proper
// answer (actor.ErrTimeout, actor.ErrDeadLetter, request.ErrNoActor,
// request.ErrWrongReply, ctx's error). What the database said is the
// answer's Err.
type Client struct{ t request.Target }

// NewClient returns a client of the registry at pid.
func NewClient(sys *actor.ActorSystem, pid *actor.PID, timeout time.Duration) Client {
	return Client{request.Target{Sys: sys, PID: pid, Timeout: timeout}}
}

// Register binds an agent identity (see Register). The registry's Receive
// runs it off the mailbox as agentdb.Register, or agentdb.RegisterExisting
// with ExistingOnly: one sqlite transaction either way.
func (c Client) Register(ctx context.Context, m Register) (*RegisterResult, error) {
	return request.Ask[*RegisterResult](ctx, c.t, &m)
}

// Get reads one binding by key.
func (c Client) Get(ctx context.Context, key string) (*GetResult, error) {
	return request.Ask[*GetResult](ctx, c.t, &Get{Key: key})
}

// List reads every binding.
func (c Client) List(ctx context.Context) (*ListResult, error) {
	return request.Ask[*ListResult](ctx, c.t, &List{})
}

// CheckHealth asks whether the database answers.
func (c Client) CheckHealth(ctx context.Context) (*HealthResult, error) {
	return request.Ask[*HealthResult](ctx, c.t, &CheckHealth{})
}
