// Package registry is the sole writer of the agent identity registry, a
// sqlite file (pkg/agentdb). Opening the file and every database call run
// off the mailbox, in a goroutine that reports back or answers the
// requester directly, so a slow open (a lock held, a migration) or fsync
// never stalls the actor; last_seen updates are batched in memory and
// written in one transaction per flush interval rather than one per
// heartbeat.
package registry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/scheduler"
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

// Register binds an agent identity; the answer is *RegisterResult.
//
// MayCreate, when set, is the caller's permission to create a binding,
// evaluated lazily: the registry asks it only when the container turns out
// not to be bound yet, so an existing binding is confirmed in one sqlite
// transaction (agentdb.RegisterExisting) without it, and a container bound
// to another key or name is refused without it. When it answers an error,
// nothing is written and the answer's Err is that error, as it was; when
// nil, the binding is created (agentdb.Register, which checks again in its
// own transaction). It runs off the mailbox and between the two writes,
// under neither: a slow permission (a Hydra introspection) holds up no
// other write. Nil MayCreate creates a new binding freely.
type Register struct {
	Agent     agentdb.Agent
	MayCreate func(context.Context) error
}

// RegisterResult answers Register.
type RegisterResult struct {
	Agent   agentdb.Agent
	Created bool
	Err     error
}

// List asks for the registered agents in (project, agent name) order, the
// ones after After, at most Limit of them (0: no limit); the answer is
// *ListResult. It is answered from memory (index.go), never from sqlite.
type List struct {
	After Cursor
	Limit int
}

// ListResult answers List.
type ListResult struct {
	Agents []agentdb.Agent
	More   bool // bindings follow the last one listed
	Total  int  // bindings in the registry when this was read
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
// value (nil when healthy) wrapped in *HealthResult, ErrOpening at once
// while the file is still being opened.
type CheckHealth struct{}

// HealthResult answers CheckHealth.
type HealthResult struct{ Err error }

type flushTick struct{}

// ErrOpening answers CheckHealth while the file is being opened.
var ErrOpening = errors.New("registry: the database is still being opened")

// openTimeout bounds opening the file, migrations included.
const openTimeout = 30 * time.Second

// opening is one open of the file in flight, off the mailbox. If the actor
// stops or restarts meanwhile, whichever of it and the goroutine comes
// last closes the file.
type opening struct {
	mu        sync.Mutex
	db        *agentdb.DB
	idx       *index
	abandoned bool
	cancel    context.CancelFunc
}

// opened reports an opening's outcome.
type opened struct {
	o   *opening
	err error
}

// Actor owns the database handle.
type Actor struct {
	cfg     Config
	db      *agentdb.DB
	idx     *index // the bindings in memory, set with db (index.go)
	pending map[string]time.Time
	// stopTicks cancels the flush timer (protoactor's scheduler).
	stopTicks scheduler.CancelFunc
	inflight  sync.WaitGroup
	opening   *opening // the open in flight, nil once it reported
	// held are the requests that came while the file was being opened,
	// run once it is open.
	held []func()
}

// New returns a producer of fresh registry actors.
func New(cfg Config) actor.Producer {
	return func() actor.Actor { return &Actor{cfg: cfg, pending: map[string]time.Time{}} }
}

// Receive handles the registry's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.open(ctx)
	case *opened:
		a.onOpened(ctx, m)
	case *actor.Stopping, *actor.Restarting:
		a.close()
	case *Register:
		a.async(ctx, func(c context.Context) any { return a.register(c, m) })
	case *List:
		a.list(ctx, m)
	case *Get:
		a.async(ctx, func(c context.Context) any {
			ag, err := a.db.Get(c, m.Key)
			return &GetResult{Agent: ag, Err: err}
		})
	case *DeleteContainer:
		a.asyncWrite(ctx, m, func(c context.Context) any {
			n, err := a.db.DeleteByContainer(c, m.ContainerID)
			return &DeleteResult{Removed: n, Err: err}
		})
	case *CheckHealth:
		if a.opening != nil {
			ctx.Respond(&HealthResult{Err: ErrOpening})
			return
		}
		a.async(ctx, func(c context.Context) any { return &HealthResult{Err: a.db.Ping(c)} })
	case *Seen:
		if m.At.After(a.pending[m.Key]) {
			a.pending[m.Key] = m.At
		}
	case *flushTick:
		a.flush()
	}
}

