// Package watcher implements drain-to-zero: the control plane exists to
// supervise agents, so once none has been running for a while it shuts
// itself down.
//
// Every PollInterval the watcher counts the running containers labelled
// dev.clawker.purpose=agent and dev.clawker.managed=true (one Docker list
// call, off the mailbox, bounded by CallTimeout). Once Grace has elapsed
// since the control plane started AND the last ZeroStreak polls in a row
// counted zero, it tells its parent, the root, &root.DrainToZero{}, exactly
// once, and logs event=drain_to_zero. The root runs the ordered drain and the
// CP exits 0.
//
// A poll that fails (Docker unreachable, too slow) is not a zero: it resets
// the streak and logs event=watcher_unavailable, so the CP never drains
// because Docker was down.
//
// The count is host-wide: every agent container on the daemon keeps the CP
// up, whoever started it.
package watcher

import (
	"context"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/scheduler"
	"github.com/moby/moby/client"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/root"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// Docker is the part of the Docker API client the watcher uses;
// *client.Client implements it.
type Docker interface {
	ContainerList(ctx context.Context, options client.ContainerListOptions) (client.ContainerListResult, error)
}

// Config wires the watcher (control_plane.watcher in settings.yaml).
type Config struct {
	// Enable false leaves the watcher idle: the CP then runs until it is
	// told to stop (control_plane.watcher.enable).
	Enable       bool
	PollInterval time.Duration
	Grace        time.Duration
	ZeroStreak   int
	// Started is when the control plane started; Grace counts from it, not
	// from the watcher's own (re)start. Zero means the watcher's first
	// start.
	Started time.Time
	// Docker is the client to use. When nil the watcher builds one for Host
	// when it starts, and closes it when it stops.
	Docker Docker
	// Host is the daemon's address when Docker is nil; "" means DOCKER_HOST,
	// else unix:///var/run/docker.sock.
	Host string
	// CallTimeout bounds each list call (default: PollInterval, at most 10s).
	CallTimeout time.Duration
	Log         *zap.Logger
}

// Actor is the watcher.
type Actor struct {
	cfg     Config
	docker  Docker
	owned   *client.Client
	started time.Time
	// stopTicks cancels the poll timer (protoactor's scheduler).
	stopTicks scheduler.CancelFunc
	run       context.Context // cancelled when the actor stops
	cancel    context.CancelFunc

	polling bool // a poll is in flight; a tick meanwhile is skipped
	polls   int  // completed polls
	streak  int  // consecutive polls that counted zero
	failing bool // the last poll failed
	sent    bool // DrainToZero was sent
}

type tick struct{}

// polled is a poll's result.
type polled struct {
	count int
	err   error
	took  time.Duration
}

// New returns a producer of fresh watchers.
func New(cfg Config) actor.Producer {
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = min(cfg.PollInterval, 10*time.Second)
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	return func() actor.Actor { return &Actor{cfg: cfg} }
}

// Receive handles the watcher's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.start(ctx)
	case *actor.Stopping, *actor.Restarting:
		a.stop()
	case *tick:
		a.poll(ctx)
	case *polled:
		a.onPolled(ctx, m)
	}
}

func (a *Actor) start(ctx actor.Context) {
	supervise.ReportReady(ctx, nil)
	a.started = a.cfg.Started
	if a.started.IsZero() {
		a.started = time.Now()
	}
	if !a.cfg.Enable {
		a.cfg.Log.Info("drain-to-zero disabled (control_plane.watcher.enable: false)", zap.String("event", "watcher_disabled"))
		return
	}
	if a.cfg.PollInterval <= 0 || a.cfg.ZeroStreak < 1 {
		// settings.Validate rules this out; never spin.
		a.cfg.Log.Error("drain-to-zero disabled: bad settings", zap.String("event", "watcher_disabled"),
			zap.Duration("poll_interval", a.cfg.PollInterval), zap.Int("zero_streak", a.cfg.ZeroStreak))
		return
	}
	a.docker = a.cfg.Docker
	if a.docker == nil {
		c, err := dockerx.New(a.cfg.Host)
		if err != nil {
			a.cfg.Log.Error("drain-to-zero disabled: no Docker client", zap.String("event", "watcher_unavailable"), zap.Error(err))
			return
		}
		a.owned, a.docker = c, c
	}
	a.run, a.cancel = context.WithCancel(context.Background())
	every := a.cfg.PollInterval
	a.stopTicks = scheduler.NewTimerScheduler(ctx.ActorSystem().Root).SendRepeatedly(every, every, ctx.Self(), &tick{})
	a.cfg.Log.Info("watching for agents", zap.String("event", "watcher_started"),
		zap.Duration("poll_interval", a.cfg.PollInterval), zap.Duration("grace", a.cfg.Grace),
		zap.Int("zero_streak", a.cfg.ZeroStreak), zap.Time("cp_started", a.started))
}

func (a *Actor) stop() {
	if a.stopTicks != nil {
		a.stopTicks()
		a.cancel()
		a.stopTicks = nil
	}
	if a.owned != nil {
		_ = a.owned.Close()
		a.owned = nil
	}
}

// poll counts the running agent containers in a goroutine that reports back.
func (a *Actor) poll(ctx actor.Context) {
	if a.polling || a.sent || a.docker == nil {
		return
	}
	a.polling = true
	docker, timeout, run, sys, self := a.docker, a.cfg.CallTimeout, a.run, ctx.ActorSystem(), ctx.Self()
	go func() {
		begin := time.Now()
		res, err := dockerx.Call(run, timeout, func(c context.Context) (client.ContainerListResult, error) {
			// All=false: running containers only.
			return docker.ContainerList(c, client.ContainerListOptions{Filters: dockerx.AgentFilter()})
		})
		if run.Err() == nil { // the actor still runs
			sys.Root.Send(self, &polled{count: len(res.Items), err: err, took: time.Since(begin)})
		}
	}()
}

func (a *Actor) onPolled(ctx actor.Context, m *polled) {
	a.polling = false
	if a.sent {
		return
	}
	a.polls++
	if m.err != nil {
		a.streak = 0
		// Each failure is logged: at most one line per poll interval.
		a.cfg.Log.Warn("cannot count agent containers; not draining", zap.String("event", "watcher_unavailable"),
			zap.Error(fmt.Errorf("listing agent containers: %w", m.err)), zap.Int("polls", a.polls),
			zap.Float64("took_ms", float64(m.took.Microseconds())/1000))
		a.failing = true
		return
	}
	if a.failing {
		a.failing = false
		a.cfg.Log.Info("counting agent containers again", zap.String("event", "watcher_recovered"), zap.Int("agents", m.count))
	}
	if m.count > 0 {
		a.streak = 0
		return
	}
	a.streak++
	up := time.Since(a.started)
	if up < a.cfg.Grace || a.streak < a.cfg.ZeroStreak {
		return
	}
	a.sent = true
	a.cfg.Log.Info("no agent containers left; draining the control plane", zap.String("event", "drain_to_zero"),
		zap.Int("agents", m.count), zap.Int("zero_streak", a.streak), zap.Int("polls", a.polls),
		zap.Float64("since_start_ms", float64(up.Microseconds())/1000), zap.Duration("grace", a.cfg.Grace))
	if p := ctx.Parent(); p != nil {
		ctx.Send(p, &root.DrainToZero{})
	}
}
