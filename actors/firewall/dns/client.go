package dns

import (
	"context"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/request"
	"github.com/clawker/clawker-cp/pkg/stackapi"
)

// Client asks the DNS owner from outside its mailbox (the stack service's
// handler, the netlogger's enricher). The error says only that the request
// got no proper answer (see request.Ask); what the owner said is the
// answer's Err.
type Client struct{ t request.Target }

// NewClient returns a client of the DNS owner at pid.
func NewClient(sys *actor.ActorSystem, pid *actor.PID, timeout time.Duration) Client {
	return Client{request.Target{Sys: sys, PID: pid, Timeout: timeout}}
}

// ReportAnswers hands the owner one reply's A records and waits until the
// kernel knows every address (see ReportAnswers).
func (c Client) ReportAnswers(ctx context.Context, answers []stackapi.Answer) (*AnswersDone, error) {
	return request.Ask[*AnswersDone](ctx, c.t, &ReportAnswers{Answers: answers})
}

// GetIdentities reads the IP -> rule-id table.
func (c Client) GetIdentities(ctx context.Context) (*Identities, error) {
	return request.Ask[*Identities](ctx, c.t, &GetIdentities{})
}
