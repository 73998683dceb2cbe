// Package agentd is clawkerd, the agent daemon that runs as PID 1 inside
// each agent container: it registers the agent with the control plane over
// mTLS, holds one long-lived Session (reconnecting with backoff when it
// breaks), executes the commands the control plane sends down it, and runs
// the user's command once the first Session is established. With
// Config.RequireEnforced, no Session opens (so no command starts) before a
// Register answered that the control plane's firewall enforces the agent.
// With Config.AssertionFile, the first Register carries an access token
// of client clawker-agent, exchanged for the client assertion `clawker
// run` copied in (token.go).
//
// It depends on the standard library, gRPC, the generated agent protos and
// pkg/certs only, so the binary stays small (cmd/clawkerd checks this).
package agentd

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"time"
)

// Exit codes of clawkerd (besides the user's command's own).
const (
	ExitOK            = 0   // Shutdown, or a signal while no command runs
	ExitFailure       = 1   // internal failure
	ExitConfig        = 2   // missing or invalid configuration
	ExitRefused       = 3   // the CP refused the registration
	ExitCannotExecute = 126 // the user's command could not be executed
	ExitNotFound      = 127 // the user's command was not found
)

// defaultGrace is Shutdown's grace when the CP sends none, and the grace
// given to the user's command when clawkerd has to stop on its own.
const defaultGrace = 10 * time.Second

// closeTimeout bounds the clean end of the Session: after our half-close,
// how long to wait for the CP to end the stream before cutting it.
const closeTimeout = 3 * time.Second

// commandsWait bounds the wait for in-flight commands when clawkerd exits
// (their processes are killed first).
const commandsWait = 10 * time.Second

// Main is clawkerd's main: it parses args (without the program name),
// installs the signal handlers and runs. It returns the exit code.
func Main(args []string) int {
	logger := NewLogger(os.Stderr)
	SetGRPCLogger(logger)
	log := eventLog{logger}
	cfg, argv, err := ParseArgs(args, os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(os.Stdout, Usage())
		return ExitOK
	}
	if err != nil {
		log.error("config_invalid", "invalid configuration", "error", err.Error())
		return ExitConfig
	}
	cfg.Logger = logger
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, append(append([]os.Signal{}, StopSignals...), ForwardedSignals...)...)
	defer signal.Stop(sigs)
	cfg.Signals = sigs
	cfg.Reap = os.Getpid() == 1
	return Run(context.Background(), cfg, argv)
}

// Run is clawkerd: it returns the process's exit code. Cancelling ctx acts
// like SIGTERM: the user's command is stopped and Run returns its code.
// userArgv is the user's command; empty means none.
func Run(ctx context.Context, cfg Config, userArgv []string) int {
	cfg = cfg.withDefaults()
	if cfg.Logger == nil {
		cfg.Logger = NewLogger(os.Stderr)
	}
	log := eventLog{cfg.Logger}
	if err := cfg.validate(); err != nil {
		log.error("config_invalid", "invalid configuration", "error", err.Error())
		return ExitConfig
	}
	tlsCfg, chain, err := cfg.tlsConfig()
	if err != nil {
		log.error("config_invalid", "invalid configuration", "error", err.Error())
		return ExitConfig
	}
	tok, err := cfg.agentToken(tlsCfg)
	if err != nil {
		log.error("config_invalid", "invalid configuration", "error", err.Error())
		return ExitConfig
	}
	a := newAgent(cfg, tlsCfg, userArgv)
	a.token = tok
	a.leaves = chain
	return a.run(ctx)
}

type agent struct {
	cfg   Config
	tls   *tls.Config
	log   eventLog
	procs *procTable
	work  *workload // nil without a user command
	// token is the agent's token (token.go); nil without --assertion.
	token *agentToken
	// leaves are the agent's certificates (leaves.go); nil in tests that
	// build the agent around a TLS config of their own.
	leaves *leafChain
	// exhaustedLogged: agent_certs_exhausted was logged (once per run of
	// expired dials). Only the connect loop's goroutine touches it.
	exhaustedLogged bool

	estOnce     sync.Once
	established chan struct{} // closed by the first ControlMessage ever

	refused chan struct{} // the conn loop met a permanent refusal

	// notEnforced counts the Register answers in a row that said
	// enforced=false (with RequireEnforced). Only the connect loop's
	// goroutine touches it.
	notEnforced int

	stopping     atomic.Bool   // no reconnects; the command's exit is expected
	shutdownOnce sync.Once     // closes shutdownDone
	shutdownDone chan struct{} // a Shutdown was carried out and answered

	cmdCtx    context.Context // parent of the commands' processes
	cmdCancel context.CancelFunc
	cmdWG     sync.WaitGroup

	sessMu sync.Mutex
	sess   *session // the open Session, nil between Sessions
}

