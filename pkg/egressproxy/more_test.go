package egressproxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestHTTPExpectContinueAndStreaming(t *testing.T) {
	w := newWorld(t)
	release := make(chan struct{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/upload" {
			b, _ := io.ReadAll(r.Body) // makes net/http send the 100 Continue
			fmt.Fprintf(rw, "got %d", len(b))
			return
		}
		// Server-sent events: the first event must reach the client while
		// the handler still waits, or the proxy buffers streams.
		rw.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(rw, "data: one\n\n")
		rw.(http.Flusher).Flush()
		<-release
		io.WriteString(rw, "data: two\n\n")
	})}
	go srv.Serve(ln)
	defer srv.Close()
	w.host("stream.example.test", 80, ln.Addr().String())
	w.setPolicy(loopback, httpRule("stream.example.test", 80))

	c, err := net.Dial("tcp", w.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: stream.example.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 100 {
		t.Fatalf("want 100 Continue before the body: %v %v", resp, err)
	}
	io.WriteString(c, "12345")
	resp, err = http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "got 5" {
		t.Fatalf("body %q", b)
	}

	io.WriteString(c, "GET /events HTTP/1.1\r\nHost: stream.example.test\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	ev := bufio.NewReader(resp.Body)
	line, err := ev.ReadString('\n')
	if err != nil || line != "data: one\n" {
		t.Fatalf("first event not streamed: %q %v", line, err)
	}
	close(release)
	rest, _ := io.ReadAll(ev)
	if !strings.Contains(string(rest), "data: two") {
		t.Fatalf("rest %q", rest)
	}
}

// blockingWriter never returns until released: a stuck stdout.
type blockingWriter struct{ release chan struct{} }

func (b blockingWriter) Write(p []byte) (int, error) { <-b.release; return len(p), nil }

func TestSlowAccessLogDoesNotBlockConnections(t *testing.T) {
	old := accessLogQueue
	accessLogQueue = 1
	defer func() { accessLogQueue = old }()
	bw := blockingWriter{release: make(chan struct{})}
	s := New(Config{AccessLog: bw, Logf: t.Logf})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	defer func() { close(bw.release); s.Close() }()
	for i := 0; i < 5; i++ {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x.example.test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 403 {
			t.Fatalf("conn %d: %v %v", i, resp, err)
		}
		c.Close()
	}
	// One line is stuck in the writer, one fits the queue, the rest drop.
	waitFor(t, 2*time.Second, func() bool { return s.Stats().LogDropped >= 3 }, "dropped log lines")
}
