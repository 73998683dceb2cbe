package agentd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/clawker/clawker-cp/pkg/naming"
	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

const (
	// maxChunk is the largest CommandOutput data.
	maxChunk = 32 << 10
	// outputGrace is how long an init step's output is still read after
	// the process exited (a grandchild may hold the pipe open).
	outputGrace = 2 * time.Second
)

func commandKind(cmd *agentv1.Command) string {
	switch cmd.GetKind().(type) {
	case *agentv1.Command_RunInitStep:
		return "run_init_step"
	case *agentv1.Command_SetupMcp:
		return "setup_mcp"
	case *agentv1.Command_Shutdown:
		return "shutdown"
	}
	return "unknown"
}

// dispatch runs one command in its own goroutine. Its output and its one
// result go back on the Session that delivered it.
func (a *agent) dispatch(s *session, cmd *agentv1.Command) {
	id, kind := cmd.GetId(), commandKind(cmd)
	if id == "" {
		a.log.warn("command_invalid", "ignored a command without an id", "kind", kind)
		return
	}
	if !s.claim(id) {
		// Answering again would break "one result per id".
		a.log.warn("command_duplicate", "ignored a command id already seen on this session", "id", id, "kind", kind)
		return
	}
	a.log.info("command_received", "command received", "id", id, "kind", kind)
	a.cmdWG.Add(1)
	go func() {
		defer a.cmdWG.Done()
		start := time.Now()
		if sd := cmd.GetShutdown(); sd != nil {
			a.shutdown(s, id, sd, start)
			return
		}
		var res *agentv1.CommandResult
		switch k := cmd.GetKind().(type) {
		case *agentv1.Command_RunInitStep:
			res = a.runInitStep(s, id, k.RunInitStep)
		case *agentv1.Command_SetupMcp:
			res = a.setupMCP(k.SetupMcp)
		default:
			res = &agentv1.CommandResult{Error: "unknown command kind"}
		}
		a.finish(s, id, kind, res, start)
	}()
}

// finish logs and sends a command's result.
func (a *agent) finish(s *session, id, kind string, res *agentv1.CommandResult, start time.Time) {
	res.Id = id
	args := []any{"id", id, "kind", kind, "ok", res.GetOk(), "exit_code", res.GetExitCode(),
		"duration_ms", time.Since(start).Milliseconds()}
	if res.GetOk() {
		a.log.info("command_finished", "command finished", args...)
	} else {
		a.log.warn("command_finished", "command failed", append(args, "error", res.GetError())...)
	}
	if err := s.send(&agentv1.AgentMessage{Msg: &agentv1.AgentMessage_CommandResult{CommandResult: res}}); err != nil {
		// The Session that sent the command is gone; the CP has already
		// failed the command on its side.
		a.log.warn("command_result_dropped", "the session of the command is gone; result dropped", "id", id, "kind", kind)
	}
}

func failed(format string, args ...any) *agentv1.CommandResult {
	return &agentv1.CommandResult{Error: fmt.Sprintf(format, args...)}
}

// notRun is the result of an init step whose process never ran.
func notRun(format string, args ...any) *agentv1.CommandResult {
	return &agentv1.CommandResult{ExitCode: -1, Error: fmt.Sprintf(format, args...)}
}

