package netlogger_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/actors/netlogger"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/netlog"
	"github.com/clawker/clawker-cp/pkg/netlog/netlogtest"
)

// lineWriterSource is the test sibling: it writes count lines named
// <prefix>-<i>, access-log JSON on stdout for even i and a [WARNING] text
// line on stderr for odd i, then exits ("exit") or waits to be killed.
const lineWriterSource = `package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

func main() {
	prefix, mode := os.Args[1], os.Args[3]
	n, _ := strconv.Atoi(os.Args[2])
	for i := 0; i < n; i++ {
		if i%2 == 0 {
			fmt.Fprintf(os.Stdout, "{\"time\":\"2026-12-07T14:00:00Z\",\"src\":\"192.0.2.5:%d\",\"proto\":\"tls\",\"host\":\"h%d.example.com\",\"verdict\":\"allowed\",\"bytes_up\":%d,\"bytes_down\":0,\"duration_ms\":1.5,\"seq\":\"%s-%d\"}\n", 40000+i, i, i, prefix, i)
		} else {
			fmt.Fprintf(os.Stderr, "[WARNING] %s-%d\n", prefix, i)
		}
		if i%50 == 49 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if mode == "exit" {
		return
	}
	time.Sleep(time.Hour)
}
`

// cuttingDocker is the real client whose first log stream is cut after
// a few KiB, as a daemon restart or a broken connection would: the
// follower must re-attach to the same container and go on where it was.
type cuttingDocker struct {
	*client.Client
	mu      sync.Mutex
	attachs int
	cuts    int
}

