//go:build linux

package agentd

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/testkit"
	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

// waitLimit is the generous deadline of every wait in these tests.
const waitLimit = 30 * time.Second

// testContainerID is the container id in the test agent's certificate.
var testContainerID = strings.Repeat("0123456789abcdef", 4)

// --- logs -------------------------------------------------------------------

// logSink collects clawkerd's JSON log lines.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logSink) lines(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	data := append([]byte(nil), l.buf.Bytes()...)
	l.mu.Unlock()
	var out []map[string]any
	for _, line := range bytes.Split(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Errorf("log line is not JSON: %s", line)
			continue
		}
		out = append(out, m)
	}
	return out
}

func (l *logSink) events(t *testing.T, event string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, m := range l.lines(t) {
		if m["event"] == event {
			out = append(out, m)
		}
	}
	return out
}

// index is the position of the first line with event, or -1.
func (l *logSink) index(t *testing.T, event string) int {
	for i, m := range l.lines(t) {
		if m["event"] == event {
			return i
		}
	}
	return -1
}

func (l *logSink) waitEvent(t *testing.T, event string) map[string]any {
	t.Helper()
	var got map[string]any
	testkit.WaitFor(t, waitLimit, "log event "+event, func() bool {
		if ev := l.events(t, event); len(ev) > 0 {
			got = ev[0]
			return true
		}
		return false
	})
	return got
}

// --- fake control plane ----------------------------------------------------------

type registration struct {
	req       *agentv1.RegisterRequest
	id        certs.AgentIdentity
	auth      []string // the call's authorization metadata
	assertion []string // its clawker-agent-assertion metadata
}

// fakeCP is a minimal AgentService over real mTLS.
type fakeCP struct {
	agentv1.UnimplementedAgentServiceServer
	t   *testing.T
	tls *tls.Config

	// Set before the agent runs.
	registerErr func(n int) error // answer of the n-th Register (1-based); nil: accept
	enforced    func(n int) bool  // enforced in the n-th Register's answer; nil: false
	hold        chan struct{}     // when set, no ControlMessage goes out before it is closed
	silent      bool              // send the first heartbeat, then nothing unprompted
	heartbeat   time.Duration

	mu        sync.Mutex
	addr      string
	srv       *grpc.Server
	registers []registration
	sessions  chan *fakeSession
}

type fakeSession struct {
	hello      *agentv1.Hello
	id         certs.AgentIdentity
	toAgent    chan *agentv1.ControlMessage
	fromAgent  chan *agentv1.AgentMessage // all but heartbeats
	heartbeats atomic.Int64               // well-formed heartbeats received
	badBeats   atomic.Int64               // heartbeats without sent_at
	recvDone   chan struct{}              // the agent's side ended; recvErr is set
	recvErr    error
	done       chan struct{} // the handler returned
	registers  int           // Register calls answered when this Session opened
}

func newFakeCP(t *testing.T, cfg *tls.Config) *fakeCP {
	return &fakeCP{t: t, tls: cfg, heartbeat: 50 * time.Millisecond, sessions: make(chan *fakeSession, 64)}
}

// start serves on f.addr (a fresh port the first time, the same after).
func (f *fakeCP) start() {
	f.t.Helper()
	f.mu.Lock()
	addr := f.addr
	f.mu.Unlock()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	testkit.WaitFor(f.t, waitLimit, "listening on "+addr, func() bool {
		var err error
		lis, err = net.Listen("tcp", addr)
		return err == nil
	})
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(f.tls)))
	agentv1.RegisterAgentServiceServer(srv, f)
	f.mu.Lock()
	f.addr, f.srv = lis.Addr().String(), srv
	f.mu.Unlock()
	go srv.Serve(lis)
	f.t.Cleanup(srv.Stop)
}

// stop kills the server: listener and every connection, no goodbye.
func (f *fakeCP) stop() {
	f.mu.Lock()
	srv := f.srv
	f.mu.Unlock()
	srv.Stop()
}

func (f *fakeCP) registrations() []registration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]registration(nil), f.registers...)
}

func peerIdentity(ctx context.Context) (certs.AgentIdentity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return certs.AgentIdentity{}, errors.New("no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 {
		return certs.AgentIdentity{}, errors.New("no verified client certificate")
	}
	return certs.ParseAgentIdentity(info.State.VerifiedChains[0][0])
}

