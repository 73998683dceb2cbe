package ory_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/ory"
)

// fakeSource is a stand-in server. Modes (first argument):
//
//	lines             two stdout lines, one stderr line, a stdout tail without
//	                  a newline, then exit 3
//	env               print the environment, one variable a line
//	long <n>          one stdout line of n 'x'
//	exit <code>       exit with code at once
//	serve <port> <ms> [ignore-term]
//	                  answer GET /health/ready on 127.0.0.1:<port> with 200
//	                  once <ms> passed (503 before); exit 0 on SIGTERM, or
//	                  ignore it
const fakeSource = `package main

import (
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	switch os.Args[1] {
	case "lines":
		fmt.Fprint(os.Stdout, "out one\nout two\n")
		fmt.Fprint(os.Stderr, "err one\n")
		fmt.Fprint(os.Stdout, "tail without newline")
		os.Exit(3)
	case "env":
		for _, kv := range os.Environ() {
			fmt.Println(kv)
		}
	case "long":
		n, _ := strconv.Atoi(os.Args[2])
		fmt.Println(strings.Repeat("x", n))
	case "exit":
		n, _ := strconv.Atoi(os.Args[2])
		os.Exit(n)
	case "serve":
		ms, _ := strconv.Atoi(os.Args[3])
		ready := time.Now().Add(time.Duration(ms) * time.Millisecond)
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM)
		http.HandleFunc("/health/ready", func(w http.ResponseWriter, r *http.Request) {
			if time.Now().Before(ready) {
				w.WriteHeader(503)
				return
			}
			fmt.Fprint(w, "ok")
		})
		go func() {
			if err := http.ListenAndServe("127.0.0.1:"+os.Args[2], nil); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(9)
			}
		}()
		fmt.Println("serving")
		for range c {
			fmt.Println("got SIGTERM")
			if len(os.Args) < 5 {
				return
			}
		}
	}
}
`

func fake(t *testing.T) string {
	t.Helper()
	return cptest.BuildStatic(t, "orytest-fake", fakeSource)
}

func start(t *testing.T, out *syncBuf, ready func(context.Context) error, args ...string) *ory.Process {
	t.Helper()
	p, err := ory.StartProcess(ory.ProcessConfig{Name: "fake", Path: fake(t), Args: args, Env: []string{"FOO=bar"}, Output: out, Ready: ready})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(time.Second) })
	return p
}

func waitExit(t *testing.T, p *ory.Process) ory.Exit {
	t.Helper()
	select {
	case e := <-p.Exited():
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no exit reported")
	}
	return ory.Exit{}
}

func TestProcessPrefixesLinesAndReportsExit(t *testing.T) {
	t.Parallel()
	out := &syncBuf{}
	p := start(t, out, nil, "lines")
	e := waitExit(t, p)
	if e.Code != 3 || e.Signal != "" || e.Stopped || e.Err != nil || e.PID != p.PID() {
		t.Errorf("exit %+v", e)
	}
	if _, ok := <-p.Exited(); ok {
		t.Error("Exited delivered twice")
	}
	if got, ok := p.ExitStatus(); !ok || got.Code != 3 {
		t.Errorf("ExitStatus %+v %v", got, ok)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	got := map[string]bool{}
	for _, l := range lines {
		got[l] = true
	}
	for _, w := range []string{"fake: out one", "fake: out two", "fake: err one", "fake: tail without newline"} {
		if !got[w] {
			t.Errorf("missing line %q in:\n%s", w, out.String())
		}
	}
	if len(lines) != 4 {
		t.Errorf("%d lines:\n%s", len(lines), out.String())
	}
	if strings.Index(out.String(), "out one") > strings.Index(out.String(), "out two") {
		t.Error("stdout lines out of order")
	}
}

func TestProcessEnvironmentIsClean(t *testing.T) {
	t.Parallel()
	out := &syncBuf{}
	p := start(t, out, nil, "env")
	if e := waitExit(t, p); e.Code != 0 {
		t.Fatalf("exit %+v", e)
	}
	if got := out.String(); got != "fake: SQA_OPT_OUT=true\nfake: FOO=bar\n" {
		t.Errorf("environment:\n%s", got)
	}
}

func TestProcessSplitsVeryLongLines(t *testing.T) {
	t.Parallel()
	out := &syncBuf{}
	p := start(t, out, nil, "long", strconv.Itoa(150<<10))
	waitExit(t, p)
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	total := 0
	for _, l := range lines {
		if !strings.HasPrefix(l, "fake: ") {
			t.Fatalf("line without prefix: %.40q", l)
		}
		total += len(l) - len("fake: ")
	}
	if len(lines) != 3 || total != 150<<10 {
		t.Errorf("%d lines, %d bytes", len(lines), total)
	}
}

func probeURL(url string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			return fmt.Errorf("status %d", res.StatusCode)
		}
		return nil
	}
}