func (c *cuttingDocker) ContainerLogs(ctx context.Context, id string, o client.ContainerLogsOptions) (client.ContainerLogsResult, error) {
	rc, err := c.Client.ContainerLogs(ctx, id, o)
	if err != nil {
		return rc, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.attachs++
	if c.attachs > 1 {
		return rc, nil
	}
	c.cuts++
	return &cutReader{rc: rc, left: 5000}, nil
}

func (c *cuttingDocker) counts() (attachs, cuts int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.attachs, c.cuts
}

type cutReader struct {
	rc   io.ReadCloser
	left int
}

func (r *cutReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	if len(p) > r.left {
		p = p[:r.left]
	}
	n, err := r.rc.Read(p)
	r.left -= n
	return n, err
}

func (r *cutReader) Close() error { return r.rc.Close() }

func runLineWriter(t *testing.T, d *client.Client, image, name string, labels map[string]string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := d.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:       name,
		Config:     &container.Config{Image: image, Cmd: args, Labels: labels},
		HostConfig: &container.HostConfig{NetworkMode: "none"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.ContainerStart(ctx, res.ID, client.ContainerStartOptions{}); err != nil {
		t.Fatal(err)
	}
	return res.ID
}

// The proxy sibling's lines, followed through the real daemon into the
// receiver as clawker-proxy records: the access-log lines with their
// fields as attributes, the stderr lines as text; a stream cut mid-way
// and a container replaced under the same name (the stack owner's
// recreate) each re-attach, and every line arrives exactly once.
func TestSiblingLogsFollowedThroughDocker(t *testing.T) {
	d := cptest.RequireDocker(t)
	run := cptest.NewRunID()
	labels := cptest.TestLabels(run)
	t.Cleanup(func() { cptest.RemoveLabelled(t, d, labels) })
	bin := cptest.BuildStatic(t, "linewriter", lineWriterSource)
	image := "clawker-test-linewriter-" + run + ":latest"
	cptest.BuildScratchImage(t, d, image, map[string]string{"linewriter": bin}, []string{"/linewriter"}, labels)
	name := "clawker-test-" + run + "-proxy"

	f := newFixture(t, true)
	f.rcv.Start(t)
	f.cfg.Monitoring.OTLPEndpoint = f.rcv.Addr
	cd := &cuttingDocker{Client: d}
	f.cfg.Docker = cd
	f.cfg.Siblings = []netlogger.Sibling{{Container: name, Service: netlog.ServiceProxy}}

	const n = 300
	idA := runLineWriter(t, d, image, name, labels, "a", fmt.Sprint(n), "exit")
	pid := f.spawn(t)
	seqs := func() (map[string]int, []netlogtest.Record) {
		got := map[string]int{}
		var recs []netlogtest.Record
		for _, r := range f.rcv.Records() {
			if r.Service != netlog.ServiceProxy {
				continue
			}
			recs = append(recs, r)
			if s, ok := r.Attrs["seq"].(string); ok {
				got[s]++
			} else {
				got[strings.TrimPrefix(r.Log.Body.GetStringValue(), "[WARNING] ")]++
			}
		}
		return got, recs
	}
	waitAll := func(prefixes ...string) {
		t.Helper()
		cptest.WaitFor(t, 60*time.Second, "every line of "+strings.Join(prefixes, ", "), func() (bool, string) {
			got, _ := seqs()
			for _, p := range prefixes {
				for i := 0; i < n; i++ {
					if got[fmt.Sprintf("%s-%d", p, i)] == 0 {
						return false, fmt.Sprintf("%d distinct lines, %s-%d missing", len(got), p, i)
					}
				}
			}
			return true, ""
		})
	}
	waitAll("a")
	if attachs, cuts := cd.counts(); cuts != 1 || attachs < 2 {
		t.Fatalf("the first stream was not cut and re-attached: %d attaches, %d cuts", attachs, cuts)
	}

	// The stack owner's recreate: same name, a new container.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := d.ContainerRemove(ctx, idA, client.ContainerRemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	idB := runLineWriter(t, d, image, name, labels, "b", fmt.Sprint(n), "wait")
	waitAll("a", "b")

	// Everything taken is exported; then exactly 2n records, each once.
	cptest.WaitFor(t, 30*time.Second, "the lines exported", func() (bool, string) {
		res, err := f.sys.Root.RequestFuture(pid, &netlogger.GetStats{}, time.Second).Result()
		st, _ := res.(*netlogger.Stats)
		if err != nil || st == nil {
			return false, fmt.Sprint(err)
		}
		return st.Lines == 2*n && st.Exported == st.Emitted && st.Dropped == 0, fmt.Sprintf("%+v", st.Stats)
	})
	got, recs := seqs()
	if len(recs) != 2*n {
		var dups []string
		for s, c := range got {
			if c > 1 {
				dups = append(dups, s)
			}
		}
		t.Fatalf("%d records for %d lines; twice: %v", len(recs), 2*n, dups)
	}
	for _, r := range recs {
		wantID := idA
		if s, _ := r.Attrs["seq"].(string); strings.HasPrefix(s, "b-") || strings.Contains(r.Log.Body.GetStringValue(), " b-") {
			wantID = idB
		}
		if r.Attrs["container.id"] != wantID || r.Scope != netlog.SiblingScopeName || r.Host != "cp-host" {
			t.Fatalf("record %+v: container %v, want %.12s", r.Attrs, r.Attrs["container.id"], wantID)
		}
		if seq, ok := r.Attrs["seq"].(string); ok {
			if r.Log.EventName != netlog.EventProxyConnection || r.Attrs["log.iostream"] != "stdout" || r.Attrs["verdict"] != "allowed" ||
				r.Attrs["proto"] != "tls" || r.Attrs["duration_ms"] == nil || r.Log.SeverityText != "INFO" {
				t.Fatalf("access record %s: %v", seq, r.Attrs)
			}
			var i int
			fmt.Sscanf(seq[2:], "%d", &i)
			if r.Attrs["bytes_up"] != int64(i) || r.Attrs["host"] != fmt.Sprintf("h%d.example.com", i) || r.Attrs["src"] != fmt.Sprintf("192.0.2.5:%d", 40000+i) {
				t.Fatalf("access record %s: %v", seq, r.Attrs)
			}
		} else if r.Attrs["log.iostream"] != "stderr" || r.Log.SeverityText != "WARN" || r.Log.EventName != "" {
			t.Fatalf("text record %q: %v %q", r.Log.Body.GetStringValue(), r.Attrs, r.Log.SeverityText)
		}
		if r.Log.TimeUnixNano == 0 || r.Log.TimeUnixNano < uint64(time.Now().Add(-10*time.Minute).UnixNano()) {
			t.Fatalf("record timestamp %d", r.Log.TimeUnixNano)
		}
	}
}
