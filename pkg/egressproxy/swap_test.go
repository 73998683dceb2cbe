package egressproxy

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

// streamHandler sends chunks of 1 MiB, each after the client asks with one
// byte, so the test paces the transfer without sleeping; n < 0 streams until
// the connection breaks.
func streamHandler(n int) func(*tls.Conn) {
	return func(c *tls.Conn) {
		chunk := make([]byte, 1<<20)
		one := make([]byte, 1)
		for i := 0; n < 0 || i < n; i++ {
			if _, err := io.ReadFull(c, one); err != nil {
				return
			}
			binary.BigEndian.PutUint32(chunk, uint32(i))
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}
}

func TestPolicySwapRemovingRuleClosesTransfer(t *testing.T) {
	w := newWorld(t)
	w.tlsServer("big.example.test", nil, streamHandler(-1))
	w.tlsServer("other.example.test", nil, helloHandler("other"))
	w.setPolicy(loopback, httpsRule("big.example.test"), httpsRule("other.example.test"))
	c, err := w.tlsClient("big.example.test", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A second connection on a rule that stays must survive the swap.
	keep, err := w.tlsClient("other.example.test", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Close()
	buf := make([]byte, 1<<20)
	for i := 0; i < 3; i++ {
		c.Write([]byte{1})
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	}
	w.setPolicy(loopback, httpsRule("other.example.test"))
	start := time.Now()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	var rerr error
	for rerr == nil {
		c.Write([]byte{1})
		_, rerr = io.ReadFull(c, buf)
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("transfer closed %v after the swap (want < 1 s): %v", el, rerr)
	}
	if strings.Contains(rerr.Error(), "timeout") {
		t.Fatalf("transfer not closed by the swap: %v", rerr)
	}
	l := w.waitLog(func(l logLine) bool { return l.Host == "big.example.test" })
	if l.ClosedBy != "policy" || !strings.Contains(l.Reason, "policy changed") {
		t.Fatalf("log %+v", l)
	}
	if got := roundTrip(t, keep); got != "world other\n" {
		t.Fatalf("unrelated connection disturbed: %q", got)
	}
	if w.proxy.Stats().ClosedByPolicy != 1 {
		t.Fatalf("stats %+v", w.proxy.Stats())
	}
}

func TestUnrelatedPolicySwapsDoNotDisturbTransfer(t *testing.T) {
	w := newWorld(t)
	const chunks = 24
	w.tlsServer("big.example.test", nil, streamHandler(chunks))
	w.setPolicy(loopback, httpsRule("big.example.test"))
	c, err := w.tlsClient("big.example.test", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 1<<20)
	br := bufio.NewReader(c)
	for i := 0; i < chunks; i++ {
		if i%2 == 1 && i/2 < 10 {
			// Ten swaps, each adding or dropping rules for other names.
			extra := httpsRule(fmt.Sprintf("unrelated%d.example.test", i))
			if i%4 == 1 {
				w.setPolicy(loopback, extra, httpsRule("big.example.test"), httpRule("big.example.test", 80))
			} else {
				w.setPolicy(loopback, httpsRule("big.example.test"))
			}
		}
		c.Write([]byte{1})
		if _, err := io.ReadFull(br, buf); err != nil {
			t.Fatalf("chunk %d after swaps: %v", i, err)
		}
		if got := binary.BigEndian.Uint32(buf); got != uint32(i) {
			t.Fatalf("chunk %d carries %d", i, got)
		}
	}
	if st := w.proxy.Stats(); st.ClosedByPolicy != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPolicySwapClosesHTTPConnection(t *testing.T) {
	w := newWorld(t)
	w.httpServer("plain.example.test", 80)
	w.setPolicy(loopback, httpRule("plain.example.test", 80))
	cl := w.httpClient(false)
	if code, _ := get(t, cl, "http://plain.example.test/"); code != 200 {
		t.Fatal(code)
	}
	waitFor(t, time.Second, func() bool { return w.proxy.Stats().Active == 1 }, "kept-alive connection")
	w.setPolicy(loopback)
	waitFor(t, time.Second, func() bool { return w.proxy.Stats().Active == 0 }, "connection closed by the swap")
}
