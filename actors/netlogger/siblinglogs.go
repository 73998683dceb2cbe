package netlogger

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/pkg/netlog"
)

// The stack siblings' lines (the proxy's JSON access log on stdout, both
// siblings' diagnostics on stderr) are followed through the Docker API,
// one goroutine per sibling, and handed to the pipeline (EmitLine, which
// never blocks: beyond the buffer bound a line is dropped and counted).
// Only with a collector: without one nothing here runs.
//
// A follower attaches by the container's name, so a replaced sibling (the
// stack owner recreating it, `clawker firewall down/up`) is followed again
// as soon as its stream ends and the new one answers; the overseer's
// ContainerStarted of that name wakes it at once, a retry every few
// seconds covers the rest. Each attach asks for the lines since the last
// one seen (the daemon's timestamps, inclusive) and skips the ones it
// already took, so a re-attach neither reads a line twice nor loses one
// the daemon still holds. That position is kept per stream: the daemon
// stamps stdout and stderr lines on two goroutines and files them as they
// arrive, so a stderr line stamped before the last stdout line may come
// after it (seen under load: a re-attach that skipped by one position
// lost it); within one stream the stamps are in order. The first attach
// of a CP process starts at its start: older lines were a previous
// control plane's to send.

// SiblingDocker is the part of the Docker client the followers use.
type SiblingDocker interface {
	ContainerInspect(ctx context.Context, id string, o client.ContainerInspectOptions) (client.ContainerInspectResult, error)
	ContainerLogs(ctx context.Context, id string, o client.ContainerLogsOptions) (client.ContainerLogsResult, error)
}

// Sibling is one followed container and the service.name of its lines.
type Sibling struct {
	Container string
	Service   string // netlog.ServiceDNS or netlog.ServiceProxy
}

// StackSiblings are the firewall stack's members on the agent network.
func StackSiblings(network string) []Sibling {
	return []Sibling{
		{Container: firewall.SiblingName(network, "dns"), Service: netlog.ServiceDNS},
		{Container: firewall.SiblingName(network, "proxy"), Service: netlog.ServiceProxy},
	}
}

// processStart is where a CP process's first attach begins.
var processStart = time.Now()

// streamPos is how far one stream of a sibling's log has been taken: the
// last line's timestamp and how many lines carried exactly it.
type streamPos struct {
	last   time.Time
	atLast int
}

// position is a sibling's streamPos for stdout ([0]) and stderr ([1]).
type position [2]streamPos

func streamIndex(stderr bool) int {
	if stderr {
		return 1
	}
	return 0
}

// since is where an attach asks the daemon to begin: the earlier of the
// two streams' positions, so neither misses a line.
func (p position) since() time.Time {
	if p[1].last.Before(p[0].last) {
		return p[1].last
	}
	return p[0].last
}

// positions outlive a netlogger incarnation: a restarted actor goes on
// where the previous one stopped.
type positions struct {
	mu sync.Mutex
	m  map[string]position
}

// get is the saved position of container name; a sibling not followed
// yet by this process begins at processStart in both streams.
func (p *positions) get(name string) position {
	p.mu.Lock()
	defer p.mu.Unlock()
	pos, ok := p.m[name]
	if !ok {
		pos = position{{last: processStart}, {last: processStart}}
	}
	return pos
}

func (p *positions) set(name string, pos position) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string]position{}
	}
	p.m[name] = pos
}

// Follower timing: the retry while a sibling is away, and the longest
// line kept (the rest of a longer one is cut).
var (
	followRetryMin = 250 * time.Millisecond
	followRetryMax = 3 * time.Second
)

const maxLine = 64 << 10

type follower struct {
	d    SiblingDocker
	sib  Sibling
	emit func(*netlog.Line) error
	pos  *positions
	log  *zap.Logger
	kick chan struct{}
}

