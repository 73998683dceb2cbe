package sessions

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/scheduler"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/actors/registry"
	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

// session is one agent's Session.
type session struct {
	cfg       Config
	open      *Open
	log       *zap.Logger
	lastHeard time.Time
	nextID    int
	pending   map[string]*inflight
	stopTick  scheduler.CancelFunc // the heartbeat timer (protoactor's scheduler)
	ended     bool                 // the stream was ended (by us or by the agent)
	broken    bool
}

type inflight struct {
	requester *actor.PID
	stdout    []byte
	stderr    []byte
	truncated bool // one of them reached MaxCommandOutput
	timer     *time.Timer
}

// MaxCommandOutput caps what the CP keeps of each output stream of one
// command: an agent is not trusted to stop sending, and the CP's memory is
// every agent's enforcement.
const MaxCommandOutput = 1 << 20

// appendCapped appends data to *buf up to MaxCommandOutput and reports
// whether all of it fit.
func appendCapped(buf *[]byte, data []byte) bool {
	room := MaxCommandOutput - len(*buf)
	if room <= 0 {
		return len(data) == 0
	}
	if len(data) > room {
		*buf = append(*buf, data[:room]...)
		return false
	}
	*buf = append(*buf, data...)
	return true
}

type heartbeatTick struct{}

type commandTimedOut struct{ id string }

func newSession(cfg Config, o *Open) actor.Producer {
	return func() actor.Actor {
		return &session{cfg: cfg, open: o, pending: map[string]*inflight{},
			log: cfg.Log.With(zap.String("agent", o.Agent), zap.String("container_id", o.ContainerID))}
	}
}

func (s *session) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		s.start(ctx)
	case *actor.Stopping:
		s.stopping(ctx)
	case *actor.Restarting:
		// A restarted session cannot trust what it knew about the stream:
		// end it, the agent reconnects and gets a fresh one.
		s.end(fmt.Errorf("session actor restarted"))
		s.stopping(ctx)
	case *heartbeatTick:
		s.heartbeat(ctx)
	case *FromAgent:
		s.fromAgent(ctx, m.Msg)
	case *StreamClosed:
		s.ended = true
		// io.EOF is the agent closing its side cleanly (e.g. after a
		// Shutdown); anything else is a drop.
		if !errors.Is(m.Err, io.EOF) && !s.broken {
			s.broken = true
			s.publish(ctx, overseer.SessionBroken, errString(m.Err))
		}
		ctx.Stop(ctx.Self())
	case *replace:
		s.end(ErrReplaced)
	case *Dispatch:
		s.dispatch(ctx, m)
	case *commandTimedOut:
		if p, ok := s.pending[m.id]; ok {
			delete(s.pending, m.id)
			ctx.Send(p.requester, &DispatchResult{Err: fmt.Errorf("command %s: no answer from the agent in time", m.id), Stdout: p.stdout, Stderr: p.stderr, Truncated: p.truncated})
		}
	}
}

func (s *session) start(ctx actor.Context) {
	s.lastHeard = time.Now()
	s.publish(ctx, overseer.SessionConnected, "")
	s.log.Info("session connected", zap.String("event", "session_connected"))
	// The first message tells clawkerd its Session was accepted.
	s.send(ctx, &agentv1.ControlMessage{Msg: &agentv1.ControlMessage_Heartbeat{Heartbeat: &agentv1.Heartbeat{SentAt: timestamppb.Now()}}})
	every := s.cfg.Heartbeat
	s.stopTick = scheduler.NewTimerScheduler(ctx.ActorSystem().Root).SendRepeatedly(every, every, ctx.Self(), &heartbeatTick{})
}

func (s *session) heartbeat(ctx actor.Context) {
	if silent := time.Since(s.lastHeard); silent > 3*s.cfg.Heartbeat {
		err := fmt.Errorf("no message from the agent for %s", silent.Round(time.Millisecond))
		s.broken = true
		s.publish(ctx, overseer.SessionBroken, err.Error())
		s.end(err)
		ctx.Stop(ctx.Self())
		return
	}
	s.send(ctx, &agentv1.ControlMessage{Msg: &agentv1.ControlMessage_Heartbeat{Heartbeat: &agentv1.Heartbeat{SentAt: timestamppb.Now()}}})
}

