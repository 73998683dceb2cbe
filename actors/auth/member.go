package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/scheduler"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/ory"
)

// memberConfig is what one server's actor needs.
type memberConfig struct {
	name         string
	binary       string
	ory          ory.Config
	readyTimeout time.Duration
	stopGrace    time.Duration
	output       io.Writer
	// liveEvery is how often a ready server is probed (0: livenessInterval);
	// liveFailures in a row mean it hangs, and it is replaced.
	liveEvery time.Duration
	log       *zap.Logger
	// last is shared by the member's incarnations: the stop of the
	// previous process, which a restarted member waits out (off its
	// mailbox) before it starts the next one on the same ports.
	last *lastStop
}

// lastStop is the stop of a member's latest process.
type lastStop struct {
	mu   sync.Mutex
	done chan struct{} // closed once the process is gone; nil: none
}

func (l *lastStop) set(done chan struct{}) {
	l.mu.Lock()
	l.done = done
	l.mu.Unlock()
}

// pending is the stop still in flight, or nil.
func (l *lastStop) pending() chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done == nil {
		return nil
	}
	select {
	case <-l.done:
		return nil
	default:
		return l.done
	}
}

// member owns one Ory server process: hydra, kratos or oathkeeper. At
// every (re)start it writes the server's configuration, starts it, waits
// for it off the mailbox and reports Ready. After Ready, an exit it did not
// ask for is a failure: the actor panics and its supervisor (the auth
// actor's strategy) restarts it, which starts a fresh process.
//
// Stopping a process (SIGTERM, SIGKILL after the grace) runs off the
// mailbox, but for the member's own final stop, which waits for it so that
// no server outlives the control plane. A restarted member waits for the
// previous process to be gone, off the mailbox too, before it starts the
// next.
type member struct {
	cfg      memberConfig
	spec     ory.Spec
	probe    func(context.Context) error
	live     scheduler.CancelFunc // the liveness timer, once ready
	probing  bool
	failures int
	proc     *ory.Process
	cancel   context.CancelFunc
	begin    time.Time
	ready    bool
	reported bool // Ready was sent to the parent for this incarnation
	stopping bool
}

// processReady is WaitReady's outcome.
type processReady struct {
	proc *ory.Process
	err  error
}

// processExited reports the exit of the process.
type processExited struct {
	proc *ory.Process
	exit ory.Exit
}

// failMember makes a member fail on purpose (its parent decided that the
// server is unusable): the supervisor restarts it and counts the restart.
type failMember struct{ reason string }

// previousGone says the previous incarnation's process is gone.
type previousGone struct{}

// livenessTick and livenessChecked: a ready server is probed every
// liveEvery, off the mailbox. An exit is seen at once (processExited);
// this finds a server that runs but does not answer (hung, SIGSTOPped).
type (
	livenessTick    struct{}
	livenessChecked struct {
		proc *ory.Process
		err  error
	}
)

// livenessInterval and livenessFailures: a server that fails three probes
// in a row, two seconds apart, is taken for hung.
const (
	livenessInterval = 2 * time.Second
	livenessFailures = 3
)

func newMember(cfg memberConfig) actor.Producer {
	if cfg.last == nil {
		cfg.last = &lastStop{}
	}
	return func() actor.Actor { return &member{cfg: cfg} }
}

func (m *member) Receive(ctx actor.Context) {
	switch msg := ctx.Message().(type) {
	case *actor.Started:
		if done := m.cfg.last.pending(); done != nil {
			self, sys := ctx.Self(), ctx.ActorSystem()
			go func() {
				<-done
				sys.Root.Send(self, &previousGone{})
			}()
			return
		}
		m.start(ctx)
	case *previousGone:
		m.start(ctx)
	case *actor.Stopping:
		// The last thing this actor does: the server must not outlive it.
		if done := m.stop(); done != nil {
			<-done
		}
	case *actor.Restarting:
		m.stop() // the next incarnation waits for it
	case *processReady:
		m.onReady(ctx, msg)
	case *processExited:
		m.onExited(ctx, msg)
	case *failMember:
		panic(msg.reason)
	case *livenessTick:
		m.checkLive(ctx)
	case *livenessChecked:
		m.onLive(msg)
	}
}

func (m *member) checkLive(ctx actor.Context) {
	if m.probing || m.proc == nil || m.stopping || !m.ready {
		return
	}
	m.probing = true
	proc, probe, self, sys := m.proc, m.probe, ctx.Self(), ctx.ActorSystem()
	timeout := min(m.liveEvery(), 2*time.Second)
	go func() {
		c, cancel := context.WithTimeout(context.Background(), timeout)
		err := probe(c)
		cancel()
		sys.Root.Send(self, &livenessChecked{proc: proc, err: err})
	}()
}

func (m *member) onLive(msg *livenessChecked) {
	m.probing = false
	if msg.proc != m.proc || m.stopping {
		return
	}
	if msg.err == nil {
		m.failures = 0
		return
	}
	m.failures++
	if m.failures < livenessFailures {
		return
	}
	m.cfg.log.Error("Ory server does not answer; replacing it", zap.String("event", "ory_unavailable"), zap.String("server", m.cfg.name),
		zap.Int("pid", m.proc.PID()), zap.Int("failed_probes", m.failures), zap.Error(msg.err))
	m.stop() // SIGTERM, then SIGKILL after the grace: a stopped process gets the SIGKILL
	panic(fmt.Sprintf("%s does not answer (%d probes failed: %v)", m.cfg.name, m.failures, msg.err))
}

