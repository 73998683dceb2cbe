//go:build linux

package egressproxy

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

const spliceHelperEnv = "EGRESSPROXY_SPLICE_HELPER"

// spliceBytes is what the helper moves through the proxy: large enough that a
// non-splice path could not hide behind one buffer.
const spliceBytes = 16 << 20

// TestSpliceHelperProcess is not a test on its own: TestPassthroughUsesSplice
// runs this test binary under strace with the env var set, and this function
// then pushes spliceBytes through an in-process proxy.
func TestSpliceHelperProcess(t *testing.T) {
	if os.Getenv(spliceHelperEnv) != "1" {
		t.Skip("helper for TestPassthroughUsesSplice")
	}
	w := newWorld(t)
	hello := clientHello(t, &tls.Config{ServerName: "bulk.example.test"})
	srv := rawServer(t, func(c net.Conn) {
		io.ReadFull(c, make([]byte, len(hello)))
		io.CopyN(c, zeros{}, spliceBytes)
	})
	w.host("bulk.example.test", 443, srv.Addr().String())
	w.setPolicy(loopback, httpsRule("bulk.example.test"))
	c, err := net.Dial("tcp", w.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	c.Write(hello)
	n, err := readAllCount(c)
	if err != nil || n != spliceBytes {
		t.Fatalf("read %d bytes, %v", n, err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestPassthroughUsesSplice checks, with strace, that the TLS passthrough
// moves its bytes with splice(2): a wrapper around either conn would silently
// fall back to read/write copies and still pass every functional test.
func TestPassthroughUsesSplice(t *testing.T) {
	if os.Getenv(spliceHelperEnv) == "1" {
		t.Skip("inside the helper")
	}
	strace, err := exec.LookPath("strace")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("strace not installed; CI must run this test (apt-get install -y strace)")
		}
		t.Skip("strace not installed (apt-get install -y strace)")
	}
	out := filepath.Join(t.TempDir(), "strace.out")
	cmd := exec.Command(strace, "-f", "-qq", "-e", "trace=splice", "-o", out,
		os.Args[0], "-test.run=^TestSpliceHelperProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), spliceHelperEnv+"=1")
	combined, err := cmd.CombinedOutput()
	if err != nil {
		if strings.Contains(string(combined), "PTRACE") || strings.Contains(string(combined), "Operation not permitted") {
			if os.Getenv("CI") == "true" {
				t.Fatalf("strace cannot trace here: %s", combined)
			}
			t.Skipf("strace cannot trace here (ptrace not permitted): %.200s", combined)
		}
		t.Fatalf("helper under strace: %v\n%s", err, combined)
	}
	trace, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	// Successful splice calls end in "= <positive count>". Under -f a call
	// another thread interrupts is printed in two lines, "splice(... <unfinished
	// ...>" and "<... splice resumed>) = N": the count is on the second.
	moved := int64(0)
	calls := 0
	re := regexp.MustCompile(`(?m)(?:splice\(|<\.\.\. splice resumed>).*\) = ([1-9][0-9]*)$`)
	for _, m := range re.FindAllStringSubmatch(string(trace), -1) {
		var n int64
		for _, ch := range m[1] {
			n = n*10 + int64(ch-'0')
		}
		moved += n
		calls++
	}
	// Each byte is spliced twice (socket -> pipe -> socket).
	if moved < 2*spliceBytes {
		t.Fatalf("splice moved %d bytes in %d calls; want >= %d (is a conn wrapped?)\n%.2000s", moved, calls, 2*spliceBytes, trace)
	}
	t.Logf("splice moved %d bytes in %d calls", moved, calls)
}

// cpuTime is the process's user+system CPU time, for the benchmarks' per-MiB
// CPU figure (client, proxy and server all run in this process).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
