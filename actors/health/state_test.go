package health_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/health"
	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/testkit/actortest"
)

// startStateRig runs a health actor whose /debug/state asks overseerPID
// (built by mk; nil for none) and returns the port's base URL.
func startStateRig(t *testing.T, mk func(sys *actor.ActorSystem) *actor.PID) string {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(cptest.FreePorts(t, 1)[0])
	sys := actortest.Quiet()
	var o *actor.PID
	if mk != nil {
		o = mk(sys)
	}
	h := sys.Root.Spawn(actor.PropsFromProducer(health.New(health.Config{
		Addr: addr, RootPath: "none", ProbeTimeout: time.Second, Overseer: o, Log: zap.NewNop(),
	})))
	t.Cleanup(func() {
		_ = sys.Root.StopFuture(h).Wait()
		sys.Shutdown()
	})
	return "http://" + addr
}

func getState(t *testing.T, url string) (int, string) {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := hc.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDebugState(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)
	base := startStateRig(t, func(sys *actor.ActorSystem) *actor.PID {
		o := sys.Root.Spawn(actor.PropsFromProducer(overseer.New()))
		sys.Root.Send(o, &overseer.Publish{Event: &overseer.ContainerStarted{
			Container: overseer.Container{ID: "abc", Name: "clawker.p.a", Purpose: "agent", Project: "p", Agent: "a"}, At: at,
		}})
		return o
	})
	code, body := getState(t, base+"/debug/state")
	if code != http.StatusOK {
		t.Fatalf("GET /debug/state: %d %s", code, body)
	}
	var st cpapi.WorldState
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if len(st.Containers) != 1 || st.Containers[0].ID != "abc" || st.Containers[0].State != cpapi.ContainerRunning || !st.Containers[0].Since.Equal(at) {
		t.Errorf("state %+v", st)
	}
	if st.Sessions == nil || !strings.Contains(body, `"sessions": []`) {
		t.Errorf("sessions should be an empty list, not null: %s", body)
	}
}

// An overseer that does not answer makes /debug/state fail within its
// one-second bound, saying so.
func TestDebugStateOverseerSilent(t *testing.T) {
	t.Parallel()
	base := startStateRig(t, func(sys *actor.ActorSystem) *actor.PID {
		return sys.Root.Spawn(actor.PropsFromFunc(func(actor.Context) {})) // never answers
	})
	begin := time.Now()
	code, body := getState(t, base+"/debug/state")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "overseer did not answer") {
		t.Errorf("GET /debug/state: %d %s", code, body)
	}
	if d := time.Since(begin); d > 4*time.Second {
		t.Errorf("answered after %s", d)
	}
}

func TestDebugStateWithoutOverseer(t *testing.T) {
	t.Parallel()
	base := startStateRig(t, nil)
	if code, body := getState(t, base+"/debug/state"); code != http.StatusServiceUnavailable {
		t.Errorf("GET /debug/state: %d %s", code, body)
	}
}
