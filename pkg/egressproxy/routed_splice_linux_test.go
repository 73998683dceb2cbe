//go:build linux

package egressproxy

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

const routedSpliceHelperEnv = "EGRESSPROXY_ROUTED_SPLICE_HELPER"

// TestRoutedSpliceHelperProcess is the body TestRoutedUsesSplice runs under
// strace: spliceBytes from an ssh-like server through a tcp rule's
// dedicated listener.
func TestRoutedSpliceHelperProcess(t *testing.T) {
	if os.Getenv(routedSpliceHelperEnv) != "1" {
		t.Skip("helper for TestRoutedUsesSplice")
	}
	const host = "127.0.0.66"
	w := routedWorld(t, host)
	srv := rawServer(t, func(c net.Conn) { io.CopyN(c, zeros{}, spliceBytes) })
	w.host("bulk.test", 2222, srv.Addr().String())
	w.setPolicy(loopback, egressrules.Rule{Dst: "bulk.test", Proto: egressrules.TCP, Port: egressrules.Port(2222)})
	c, err := net.Dial("tcp", listenerFor(t, w, host, 1, 2222))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if n, err := readAllCount(c); err != nil || n != spliceBytes {
		t.Fatalf("read %d bytes, %v", n, err)
	}
}

// TestRoutedUsesSplice checks with strace that a routed leg moves its bytes
// with splice(2), as the catch-all's passthrough does (see
// TestPassthroughUsesSplice): both conns stay bare.
func TestRoutedUsesSplice(t *testing.T) {
	if os.Getenv(routedSpliceHelperEnv) == "1" {
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
		os.Args[0], "-test.run=^TestRoutedSpliceHelperProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), routedSpliceHelperEnv+"=1")
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
	var moved int64
	re := regexp.MustCompile(`splice\(.*\) = ([1-9][0-9]*)`)
	matches := re.FindAllStringSubmatch(string(trace), -1)
	for _, m := range matches {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		moved += n
	}
	// Each byte is spliced twice (socket -> pipe -> socket).
	if moved < 2*spliceBytes {
		t.Fatalf("splice moved %d bytes in %d calls; want >= %d (is a conn wrapped?)\n%.2000s", moved, len(matches), 2*spliceBytes, trace)
	}
	t.Logf("splice moved %d bytes in %d calls", moved, len(matches))
}