// runInitStep runs argv (no shell) and streams its output.
func (a *agent) runInitStep(s *session, id string, r *agentv1.RunInitStep) *agentv1.CommandResult {
	argv := r.GetArgv()
	if len(argv) == 0 || argv[0] == "" {
		return notRun("run_init_step: argv is empty")
	}
	env, err := mergeEnv(os.Environ(), r.GetEnv())
	if err != nil {
		return notRun("run_init_step: env: %v", err)
	}
	var timeout time.Duration
	if t := r.GetTimeout(); t != nil {
		if err := t.CheckValid(); err != nil {
			return notRun("run_init_step: timeout: %v", err)
		}
		if timeout = t.AsDuration(); timeout < 0 {
			return notRun("run_init_step: timeout: must not be negative, got %s", timeout)
		}
	}
	ctx, cancel := a.cmdCtx, context.CancelFunc(func() {})
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, timeout)
	}
	defer cancel()

	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout = &outputWriter{s: s, id: id, stream: agentv1.OutputStream_OUTPUT_STREAM_STDOUT}
	cmd.Stderr = &outputWriter{s: s, id: id, stream: agentv1.OutputStream_OUTPUT_STREAM_STDERR}
	newGroup(cmd)
	if err := runAs(cmd, r.GetUid()); err != nil {
		return notRun("run_init_step: %v", err)
	}
	// On timeout (or clawkerd exiting) the whole process group goes.
	cmd.Cancel = func() error { return signalGroup(cmd.Process.Pid, sigKill) }
	cmd.WaitDelay = outputGrace
	if err := a.procs.start(cmd); err != nil {
		return notRun("run_init_step: %v", err)
	}
	waitErr := a.procs.wait(cmd)
	ps := cmd.ProcessState
	if ps == nil {
		return notRun("run_init_step: %v", waitErr)
	}
	if !ps.Success() {
		switch {
		case timeout > 0 && errors.Is(ctx.Err(), context.DeadlineExceeded):
			return notRun("run_init_step: timeout: process group killed after %s", timeout)
		case a.cmdCtx.Err() != nil:
			return notRun("run_init_step: clawkerd is stopping: process group killed")
		}
		return &agentv1.CommandResult{ExitCode: int32(exitCode(ps)), Error: "run_init_step: " + exitText(ps)}
	}
	return &agentv1.CommandResult{Ok: true}
}

// mergeEnv is base with overrides applied (exec.Cmd keeps the last value
// of a duplicated name). Overrides are added in name order.
func mergeEnv(base []string, overrides map[string]string) ([]string, error) {
	names := make([]string, 0, len(overrides))
	for k, v := range overrides {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, fmt.Errorf("invalid variable name %q", k)
		}
		if strings.ContainsRune(v, 0) {
			return nil, fmt.Errorf("value of %s contains a NUL byte", k)
		}
		names = append(names, k)
	}
	slices.Sort(names)
	env := slices.Clip(base)
	for _, k := range names {
		env = append(env, k+"="+overrides[k])
	}
	return env, nil
}

// outputWriter turns a process's output into CommandOutput messages of at
// most maxChunk bytes. It never fails: once the Session is gone the output
// is dropped, and the process is not killed by a broken pipe for it.
type outputWriter struct {
	s      *session
	id     string
	stream agentv1.OutputStream
}

func (w *outputWriter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += maxChunk {
		chunk := bytes.Clone(p[off:min(off+maxChunk, len(p))])
		_ = w.s.send(&agentv1.AgentMessage{Msg: &agentv1.AgentMessage_CommandOutput{CommandOutput: &agentv1.CommandOutput{
			Id: w.id, Stream: w.stream, Data: chunk}}})
	}
	return len(p), nil
}

// setupMCP installs <home>/.clawker/mcp/<name>.json.
func (a *agent) setupMCP(m *agentv1.SetupMCP) *agentv1.CommandResult {
	name := m.GetName()
	if !naming.ValidAgent(name) {
		return failed("setup_mcp: invalid name %q: must match "+naming.AgentRule, name)
	}
	if !json.Valid(m.GetConfigJson()) {
		return failed("setup_mcp: invalid config_json: not valid JSON")
	}
	path, err := writeMCP(a.cfg.Home, name, m.GetConfigJson())
	if err != nil {
		return failed("setup_mcp: %v", err)
	}
	a.log.info("mcp_configured", "MCP server configuration written", "name", name, "path", path)
	return &agentv1.CommandResult{Ok: true}
}

// shutdown stops the user's command (SIGTERM to its process group, SIGKILL
// after grace), answers, and tells the main loop to close the Session and
// exit 0.
func (a *agent) shutdown(s *session, id string, sd *agentv1.Shutdown, start time.Time) {
	grace := defaultGrace
	if g := sd.GetGrace(); g != nil && g.CheckValid() == nil && g.AsDuration() > 0 {
		grace = g.AsDuration()
	}
	a.stopping.Store(true) // before the command exits: its exit is expected now
	a.log.info("shutdown_requested", "the control plane asked to shut down", "id", id, "grace", grace.String())
	if a.work != nil {
		a.work.stop(grace)
	}
	a.finish(s, id, "shutdown", &agentv1.CommandResult{Ok: true}, start)
	a.shutdownOnce.Do(func() { close(a.shutdownDone) })
}