// register is one Register request, off the mailbox (see Register): each
// write is one step under the index's write lock (writeStep), the
// permission between them.
func (a *Actor) register(c context.Context, m *Register) *RegisterResult {
	if m.MayCreate != nil {
		r := a.writeStep(m, func() *RegisterResult {
			ag, err := a.db.RegisterExisting(c, m.Agent)
			return &RegisterResult{Agent: ag, Err: err}
		})
		if !errors.Is(r.Err, agentdb.ErrNotFound) {
			return r
		}
		if err := m.MayCreate(c); err != nil {
			return &RegisterResult{Err: err}
		}
	}
	return a.writeStep(m, func() *RegisterResult {
		ag, created, err := a.db.Register(c, m.Agent)
		return &RegisterResult{Agent: ag, Created: created, Err: err}
	})
}

// writeStep runs one write of a Register as asyncWrite runs a request:
// under the index's write lock, recorded in the index once committed.
func (a *Actor) writeStep(m *Register, op func() *RegisterResult) *RegisterResult {
	x := a.idx
	x.writes.Lock()
	defer x.writes.Unlock()
	r := op()
	x.committed(m, r)
	return r
}

// open opens the file in a goroutine that reports back (opened); the actor
// reports Ready then.
func (a *Actor) open(ctx actor.Context) {
	run, cancel := context.WithTimeout(context.Background(), openTimeout)
	o := &opening{cancel: cancel}
	a.opening = o
	self, sys, path := ctx.Self(), ctx.ActorSystem(), a.cfg.Path
	go func() {
		defer cancel()
		db, err := agentdb.Open(run, path)
		var idx *index
		if err == nil {
			if idx, err = loadIndex(run, db); err != nil {
				_ = db.Close()
				db = nil
			}
		}
		o.mu.Lock()
		defer o.mu.Unlock()
		if o.abandoned {
			if db != nil {
				_ = db.Close()
			}
			return
		}
		o.db, o.idx = db, idx
		sys.Root.Send(self, &opened{o: o, err: err})
	}()
}

func (a *Actor) onOpened(ctx actor.Context, m *opened) {
	if m.o != a.opening {
		return // an earlier incarnation's: its close closed the file
	}
	a.opening = nil
	held := a.held
	a.held = nil
	if m.err != nil {
		// The held requests go unanswered, as every later one: their
		// requesters' timeouts report it.
		supervise.ReportReady(ctx, fmt.Errorf("registry: %w", m.err))
		return
	}
	a.db, a.idx = m.o.db, m.o.idx
	every := a.cfg.FlushInterval
	a.stopTicks = scheduler.NewTimerScheduler(ctx.ActorSystem().Root).SendRepeatedly(every, every, ctx.Self(), &flushTick{})
	a.cfg.Log.Info("registry open", zap.String("event", "registry_open"), zap.String("path", a.db.Path()))
	supervise.ReportReady(ctx, nil)
	for _, req := range held {
		req()
	}
}

// async runs op off the mailbox and sends its result to the requester.
func (a *Actor) async(ctx actor.Context, op func(context.Context) any) {
	sender, sys := ctx.Sender(), ctx.ActorSystem()
	if a.opening != nil {
		a.held = append(a.held, func() { a.runOp(sys, sender, op) })
		return
	}
	if a.db == nil {
		return // not open: the requester's timeout reports it
	}
	a.runOp(sys, sender, op)
}

func (a *Actor) runOp(sys *actor.ActorSystem, sender *actor.PID, op func(context.Context) any) {
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
		if err := a.touchLastSeen(c, batch); err != nil {
			a.cfg.Log.Warn("last_seen flush failed", zap.String("event", "registry_flush_failed"), zap.Int("agents", len(batch)), zap.Error(err))
		}
	}()
}

// close flushes what is pending, waits for in-flight calls and closes the
// file. Each call is bounded by OpTimeout, so this is bounded too.
func (a *Actor) close() {
	if o := a.opening; o != nil {
		a.opening = nil
		o.mu.Lock()
		o.abandoned = true
		if o.db != nil {
			_ = o.db.Close()
			o.db = nil
		}
		o.mu.Unlock()
		o.cancel()
	}
	if a.db == nil {
		return
	}
	a.stopTicks()
	a.stopTicks = nil
	a.flush()
	a.inflight.Wait()
	if err := a.db.Close(); err != nil {
		a.cfg.Log.Warn("closing the registry", zap.String("event", "registry_close_failed"), zap.Error(err))
	}
	a.db, a.idx = nil, nil
}