func (s *session) fromAgent(ctx actor.Context, m *agentv1.AgentMessage) {
	s.lastHeard = time.Now()
	switch msg := m.Msg.(type) {
	case *agentv1.AgentMessage_Heartbeat:
		ctx.Send(s.cfg.Registry, &registry.Seen{Key: s.open.Key, At: s.lastHeard})
	case *agentv1.AgentMessage_CommandOutput:
		if p, ok := s.pending[msg.CommandOutput.GetId()]; ok {
			buf := &p.stdout
			if msg.CommandOutput.GetStream() == agentv1.OutputStream_OUTPUT_STREAM_STDERR {
				buf = &p.stderr
			}
			if !appendCapped(buf, msg.CommandOutput.GetData()) && !p.truncated {
				p.truncated = true
				s.log.Warn("a command's output passed the cap; the rest is dropped", zap.String("event", "session_output_capped"),
					zap.String("id", msg.CommandOutput.GetId()), zap.Int("cap_bytes", MaxCommandOutput))
			}
		}
	case *agentv1.AgentMessage_CommandResult:
		id := msg.CommandResult.GetId()
		p, ok := s.pending[id]
		if !ok {
			s.log.Warn("result for an unknown command id", zap.String("event", "session_unknown_result"), zap.String("id", id))
			return
		}
		delete(s.pending, id)
		p.timer.Stop()
		ctx.Send(p.requester, &DispatchResult{Result: msg.CommandResult, Stdout: p.stdout, Stderr: p.stderr, Truncated: p.truncated})
	case *agentv1.AgentMessage_Hello:
		// Already checked by the handler; a second Hello changes nothing.
	}
}

func (s *session) dispatch(ctx actor.Context, m *Dispatch) {
	cmd := m.Command
	if cmd.GetId() == "" {
		s.nextID++
		cmd.Id = "cmd-" + strconv.Itoa(s.nextID)
	}
	if _, dup := s.pending[cmd.Id]; dup {
		ctx.Respond(&DispatchResult{Err: fmt.Errorf("command id %q is already in flight", cmd.Id)})
		return
	}
	timeout := m.Timeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	self, sys, id := ctx.Self(), ctx.ActorSystem(), cmd.Id
	s.pending[id] = &inflight{requester: ctx.Sender(), timer: time.AfterFunc(timeout, func() { sys.Root.Send(self, &commandTimedOut{id: id}) })}
	s.log.Info("command dispatched", zap.String("event", "command_dispatched"), zap.String("id", id), zap.String("kind", commandKind(cmd)))
	s.send(ctx, &agentv1.ControlMessage{Msg: &agentv1.ControlMessage_Command{Command: cmd}})
}

// send queues a message for the agent without blocking the mailbox; a full
// outbox means the agent stopped reading, which breaks the Session.
func (s *session) send(ctx actor.Context, m *agentv1.ControlMessage) {
	if s.ended {
		return
	}
	select {
	case s.open.Outbox <- m:
	default:
		err := errors.New("outbox full: the agent stopped reading its stream")
		s.broken = true
		s.publish(ctx, overseer.SessionBroken, err.Error())
		s.end(err)
		ctx.Stop(ctx.Self())
	}
}

func (s *session) end(cause error) {
	if !s.ended {
		s.ended = true
		s.open.End(cause)
	}
}

func (s *session) stopping(ctx actor.Context) {
	if s.stopTick != nil {
		s.stopTick()
		s.stopTick = nil
	}
	s.end(ErrShuttingDown)
	for id, p := range s.pending {
		p.timer.Stop()
		ctx.Send(p.requester, &DispatchResult{Err: fmt.Errorf("command %s: session ended", id), Stdout: p.stdout, Stderr: p.stderr, Truncated: p.truncated})
		delete(s.pending, id)
	}
	if !s.broken {
		s.publish(ctx, overseer.SessionClosed, "")
	}
	s.log.Info("session ended", zap.String("event", "session_ended"), zap.Bool("broken", s.broken))
}

func (s *session) publish(ctx actor.Context, st overseer.SessionState, reason string) {
	ctx.Send(s.cfg.Overseer, &overseer.Publish{Event: &overseer.SessionEvent{
		Agent: s.open.Agent, ContainerID: s.open.ContainerID, State: st, Reason: reason, At: time.Now().UTC(),
	}})
}

func commandKind(c *agentv1.Command) string {
	switch c.GetKind().(type) {
	case *agentv1.Command_RunInitStep:
		return "run_init_step"
	case *agentv1.Command_SetupMcp:
		return "setup_mcp"
	case *agentv1.Command_Shutdown:
		return "shutdown"
	}
	return "unknown"
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
