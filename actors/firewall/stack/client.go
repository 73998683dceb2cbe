package stack

import (
	"context"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/request"
)

// Client asks one member's actor from outside its mailbox (the health
// probe). The error says only that the request got no proper answer (see
// request.Ask).
type Client struct{ t request.Target }

// NewClient returns a client of the member actor at pid.
func NewClient(sys *actor.ActorSystem, pid *actor.PID, timeout time.Duration) Client {
	return Client{request.Target{Sys: sys, PID: pid, Timeout: timeout}}
}

// Status reads what the member's last health check saw.
func (c Client) Status(ctx context.Context) (*MemberStatus, error) {
	return request.Ask[*MemberStatus](ctx, c.t, &GetMemberStatus{})
}