type followers struct {
	list   []*follower
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

func startFollowers(d SiblingDocker, sibs []Sibling, pos *positions, emit func(*netlog.Line) error, log *zap.Logger) *followers {
	ctx, cancel := context.WithCancel(context.Background())
	fs := &followers{cancel: cancel}
	for _, s := range sibs {
		f := &follower{d: d, sib: s, emit: emit, pos: pos, log: log, kick: make(chan struct{}, 1)}
		fs.list = append(fs.list, f)
		fs.wg.Add(1)
		go func() { defer fs.wg.Done(); f.run(ctx) }()
	}
	return fs
}

// wake tells the follower of container name (a sibling just started) to
// attach now instead of at its next retry. It never blocks.
func (fs *followers) wake(name string) {
	if fs == nil {
		return
	}
	name = strings.TrimPrefix(name, "/")
	for _, f := range fs.list {
		if f.sib.Container == name {
			select {
			case f.kick <- struct{}{}:
			default:
			}
		}
	}
}

// stop ends every follower and waits for them: after it no line is
// emitted, so the pipeline may shut down.
func (fs *followers) stop() {
	if fs == nil {
		return
	}
	fs.once.Do(func() {
		fs.cancel()
		fs.wg.Wait()
	})
}

func (f *follower) run(ctx context.Context) {
	wait := followRetryMin
	reported := false
	for ctx.Err() == nil {
		n, err := f.attach(ctx)
		if ctx.Err() != nil {
			return
		}
		if n > 0 {
			wait, reported = followRetryMin, false
		} else {
			wait = min(wait*2, followRetryMax)
		}
		if err != nil && !reported {
			// A sibling being replaced is away for a moment: said once per
			// absence, at debug, since the stack owner reports its outages.
			f.log.Debug("not following a firewall sibling's log for now", zap.String("event", "netlogger_sibling_detached"),
				zap.String("container", f.sib.Container), zap.Error(err))
			reported = true
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-f.kick:
		case <-t.C:
		}
		t.Stop()
	}
}

// attach follows the container's log from the saved position until the
// stream ends (the container stopped or went, the daemon went away) and
// returns how many lines it took.
func (f *follower) attach(ctx context.Context) (int, error) {
	ins, err := f.d.ContainerInspect(ctx, f.sib.Container, client.ContainerInspectOptions{})
	if err != nil {
		return 0, err
	}
	id := ins.Container.ID
	start := f.pos.get(f.sib.Container)
	since := start.since()
	rc, err := f.d.ContainerLogs(ctx, id, client.ContainerLogsOptions{
		ShowStdout: true, ShowStderr: true, Follow: true, Timestamps: true,
		Since: strconv.FormatInt(since.Unix(), 10) + "." + leftPad9(since.Nanosecond()),
	})
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	t := &taker{f: f, id: id, start: start, cur: start}
	_, err = stdcopy.StdCopy(&lineWriter{t: t}, &lineWriter{t: t, stderr: true}, rc)
	if err == nil {
		err = errors.New("the log stream ended")
	}
	return t.taken, err
}

func leftPad9(n int) string {
	s := strconv.Itoa(n)
	return strings.Repeat("0", 9-len(s)) + s
}

// taker applies the position to one attach's lines: both streams'
// writers run on StdCopy's goroutine, in the daemon's order.
type taker struct {
	f       *follower
	id      string
	start   position // at attach: per stream, the lines at last already taken
	skipped [2]int   // of those, seen again so far
	cur     position
	taken   int
	line    netlog.Line
}

func (t *taker) take(stderr bool, raw []byte) {
	sp := bytes.IndexByte(raw, ' ')
	if sp < 0 {
		sp = len(raw)
	}
	ts, err := time.Parse(time.RFC3339Nano, string(raw[:sp]))
	if err != nil {
		return // not a timestamped line: not something the daemon sends
	}
	text := raw[min(sp+1, len(raw)):]
	i := streamIndex(stderr)
	start := t.start[i]
	switch {
	case ts.Before(start.last):
		return
	case ts.Equal(start.last) && t.skipped[i] < start.atLast:
		t.skipped[i]++
		return
	}
	if ts.Equal(t.cur[i].last) {
		t.cur[i].atLast++
	} else {
		t.cur[i] = streamPos{last: ts, atLast: 1}
	}
	t.f.pos.set(t.f.sib.Container, t.cur)
	t.taken++
	t.line = netlog.Line{Service: t.f.sib.Service, ContainerID: t.id, Stderr: stderr, Time: ts, Text: bytes.TrimRight(text, "\r")}
	_ = t.f.emit(&t.line)
}

// lineWriter cuts one demultiplexed stream into lines. A line still
// unfinished when the stream breaks is not taken: the next attach reads
// it again whole.
type lineWriter struct {
	t      *taker
	stderr bool
	buf    []byte
	cut    bool // the current line passed maxLine: the rest is dropped
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.add(p)
			break
		}
		w.add(p[:i])
		w.t.take(w.stderr, w.buf)
		w.buf, w.cut = w.buf[:0], false
		p = p[i+1:]
	}
	return n, nil
}

func (w *lineWriter) add(p []byte) {
	if w.cut {
		return
	}
	if room := maxLine - len(w.buf); len(p) > room {
		p, w.cut = p[:room], true
	}
	w.buf = append(w.buf, p...)
}