func (m *member) liveEvery() time.Duration {
	if m.cfg.liveEvery > 0 {
		return m.cfg.liveEvery
	}
	return livenessInterval
}

func (m *member) report(ctx actor.Context, err error) {
	if m.reported {
		return
	}
	m.reported = true
	supervise.ReportReady(ctx, err)
}

func (m *member) start(ctx actor.Context) {
	name := m.cfg.name
	spec, err := m.cfg.ory.Prepare(name)
	if err != nil {
		m.report(ctx, err)
		return
	}
	probe, err := m.cfg.ory.Probe(name)
	if err != nil {
		spec.Files.Remove()
		m.report(ctx, err)
		return
	}
	m.spec = spec
	m.probe = probe
	m.begin = time.Now()
	proc, err := ory.StartProcess(ory.ProcessConfig{
		Name: name, Path: m.cfg.binary, Args: spec.Args, Env: ory.OfflineEnv, Dir: m.cfg.ory.RunDir,
		Output: m.cfg.output, Ready: probe, User: m.cfg.ory.User,
	})
	if err != nil {
		spec.Files.Remove()
		m.report(ctx, err)
		return
	}
	m.proc = proc
	m.cfg.log.Info("Ory server started", zap.String("event", "ory_process_started"), zap.String("server", name),
		zap.Int("pid", proc.PID()), zap.String("binary", m.cfg.binary),
		zap.String("config", spec.Config), zap.Stringer("user", userOf(m.cfg.ory.User)))

	run, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	sys, self, timeout := ctx.ActorSystem(), ctx.Self(), m.cfg.readyTimeout
	go func() {
		err := proc.WaitReady(run, timeout)
		if run.Err() == nil {
			sys.Root.Send(self, &processReady{proc: proc, err: err})
		}
	}()
	go func() {
		select {
		case e := <-proc.Exited():
			if run.Err() == nil {
				sys.Root.Send(self, &processExited{proc: proc, exit: e})
			}
		case <-run.Done():
		}
	}()
}

func (m *member) onReady(ctx actor.Context, msg *processReady) {
	if msg.proc != m.proc || m.proc == nil {
		return // from an earlier process
	}
	if msg.err != nil {
		var nr *ory.NotReadyError
		if errors.As(msg.err, &nr) && nr.Exit != nil {
			return // onExited reports it
		}
		m.cfg.log.Error("Ory server did not become ready", zap.String("event", "ory_process_not_ready"),
			zap.String("server", m.cfg.name), zap.Int("pid", m.proc.PID()), zap.Error(msg.err))
		m.stop()
		m.report(ctx, msg.err)
		return
	}
	m.ready = true
	every := m.liveEvery()
	m.live = scheduler.NewTimerScheduler(ctx).SendRepeatedly(every, every, ctx.Self(), &livenessTick{})
	m.cfg.log.Info("Ory server ready", zap.String("event", "ory_process_ready"), zap.String("server", m.cfg.name),
		zap.Int("pid", m.proc.PID()), zap.Float64("ready_ms", cpapi.Millis(time.Since(m.begin))))
	m.report(ctx, nil)
}

func (m *member) onExited(ctx actor.Context, msg *processExited) {
	if msg.proc != m.proc || m.proc == nil || m.stopping {
		return
	}
	e := msg.exit
	m.cfg.log.Error("Ory server exited", zap.String("event", "ory_process_exited"), zap.String("server", m.cfg.name),
		zap.Int("pid", e.PID), zap.Int("code", e.Code), zap.String("signal", e.Signal), zap.Bool("was_ready", m.ready),
		zap.Float64("uptime_ms", cpapi.Millis(time.Since(m.begin))))
	if !m.ready {
		// Not a crash of a running server but a failed start: say so to
		// the parent, which decides (fail the CP's start-up, or restart us).
		m.stop()
		m.report(ctx, fmt.Errorf("%s exited before it was ready (%s); its output is in the control plane's stderr, prefixed %q",
			m.cfg.name, e, m.cfg.name+": "))
		return
	}
	m.stop()
	panic(fmt.Sprintf("%s exited unexpectedly (%s, pid %d)", m.cfg.name, e, e.PID))
}

// userOf names who a server runs as, for the log.
func userOf(u *ory.User) fmt.Stringer {
	if u == nil {
		return ory.User{UID: os.Geteuid(), GID: os.Getegid()}
	}
	return *u
}

// stop ends the process (SIGTERM, SIGKILL after the grace) and removes its
// configuration files, in a goroutine; the channel it returns is closed
// once the process is gone (nil: no process). Idempotent.
func (m *member) stop() chan struct{} {
	if m.live != nil {
		m.live()
		m.live = nil
	}
	if m.cancel != nil {
		m.cancel()
		m.cancel = nil
	}
	if m.proc == nil {
		return nil
	}
	if m.stopping {
		return m.cfg.last.pending()
	}
	m.stopping = true
	proc, files, grace, log, name := m.proc, m.spec.Files, m.cfg.stopGrace, m.cfg.log, m.cfg.name
	done := make(chan struct{})
	m.cfg.last.set(done)
	go func() {
		defer close(done)
		begin := time.Now()
		_, already := proc.ExitStatus()
		e := proc.Stop(grace)
		files.Remove()
		if !already {
			log.Info("Ory server stopped", zap.String("event", "ory_process_stopped"), zap.String("server", name),
				zap.Int("pid", e.PID), zap.Int("code", e.Code), zap.String("signal", e.Signal),
				zap.Float64("stop_ms", cpapi.Millis(time.Since(begin))))
		}
	}()
	return done
}