func TestProcessReadyThenStopWithSIGTERM(t *testing.T) {
	t.Parallel()
	port := cptest.FreePorts(t, 1)[0]
	out := &syncBuf{}
	p := start(t, out, probeURL(fmt.Sprintf("http://127.0.0.1:%d/health/ready", port)), "serve", strconv.Itoa(port), "300")
	begin := time.Now()
	if err := p.WaitReady(context.Background(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d < 250*time.Millisecond {
		t.Errorf("ready after %s, before the server said so", d)
	}
	begin = time.Now()
	e := p.Stop(5 * time.Second)
	if e.Code != 0 || e.Signal != "" || !e.Stopped {
		t.Errorf("exit %+v", e)
	}
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("Stop took %s for a process that exits on SIGTERM", d)
	}
	if !strings.Contains(out.String(), "fake: got SIGTERM") {
		t.Errorf("output:\n%s", out.String())
	}
	if again := p.Stop(time.Second); again != e {
		t.Errorf("second Stop %+v, want %+v", again, e)
	}
}

func TestProcessStopKillsAfterGrace(t *testing.T) {
	t.Parallel()
	port := cptest.FreePorts(t, 1)[0]
	out := &syncBuf{}
	p := start(t, out, probeURL(fmt.Sprintf("http://127.0.0.1:%d/health/ready", port)), "serve", strconv.Itoa(port), "0", "ignore-term")
	if err := p.WaitReady(context.Background(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	e := p.Stop(400 * time.Millisecond)
	d := time.Since(begin)
	if e.Code != -1 || e.Signal != syscall.SIGKILL.String() || !e.Stopped {
		t.Errorf("exit %+v", e)
	}
	if d < 400*time.Millisecond || d > 3*time.Second {
		t.Errorf("Stop took %s with a grace of 400ms", d)
	}
	if e.String() != "signal: killed" {
		t.Errorf("exit reads %q", e)
	}
}

func TestWaitReadyFailsWhenTheProcessExits(t *testing.T) {
	t.Parallel()
	p := start(t, &syncBuf{}, func(context.Context) error { return errors.New("not yet") }, "exit", "7")
	err := p.WaitReady(context.Background(), 10*time.Second)
	var nr *ory.NotReadyError
	if !errors.As(err, &nr) || nr.Exit == nil || nr.Exit.Code != 7 {
		t.Fatalf("WaitReady = %v", err)
	}
	if !strings.Contains(err.Error(), "fake exited before it was ready: exit code 7") {
		t.Errorf("message %q", err)
	}
}

func TestWaitReadyTimesOut(t *testing.T) {
	t.Parallel()
	port := cptest.FreePorts(t, 1)[0]
	p := start(t, &syncBuf{}, func(context.Context) error { return errors.New("probe says no") }, "serve", strconv.Itoa(port), "0")
	begin := time.Now()
	err := p.WaitReady(context.Background(), 500*time.Millisecond)
	var nr *ory.NotReadyError
	if !errors.As(err, &nr) || nr.Exit != nil || nr.Last == nil {
		t.Fatalf("WaitReady = %v", err)
	}
	if d := time.Since(begin); d < 500*time.Millisecond || d > 3*time.Second {
		t.Errorf("gave up after %s", d)
	}
	if !strings.Contains(err.Error(), "not ready within 500ms: probe says no") {
		t.Errorf("message %q", err)
	}
}

func TestStartProcessMissingBinary(t *testing.T) {
	t.Parallel()
	_, err := ory.StartProcess(ory.ProcessConfig{Name: "ghost", Path: "/nonexistent/ghost"})
	if err == nil || !strings.Contains(err.Error(), "ghost: starting /nonexistent/ghost") {
		t.Fatalf("err = %v", err)
	}
}

// A relative binary path is the caller's (relative to its working
// directory), not relative to ProcessConfig.Dir, where exec would look.
func TestStartProcessRelativePathWithDir(t *testing.T) {
	bin := fake(t)
	t.Chdir(filepath.Dir(bin))
	out := &syncBuf{}
	p, err := ory.StartProcess(ory.ProcessConfig{Name: "fake", Path: "." + string(filepath.Separator) + filepath.Base(bin),
		Args: []string{"lines"}, Dir: t.TempDir(), Output: out})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(time.Second) })
	if e := waitExit(t, p); e.Code != 3 {
		t.Errorf("exit %+v\n%s", e, out.String())
	}
}