func (f *fakeCP) Register(ctx context.Context, req *agentv1.RegisterRequest) (*agentv1.RegisterResponse, error) {
	id, err := peerIdentity(ctx)
	if err != nil {
		f.t.Errorf("fake CP: Register without agent identity: %v", err)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.registers = append(f.registers, registration{req: req, id: id, auth: md.Get("authorization"), assertion: md.Get(assertionHeader)})
	n := len(f.registers)
	f.mu.Unlock()
	if f.registerErr != nil {
		if err := f.registerErr(n); err != nil {
			return nil, err
		}
	}
	enforced := f.enforced != nil && f.enforced(n)
	return &agentv1.RegisterResponse{AgentKey: "key-" + strconv.Itoa(n), RegisteredAt: timestamppb.Now(), Enforced: enforced}, nil
}

func (f *fakeCP) Session(stream agentv1.AgentService_SessionServer) error {
	ctx := stream.Context()
	id, _ := peerIdentity(ctx)
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	f.mu.Lock()
	regs := len(f.registers)
	f.mu.Unlock()
	fs := &fakeSession{hello: first.GetHello(), id: id, registers: regs,
		toAgent:   make(chan *agentv1.ControlMessage, 64),
		fromAgent: make(chan *agentv1.AgentMessage, 4096),
		recvDone:  make(chan struct{}), done: make(chan struct{})}
	defer close(fs.done)
	f.sessions <- fs
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				fs.recvErr = err
				close(fs.recvDone)
				return
			}
			if hb := m.GetHeartbeat(); hb != nil {
				if hb.GetSentAt().IsValid() {
					fs.heartbeats.Add(1)
				} else {
					fs.badBeats.Add(1)
				}
				continue
			}
			fs.fromAgent <- m
		}
	}()
	if f.hold != nil {
		select {
		case <-f.hold:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	beat := func() error {
		return stream.Send(&agentv1.ControlMessage{Msg: &agentv1.ControlMessage_Heartbeat{Heartbeat: &agentv1.Heartbeat{SentAt: timestamppb.Now()}}})
	}
	if err := beat(); err != nil {
		return err
	}
	var tick <-chan time.Time
	if !f.silent {
		tk := time.NewTicker(f.heartbeat)
		defer tk.Stop()
		tick = tk.C
	}
	for {
		select {
		case m := <-fs.toAgent:
			if err := stream.Send(m); err != nil {
				return err
			}
		case <-tick:
			if err := beat(); err != nil {
				return err
			}
		case <-fs.recvDone:
			return nil // the agent half-closed (or broke): end the stream
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// nextSession waits for the next Session whose Hello arrived.
func (f *fakeCP) nextSession(t *testing.T) *fakeSession {
	t.Helper()
	select {
	case s := <-f.sessions:
		return s
	case <-time.After(waitLimit):
		t.Fatal("timed out waiting for a Session")
		return nil
	}
}

// cmdOutcome is everything the agent answered to one command.
type cmdOutcome struct {
	chunks []*agentv1.CommandOutput
	stdout []byte
	stderr []byte
	result *agentv1.CommandResult
}

// do sends commands and collects their outputs and results.
func (s *fakeSession) do(t *testing.T, cmds ...*agentv1.Command) map[string]*cmdOutcome {
	t.Helper()
	out := map[string]*cmdOutcome{}
	for _, c := range cmds {
		out[c.GetId()] = &cmdOutcome{}
		s.toAgent <- &agentv1.ControlMessage{Msg: &agentv1.ControlMessage_Command{Command: c}}
	}
	pending := len(cmds)
	timeout := time.After(waitLimit)
	for pending > 0 {
		select {
		case m := <-s.fromAgent:
			switch msg := m.GetMsg().(type) {
			case *agentv1.AgentMessage_CommandOutput:
				o := out[msg.CommandOutput.GetId()]
				if o == nil {
					t.Fatalf("output for unknown id %q", msg.CommandOutput.GetId())
				}
				if o.result != nil {
					t.Fatalf("output for %q after its result", msg.CommandOutput.GetId())
				}
				o.chunks = append(o.chunks, msg.CommandOutput)
				if msg.CommandOutput.GetStream() == agentv1.OutputStream_OUTPUT_STREAM_STDERR {
					o.stderr = append(o.stderr, msg.CommandOutput.GetData()...)
				} else {
					o.stdout = append(o.stdout, msg.CommandOutput.GetData()...)
				}
			case *agentv1.AgentMessage_CommandResult:
				o := out[msg.CommandResult.GetId()]
				if o == nil {
					t.Fatalf("result for unknown id %q", msg.CommandResult.GetId())
				}
				if o.result != nil {
					t.Fatalf("second result for %q", msg.CommandResult.GetId())
				}
				o.result = msg.CommandResult
				pending--
			default:
				t.Fatalf("unexpected message from the agent: %v", m)
			}
		case <-s.recvDone:
			t.Fatalf("session ended while waiting for results: %v", s.recvErr)
		case <-timeout:
			t.Fatal("timed out waiting for command results")
		}
	}
	return out
}

func (s *fakeSession) do1(t *testing.T, c *agentv1.Command) *cmdOutcome {
	t.Helper()
	return s.do(t, c)[c.GetId()]
}

func initStep(id string, uid uint32, timeout time.Duration, env map[string]string, argv ...string) *agentv1.Command {
	r := &agentv1.RunInitStep{Argv: argv, Env: env, Uid: uid}
	if timeout > 0 {
		r.Timeout = durationpb.New(timeout)
	}
	return &agentv1.Command{Id: id, Kind: &agentv1.Command_RunInitStep{RunInitStep: r}}
}

func setupMCP(id, name, config string) *agentv1.Command {
	return &agentv1.Command{Id: id, Kind: &agentv1.Command_SetupMcp{SetupMcp: &agentv1.SetupMCP{Name: name, ConfigJson: []byte(config)}}}
}

func shutdownCmd(id string, grace time.Duration) *agentv1.Command {
	return &agentv1.Command{Id: id, Kind: &agentv1.Command_Shutdown{Shutdown: &agentv1.Shutdown{Grace: durationpb.New(grace)}}}
}

// --- environment -------------------------------------------------------------

type testEnv struct {
	t    *testing.T
	dir  string
	cfg  Config
	cp   *fakeCP
	logs *logSink
	m    *certs.Material
}

// newEnv makes real certificates, starts a fake CP and returns a Config
// for the agent p.a. configure runs before the CP starts.
func newEnv(t *testing.T, configure ...func(*fakeCP)) *testEnv {
	t.Helper()
	dir := t.TempDir()
	auth := filepath.Join(dir, "auth")
	if _, err := certs.Ensure(auth, certs.Options{}); err != nil {
		t.Fatal(err)
	}
	m, err := certs.Load(auth)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := m.MintAgentCert(certs.AgentIdentity{Project: "p", Agent: "a", ContainerID: testContainerID}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "agent.crt"), filepath.Join(dir, "agent.key")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	srvTLS, err := m.ServerTLSConfig(certs.AgentCommonName)
	if err != nil {
		t.Fatal(err)
	}
	cp := newFakeCP(t, srvTLS)
	for _, c := range configure {
		c(cp)
	}
	cp.start()
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o755); err != nil {
		t.Fatal(err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { devnull.Close() })
	logs := &logSink{}
	e := &testEnv{t: t, dir: dir, cp: cp, logs: logs, m: m, cfg: Config{
		CPAddr: cp.addr, CAFile: filepath.Join(auth, certs.CACertFile), CertFile: certFile, KeyFile: keyFile,
		Project: "p", Agent: "a", Home: home,
		Heartbeat: 200 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Stdin:  devnull,
	}}
	t.Cleanup(func() {
		for _, m := range logs.lines(t) {
			if ev, _ := m["event"].(string); ev == "" {
				t.Errorf("log line without event: %v", m)
			}
		}
		if t.Failed() {
			logs.mu.Lock()
			t.Logf("clawkerd log:\n%s", logs.buf.String())
			logs.mu.Unlock()
		}
	})
	return e
}

func (e *testEnv) path(name string) string { return filepath.Join(e.dir, name) }

// running is one Run in a goroutine.
type running struct {
	cancel context.CancelFunc
	code   chan int
}

func (e *testEnv) run(argv ...string) *running {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, code: make(chan int, 1)}
	cfg := e.cfg
	go func() { r.code <- Run(ctx, cfg, argv) }()
	e.t.Cleanup(func() {
		cancel()
		select {
		case <-r.code:
		case <-time.After(waitLimit):
			e.t.Error("Run did not return after its context was cancelled")
		}
	})
	return r
}

// wait returns Run's exit code (once; the cleanup then finds it consumed).
func (r *running) wait(t *testing.T) int {
	t.Helper()
	select {
	case code := <-r.code:
		r.code <- code
		return code
	case <-time.After(waitLimit):
		t.Fatal("timed out waiting for Run to return")
		return -1
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// procState is the state letter of pid ('Z' for a zombie) and its parent,
// or 0 if there is no such process.
func procState(pid int) (state byte, ppid int) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return 0, 0
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 2 {
		return 0, 0
	}
	ppid, _ = strconv.Atoi(f[1])
	return f[0][0], ppid
}

// dead reports whether pid has exited (gone, or a zombie not yet reaped).
func dead(pid int) bool {
	st, _ := procState(pid)
	return st == 0 || st == 'Z'
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	var pid int
	testkit.WaitFor(t, waitLimit, "pid in "+path, func() bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	})
	return pid
}