func newAgent(cfg Config, tlsCfg *tls.Config, argv []string) *agent {
	a := &agent{
		cfg:          cfg,
		tls:          tlsCfg,
		log:          eventLog{cfg.Logger},
		procs:        newProcTable(),
		established:  make(chan struct{}),
		refused:      make(chan struct{}, 1),
		shutdownDone: make(chan struct{}),
	}
	if len(argv) > 0 {
		a.work = &workload{argv: argv, procs: a.procs, log: a.log,
			stdin: cfg.Stdin, stdout: cfg.Stdout, stderr: cfg.Stderr}
		// nil means clawkerd's own stdio.
		if a.work.stdin == nil {
			a.work.stdin = os.Stdin
		}
		if a.work.stdout == nil {
			a.work.stdout = os.Stdout
		}
		if a.work.stderr == nil {
			a.work.stderr = os.Stderr
		}
	}
	return a
}

func (a *agent) run(ctx context.Context) int {
	a.log.info("clawkerd_starting", "clawkerd starting", "cp_addr", a.cfg.CPAddr, "project", a.cfg.Project,
		"agent", a.cfg.Agent, "heartbeat", a.cfg.Heartbeat.String(), "pid", os.Getpid(), "reap", a.cfg.Reap,
		"agent_token", a.token != nil)
	if a.cfg.Reap {
		stop := startReaper(a.procs, a.log)
		defer stop()
	}
	// The Session and the commands outlive ctx: on a stop request the
	// command is stopped first, with the Session still up.
	base := context.WithoutCancel(ctx)
	a.cmdCtx, a.cmdCancel = context.WithCancel(base)
	connCtx, connCancel := context.WithCancel(base)
	connDone := make(chan struct{})
	go func() {
		defer close(connDone)
		a.connectLoop(connCtx)
	}()

	code := a.loop(ctx)

	a.stopping.Store(true)
	a.closeSession(connDone, connCancel)
	a.cmdCancel() // kills the process groups of init steps still running
	if !waitTimeout(&a.cmdWG, commandsWait) {
		a.log.warn("commands_abandoned", "commands still running at exit")
	}
	a.log.info("clawkerd_exiting", "clawkerd exiting", "exit_code", code)
	return code
}

// loop waits for what ends clawkerd and returns the exit code.
func (a *agent) loop(ctx context.Context) int {
	established := a.established
	var exited <-chan struct{}
	ctxDone := ctx.Done()
	for {
		select {
		case <-established:
			established = nil
			if a.work == nil {
				continue
			}
			done, err := a.work.start()
			if errors.Is(err, errBlocked) {
				continue // a Shutdown got there first
			}
			if err != nil {
				a.log.error("agent_command_failed", "cannot start the command", "argv", a.work.argv, "error", err.Error())
				return startExitCode(err)
			}
			a.log.info("agent_command_started", "command started", "argv", a.work.argv, "pid", a.work.pid())
			exited = done

		case <-exited:
			exited = nil
			if a.stopping.Load() {
				continue // a Shutdown stopped it; it answers and ends the loop
			}
			code := a.work.exitCode()
			a.log.info("agent_command_exited", "command exited", "argv", a.work.argv, "exit_code", code)
			return code

		case sig := <-a.cfg.Signals:
			if !isStopSignal(sig) {
				if a.work != nil {
					if err := a.work.signal(sig); err != nil {
						a.log.warn("signal_forward_failed", "cannot forward the signal", "signal", sig.String(), "error", err.Error())
					}
				}
				a.log.info("signal_forwarded", "signal forwarded to the command", "signal", sig.String())
				continue
			}
			if code, done := a.stopRequested(sig); done {
				return code
			}

		case <-ctxDone:
			ctxDone = nil
			if code, done := a.stopRequested(sigTerm); done {
				return code
			}

		case <-a.shutdownDone:
			a.log.info("shutdown", "shut down at the control plane's request")
			return ExitOK

		case <-a.refused:
			// register_failed is logged; the command, if any, goes too.
			if a.work != nil {
				a.work.stop(defaultGrace)
			}
			return ExitRefused
		}
	}
}

// stopRequested handles SIGTERM/SIGINT (or ctx): forward to the command
// and keep waiting for it (done=false), or, with no command running,
// return at once with 0.
func (a *agent) stopRequested(sig os.Signal) (code int, done bool) {
	a.log.info("signal_received", "asked to stop", "signal", sig.String())
	if a.work == nil || !a.work.runningOrBlock() {
		return ExitOK, true
	}
	if err := a.work.signal(sig); err != nil {
		a.log.warn("signal_forward_failed", "cannot forward the signal", "signal", sig.String(), "error", err.Error())
	}
	a.log.info("signal_forwarded", "signal forwarded to the command; waiting for it", "signal", sig.String())
	return 0, false
}

// closeSession ends the Session cleanly: half-close our side and give the
// CP closeTimeout to end the stream, then cut whatever is left.
func (a *agent) closeSession(connDone <-chan struct{}, cancel context.CancelFunc) {
	a.sessMu.Lock()
	s := a.sess
	a.sessMu.Unlock()
	if s != nil {
		// In a goroutine: a Send stuck on flow control holds the lock
		// until cancel below unblocks it.
		go s.closeSend()
		t := time.NewTimer(closeTimeout)
		select {
		case <-connDone:
		case <-t.C:
		}
		t.Stop()
	}
	cancel()
	<-connDone
}

func (a *agent) setSession(s *session) {
	a.sessMu.Lock()
	a.sess = s
	a.sessMu.Unlock()
}

func (a *agent) markEstablished() {
	a.estOnce.Do(func() { close(a.established) })
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}
