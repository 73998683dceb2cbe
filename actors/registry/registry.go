// Package registry is the sole writer of the agent identity registry, a
// sqlite file (pkg/agentdb). Database calls run off the mailbox, in a
// goroutine that answers the requester directly, so a slow fsync never
// stalls the actor; last_seen updates are batched in memory and written in
// one transaction per flush interval rather than one per heartbeat.
package registry

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/agentdb"
)

// Config wires the registry.
type Config struct {
	Path          string        // the sqlite file
	FlushInterval time.Duration // how often batched last_seen updates are written
	OpTimeout     time.Duration // bound on each database call
	Log           *zap.Logger
}

// Register binds an agent identity; the answer is *RegisterResult. With
// ExistingOnly (the caller may not create a binding, e.g. it lacks the
// token a new one needs) a binding that does not exist yet is answered
// with an Err wrapping agentdb.ErrNotFound and nothing is written; an
// existing one is confirmed in that one request and sqlite transaction
// (agentdb.RegisterExisting), with no Get before it.
type Register struct {
	Agent        agentdb.Agent
	ExistingOnly bool
}

// RegisterResult answers Register.
type RegisterResult struct {
	Agent   agentdb.Agent
	Created bool
	Err     error
}

// List asks for every registered agent; the answer is *ListResult.
type List struct{}

// ListResult answers List.
type ListResult struct {
	Agents []agentdb.Agent
	Err    error
}

// Get asks for one agent by key; the answer is *GetResult.
type Get struct{ Key string }

// GetResult answers Get; Err wraps agentdb.ErrNotFound for an unknown key.
type GetResult struct {
	Agent agentdb.Agent
	Err   error
}

// Seen records that the agent with Key was heard from at At. Fire and
// forget: it is batched.
type Seen struct {
	Key string
	At  time.Time
}

// DeleteContainer removes the row bound to a container; answer *DeleteResult.
type DeleteContainer struct{ ContainerID string }

// DeleteResult answers DeleteContainer.
type DeleteResult struct {
	Removed int
	Err     error
}

// CheckHealth asks whether the database answers; the answer is an error
// value (nil when healthy) wrapped in *HealthResult.
type CheckHealth struct{}

// HealthResult answers CheckHealth.
type HealthResult struct{ Err error }

type flushTick struct{}

// Actor owns the database handle.
type Actor struct {
	cfg      Config
	db       *agentdb.DB
	pending  map[string]time.Time
	ticker   *time.Ticker
	stop     chan struct{}
	inflight sync.WaitGroup
}

// New returns a producer of fresh registry actors.
func New(cfg Config) actor.Producer {
	return func() actor.Actor { return &Actor{cfg: cfg, pending: map[string]time.Time{}} }
}

// Receive handles the registry's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		supervise.ReportReady(ctx, a.open(ctx))
	case *actor.Stopping, *actor.Restarting:
		a.close()
	case *Register:
		a.async(ctx, func(c context.Context) any {
			if m.ExistingOnly {
				ag, err := a.db.RegisterExisting(c, m.Agent)
				return &RegisterResult{Agent: ag, Err: err}
			}
			ag, created, err := a.db.Register(c, m.Agent)
			return &RegisterResult{Agent: ag, Created: created, Err: err}
		})
	case *List:
		a.async(ctx, func(c context.Context) any {
			ags, err := a.db.List(c)
			return &ListResult{Agents: ags, Err: err}
		})
	case *Get:
		a.async(ctx, func(c context.Context) any {
			ag, err := a.db.Get(c, m.Key)
			return &GetResult{Agent: ag, Err: err}
		})
	case *DeleteContainer:
		a.async(ctx, func(c context.Context) any {
			n, err := a.db.DeleteByContainer(c, m.ContainerID)
			return &DeleteResult{Removed: n, Err: err}
		})
	case *CheckHealth:
		a.async(ctx, func(c context.Context) any { return &HealthResult{Err: a.db.Ping(c)} })
	case *Seen:
		if m.At.After(a.pending[m.Key]) {
			a.pending[m.Key] = m.At
		}
	case *flushTick:
		a.flush()
	}
}

func (a *Actor) open(ctx actor.Context) error {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := agentdb.Open(c, a.cfg.Path)
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	a.db = db
	a.ticker = time.NewTicker(a.cfg.FlushInterval)
	a.stop = make(chan struct{})
	self, sys, tick, stop := ctx.Self(), ctx.ActorSystem(), a.ticker.C, a.stop
	go func() {
		for {
			select {
			case <-tick:
				sys.Root.Send(self, &flushTick{})
			case <-stop:
				return
			}
		}
	}()
	a.cfg.Log.Info("registry open", zap.String("event", "registry_open"), zap.String("path", db.Path()))
	return nil
}

// async runs op off the mailbox and sends its result to the requester.
func (a *Actor) async(ctx actor.Context, op func(context.Context) any) {
	sender, sys := ctx.Sender(), ctx.ActorSystem()
	if a.db == nil {
		return // not open: the requester's timeout reports it
	}
	a.inflight.Add(1)
	go func() {
		defer a.inflight.Done()
		c, cancel := context.WithTimeout(context.Background(), a.cfg.OpTimeout)
		defer cancel()
		res := op(c)
		if sender != nil {
			sys.Root.Send(sender, res)
		}
	}()
}

// flush writes the batched last_seen times in one transaction, off the mailbox.
func (a *Actor) flush() {
	if len(a.pending) == 0 || a.db == nil {
		return
	}
	batch := a.pending
	a.pending = map[string]time.Time{}
	a.inflight.Add(1)
	go func() {
		defer a.inflight.Done()
		c, cancel := context.WithTimeout(context.Background(), a.cfg.OpTimeout)
		defer cancel()
		if err := a.db.TouchLastSeen(c, batch); err != nil {
			a.cfg.Log.Warn("last_seen flush failed", zap.String("event", "registry_flush_failed"), zap.Int("agents", len(batch)), zap.Error(err))
		}
	}()
}

// close flushes what is pending, waits for in-flight calls and closes the
// file. Each call is bounded by OpTimeout, so this is bounded too.
func (a *Actor) close() {
	if a.db == nil {
		return
	}
	close(a.stop)
	a.ticker.Stop()
	a.flush()
	a.inflight.Wait()
	if err := a.db.Close(); err != nil {
		a.cfg.Log.Warn("closing the registry", zap.String("event", "registry_close_failed"), zap.Error(err))
	}
	a.db = nil
}
