package health_test

import (
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/actors/health"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/testkit"
)

func TestLoopbackOnly(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]bool{
		"127.0.0.1:7080": true,
		"127.0.0.5:7080": true,
		"[::1]:7080":     true,
		"localhost:7080": true,
		"0.0.0.0:7080":   false,
		"[::]:7080":      false,
		":7080":          false,
		"10.0.0.2:7080":  false,
		"example.com:80": false,
		"not an address": false,
	} {
		if got := health.LoopbackOnly(addr); got != want {
			t.Errorf("LoopbackOnly(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestListenDebugRefusesExposedAddresses(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{"0.0.0.0:0", ":0"} {
		if d, err := health.ListenDebug(addr); err == nil {
			_ = d.Close()
			t.Errorf("ListenDebug(%q) accepted an address reachable from outside", addr)
		}
	}
	d, err := health.ListenDebug("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if d.Port() == 0 || d.Addr() != "127.0.0.1:"+strconv.Itoa(d.Port()) {
		t.Errorf("Addr %q, Port %d", d.Addr(), d.Port())
	}
	// Close releases the port when no actor took the listener.
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", d.Addr())
	if err != nil {
		t.Fatalf("the port is still held after Close: %v", err)
	}
	_ = ln.Close()
}

func listenDebug(t *testing.T) *health.DebugListener {
	t.Helper()
	d, err := health.ListenDebug("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// wantTree checks that url serves the rig's actor tree.
func wantTree(t *testing.T, url string) {
	t.Helper()
	code, body := get(t, url)
	var n cpapi.ActorNode
	if code != http.StatusOK || json.Unmarshal([]byte(body), &n) != nil || n.Path != "hp" {
		t.Errorf("GET %s: %d %s, want 200 and the tree under hp", url, code, body)
	}
}

// TestDebugOffAnExposedHealthPort: a health port bound to a non-loopback
// address (the container's 0.0.0.0, reachable from clawker-net) serves
// /healthz and the fault hook but no /debug/actors or /debug/state; the
// internal listener serves those two, and nothing else.
func TestDebugOffAnExposedHealthPort(t *testing.T) {
	t.Parallel()
	port := cptest.FreePorts(t, 1)[0]
	debug := listenDebug(t)
	r := startRigDebug(t, true, true, "0.0.0.0:"+strconv.Itoa(port), debug)
	if m := r.waitReady(t); m.Err != nil {
		t.Fatalf("Ready carried %v", m.Err)
	}
	hp := "http://127.0.0.1:" + strconv.Itoa(port)
	internal := "http://" + debug.Addr()

	if code, h := healthz(t, hp); code != http.StatusServiceUnavailable || h.Status != cpapi.StatusNotReady {
		t.Errorf("/healthz on the health port: %d %+v", code, h)
	}
	for _, p := range []string{"/debug/actors", "/debug/state"} {
		if code, body := get(t, hp+p); code != http.StatusNotFound {
			t.Errorf("GET %s on an exposed health port: %d %s, want 404", p, code, body)
		}
	}
	// The fault hook stays where it was (the route answers: the actor
	// is unknown, not the path).
	if code, body := post(t, hp+"/debug/faults?actor=nobody&kind=panic"); code != http.StatusNotFound || !strings.Contains(body, "no live actor") {
		t.Errorf("POST /debug/faults on the health port: %d %s", code, body)
	}

	testkit.WaitFor(t, 5*time.Second, "both children in the tree", func() bool { return len(r.tree.Names()) == 3 })
	wantTree(t, internal+"/debug/actors")
	// No overseer is wired: the route is there and says so.
	if code, body := get(t, internal+"/debug/state"); code != http.StatusServiceUnavailable || !strings.Contains(body, "no overseer") {
		t.Errorf("GET /debug/state on the internal listener: %d %s", code, body)
	}
	for _, p := range []string{"/healthz", "/debug/faults"} {
		if code, body := get(t, internal+p); code != http.StatusNotFound {
			t.Errorf("GET %s on the internal listener: %d %s, want 404", p, code, body)
		}
	}
	if code, body := post(t, internal+"/debug/faults?actor=victim&kind=panic"); code != http.StatusNotFound {
		t.Errorf("POST /debug/faults on the internal listener: %d %s, want 404", code, body)
	}
}

// TestDebugOnALoopbackHealthPort: a health port on loopback (a CP run as a
// host process) is reachable from no agent: it serves /debug/* as well as
// the internal listener.
func TestDebugOnALoopbackHealthPort(t *testing.T) {
	t.Parallel()
	debug := listenDebug(t)
	r := startRigDebug(t, false, true, "", debug)
	r.waitReady(t)
	testkit.WaitFor(t, 5*time.Second, "both children in the tree", func() bool { return len(r.tree.Names()) == 3 })
	wantTree(t, r.base+"/debug/actors")
	wantTree(t, "http://"+debug.Addr()+"/debug/actors")
}

// TestDebugListenerAfterRestart: a restarted health actor serves the
// internal listener again on the same address (Oathkeeper's rules name it).
func TestDebugListenerAfterRestart(t *testing.T) {
	t.Parallel()
	debug := listenDebug(t)
	r := startRigDebug(t, true, false, "", debug)
	r.waitReady(t)
	wantTree(t, "http://"+debug.Addr()+"/debug/actors")
	if code, body := post(t, r.base+"/debug/faults?actor=health&kind=panic"); code != http.StatusAccepted {
		t.Fatalf("%d %s", code, body)
	}
	if m := r.waitReady(t); m.Err != nil {
		t.Fatalf("Ready after restart carried %v", m.Err)
	}
	if n := r.tree.Restarts(r.health); n != 1 {
		t.Fatalf("health restarts %d", n)
	}
	wantTree(t, "http://"+debug.Addr()+"/debug/actors")
}
