package netlogger_test

import (
	"context"
	"encoding/binary"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/actors/netlogger"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/netlog"
)

// fakeDocker serves one container's log, given as stdout lines, once;
// later attaches wait for their context. It counts every call.
type fakeDocker struct {
	mu    sync.Mutex
	calls int
	lines []string
}

func (d *fakeDocker) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls
}

func (d *fakeDocker) ContainerInspect(ctx context.Context, id string, o client.ContainerInspectOptions) (client.ContainerInspectResult, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls++
	return client.ContainerInspectResult{Container: container.InspectResponse{ID: "c0ffee"}}, nil
}

func (d *fakeDocker) ContainerLogs(ctx context.Context, id string, o client.ContainerLogsOptions) (client.ContainerLogsResult, error) {
	d.mu.Lock()
	d.calls++
	lines := d.lines
	d.lines = nil
	d.mu.Unlock()
	if lines == nil {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	var b []byte
	ts := time.Now().UTC()
	for i, l := range lines {
		p := ts.Add(time.Duration(i)*time.Microsecond).Format(time.RFC3339Nano) + " " + l + "\n"
		b = append(b, 1, 0, 0, 0)
		b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	return io.NopCloser(strings.NewReader(string(b))), nil
}

// Without monitoring.otlp_endpoint nothing follows the siblings: not one
// Docker call.
func TestSiblingLogsOffWithoutEndpoint(t *testing.T) {
	f := newFixture(t, true)
	d := &fakeDocker{lines: []string{"hello"}}
	f.cfg.Docker, f.cfg.Siblings = d, []netlogger.Sibling{{Container: "clawker-proxy", Service: netlog.ServiceProxy}}
	pid := f.spawn(t)
	f.waitLog(t, "netlogger_off")
	// Past several retry periods of a follower, had one started.
	for i := 0; i < 10; i++ {
		if _, err := f.sys.Root.RequestFuture(pid, &netlogger.GetStats{}, time.Second).Result(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := d.count(); n != 0 {
		t.Fatalf("%d Docker calls with the netlogger off", n)
	}
}

// The drain stops the followers before the provider: the lines taken are
// exported and the step says so.
func TestSiblingLinesDrained(t *testing.T) {
	f := newFixture(t, true)
	f.rcv.Start(t)
	f.cfg.Monitoring.OTLPEndpoint = f.rcv.Addr
	f.cfg.Tune = func(c *netlog.Config) { c.ExportInterval = time.Hour } // only the drain exports
	d := &fakeDocker{lines: []string{`{"src":"192.0.2.5:1","verdict":"denied","bytes_up":0}`, "2026/12/07 14:00:00 clawker-proxy: listening", `{"src":"192.0.2.5:2","verdict":"allowed","bytes_up":7}`}}
	f.cfg.Docker, f.cfg.Siblings = d, []netlogger.Sibling{{Container: "clawker-proxy", Service: netlog.ServiceProxy}}
	pid := f.spawn(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := f.sys.Root.RequestFuture(pid, &netlogger.GetStats{}, time.Second).Result()
		if st, ok := res.(*netlogger.Stats); err == nil && ok && st.Lines == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lines not taken: %v %v", res, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	res, err := f.sys.Root.RequestFuture(pid, &supervise.DrainStep{Step: cpapi.StepNetloggerStop, Deadline: time.Now().Add(5 * time.Second)}, 6*time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	done, ok := res.(*supervise.StepDone)
	if !ok || done.Outcome != supervise.OutcomeDone || !strings.Contains(done.Detail, "exported 3") || !strings.Contains(done.Detail, "3 of the siblings' log lines") {
		t.Fatalf("drain answered %+v", res)
	}
	recs := f.rcv.Records()
	if len(recs) != 3 || recs[0].Service != netlog.ServiceProxy || recs[0].Attrs["verdict"] != "denied" || recs[1].Log.Body.GetStringValue() != "2026/12/07 14:00:00 clawker-proxy: listening" || recs[2].Attrs["bytes_up"] != int64(7) {
		t.Fatalf("records %+v", recs)
	}
}
