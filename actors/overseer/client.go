package overseer

import (
	"context"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/request"
)

// Client asks the overseer from outside its mailbox (HTTP handlers,
// probes). The error says only that the request got no proper answer (see
// request.Ask).
type Client struct{ t request.Target }

// NewClient returns a client of the overseer at pid.
func NewClient(sys *actor.ActorSystem, pid *actor.PID, timeout time.Duration) Client {
	return Client{request.Target{Sys: sys, PID: pid, Timeout: timeout}}
}

// GetState reads a deep copy of the worldview.
func (c Client) GetState(ctx context.Context) (*State, error) {
	return request.Ask[*State](ctx, c.t, &GetState{})
}
