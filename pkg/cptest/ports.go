package cptest

import (
	"net"
	"sync"
	"testing"
)

// handedOut remembers every port FreePorts returned in this process: the
// kernel may offer a port again once its probe listener is closed, and two
// parallel tests must never share one.
var handedOut struct {
	mu    sync.Mutex
	ports map[int]bool
}

// FreePorts returns n distinct TCP ports that were free on 127.0.0.1 a moment
// ago (each bound to port 0, noted, and closed) and that no earlier call in
// this process returned.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	handedOut.mu.Lock()
	defer handedOut.mu.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = map[int]bool{}
	}
	var held []net.Listener
	defer func() {
		for _, l := range held {
			_ = l.Close()
		}
	}()
	ports := make([]int, 0, n)
	// Listeners stay open until the end, so the kernel cannot offer the same
	// port twice within one call; ports handed out earlier are skipped.
	for attempts := 0; len(ports) < n; attempts++ {
		if attempts > 100*n+100 {
			t.Fatalf("cptest: could not find %d free ports on 127.0.0.1", n)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("cptest: finding a free port: %v", err)
		}
		held = append(held, l)
		p := l.Addr().(*net.TCPAddr).Port
		if handedOut.ports[p] {
			continue
		}
		handedOut.ports[p] = true
		ports = append(ports, p)
	}
	return ports
}
