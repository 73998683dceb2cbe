package cptest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// PollInterval is how often the Wait helpers re-check their condition.
var PollInterval = 20 * time.Millisecond

// WaitFor polls cond every PollInterval until it reports true; the test fails
// when it did not within timeout. cond's string describes what it saw last,
// for the failure message.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	ok, last, _ := poll(timeout, func() (bool, string, bool) {
		ok, last := cond()
		return ok, last, false
	})
	if !ok {
		msg := fmt.Sprintf("cptest: waiting for %s: did not happen within %s", what, timeout)
		if last != "" {
			msg += "; last seen: " + last
		}
		t.Fatal(msg)
	}
}

// poll runs check until it succeeds, says stop, or timeout passes. It
// always checks at least once, and once more after the deadline.
func poll(timeout time.Duration, check func() (ok bool, last string, stop bool)) (bool, string, bool) {
	deadline := time.Now().Add(timeout)
	for {
		ok, last, stop := check()
		if ok || stop {
			return ok, last, stop
		}
		if time.Now().After(deadline) {
			return false, last, false
		}
		time.Sleep(PollInterval)
	}
}

// HTTPTimeout bounds one request of the HTTP helpers. A /healthz whose probe
// hangs answers within the CP's probe timeout (about a second).
var HTTPTimeout = 5 * time.Second

var client = &http.Client{Timeout: HTTPTimeout}

// TryGetJSON GETs url and decodes a JSON body into v (when v is not nil).
// The status is 0 when nothing answered.
func TryGetJSON(url string, v any) (int, error) {
	return doJSON(http.MethodGet, url, v)
}

// TryPostJSON POSTs an empty body to url and decodes the JSON answer into v.
func TryPostJSON(url string, v any) (int, error) {
	return doJSON(http.MethodPost, url, v)
}

func doJSON(method, url string, v any) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), HTTPTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, fmt.Errorf("%s %s: reading the body: %w", method, url, err)
	}
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s answered %d with a body that is not the JSON expected: %w: %q",
				method, url, resp.StatusCode, err, bytes.TrimSpace(body))
		}
	}
	return resp.StatusCode, nil
}

// GetJSON GETs url and decodes its JSON body into v. It returns the status,
// or 0 when nothing answered (so it can be polled while a server starts);
// an answer that does not decode fails the test.
func GetJSON(t testing.TB, url string, v any) (status int) {
	t.Helper()
	return mustJSON(t, http.MethodGet, url, v)
}

// PostJSON POSTs an empty body to url, like GetJSON.
func PostJSON(t testing.TB, url string, v any) (status int) {
	t.Helper()
	return mustJSON(t, http.MethodPost, url, v)
}

func mustJSON(t testing.TB, method, url string, v any) int {
	t.Helper()
	code, err := doJSON(method, url, v)
	if code == 0 {
		return 0
	}
	if err != nil {
		t.Fatalf("cptest: %v", err)
	}
	return code
}

// WaitHealthy polls <p.HealthURL()>/healthz until it answers 200 and returns
// the body.
func (p *Process) WaitHealthy(t testing.TB, timeout time.Duration) cpapi.Health {
	t.Helper()
	var h cpapi.Health
	p.WaitFor(t, timeout, "GET /healthz to answer 200", func() (bool, string) {
		h = cpapi.Health{}
		code, err := TryGetJSON(p.HealthURL()+"/healthz", &h)
		if err != nil {
			return false, err.Error()
		}
		return code == http.StatusOK, fmt.Sprintf("%d %+v", code, h)
	})
	return h
}

// Actors GETs /debug/actors.
func (p *Process) Actors(t testing.TB) cpapi.ActorNode {
	t.Helper()
	var root cpapi.ActorNode
	if code := GetJSON(t, p.HealthURL()+"/debug/actors", &root); code != http.StatusOK {
		t.Fatalf("cptest: GET /debug/actors answered %d\nstderr tail:\n%s", code, p.Tail(TailLines))
	}
	return root
}

// FindActor returns the node named name (its last path element, or its
// whole path) in the tree under root.
func FindActor(root cpapi.ActorNode, name string) (cpapi.ActorNode, bool) {
	if root.Name == name || root.Path == name {
		return root, true
	}
	for _, c := range root.Children {
		if n, ok := FindActor(c, name); ok {
			return n, true
		}
	}
	return cpapi.ActorNode{}, false
}

// Result is how a command run by RunCmd ended.
type Result struct {
	Stdout, Stderr string
	Code           int // exit code; -1 when it did not exit normally
}

// DefaultCmdTimeout is a generous bound for one short CLI command.
var DefaultCmdTimeout = time.Minute

// RunCmd runs bin with args and env to completion, bounded by timeout.
func RunCmd(t testing.TB, timeout time.Duration, env []string, bin string, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	res := Result{Stdout: stdout.String(), Stderr: stderr.String(), Code: -1}
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("cptest: %s %v did not finish within %s\nstdout:\n%s\nstderr:\n%s", bin, args, timeout, res.Stdout, res.Stderr)
	case err == nil:
		res.Code = 0
	case errors.As(err, &exitErr):
		res.Code = exitErr.ExitCode()
	default:
		t.Fatalf("cptest: running %s %v: %v", bin, args, err)
	}
	return res
}
