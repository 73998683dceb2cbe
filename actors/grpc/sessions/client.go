package sessions

import (
	"context"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/request"
)

// Client asks the sessions actor from outside its mailbox (the gRPC
// handlers). The error of each method says only that the request got no
// proper answer (see request.Ask); what the actor said is in the answer.
type Client struct{ t request.Target }

// NewClient returns a client of the sessions actor at pid.
func NewClient(sys *actor.ActorSystem, pid *actor.PID, timeout time.Duration) Client {
	return Client{request.Target{Sys: sys, PID: pid, Timeout: timeout}}
}

// Open starts (or replaces) an agent's Session (see Open).
func (c Client) Open(ctx context.Context, m Open) (*Opened, error) {
	return request.Ask[*Opened](ctx, c.t, &m)
}

// ListConnected reads the keys of every connected agent.
func (c Client) ListConnected(ctx context.Context) (*Connected, error) {
	return request.Ask[*Connected](ctx, c.t, &ListConnected{})
}

// EndAll ends every Session (the grpc_stop drain step), waiting at most
// timeout.
func (c Client) EndAll(ctx context.Context, timeout time.Duration) (*Ended, error) {
	t := c.t
	t.Timeout = timeout
	return request.Ask[*Ended](ctx, t, &EndAll{})
}
