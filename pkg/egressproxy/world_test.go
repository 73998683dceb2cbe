package egressproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// The test world: every server listens on 127.0.0.1. The fake resolver answers
// each name with its own 127.0.0.N, and the proxy's Dial maps N:port back to
// the server's real 127.0.0.1 port, so the proxy's resolve/check/dial path is
// exercised for real while no packet leaves 127.0.0.1.

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "egressproxy test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) leaf(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

type fakeResolver struct {
	mu      sync.Mutex
	answers map[string][]netip.Addr
	lookups atomic.Int64
}

func (r *fakeResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	r.lookups.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	a, ok := r.answers[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return a, nil
}

// syncBuffer is a concurrency-safe access-log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines() []logLine {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []logLine
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if l == "" {
			continue
		}
		var ll logLine
		if err := json.Unmarshal([]byte(l), &ll); err == nil {
			out = append(out, ll)
		}
	}
	return out
}

type world struct {
	t        testing.TB
	ca       *testCA
	res      *fakeResolver
	proxy    *Server
	addr     string // proxy listener
	log      *syncBuffer
	mu       sync.Mutex
	dialMap  map[string]string // "127.0.0.N:port" -> real server address
	nextIP   byte
	dials    atomic.Int64
	realDial func(ctx context.Context, network, addr string) (net.Conn, error)
}

func newWorld(t testing.TB) *world {
	t.Helper()
	w := &world{
		t:       t,
		ca:      newTestCA(t),
		res:     &fakeResolver{answers: map[string][]netip.Addr{}},
		log:     &syncBuffer{},
		dialMap: map[string]string{},
		nextIP:  2,
	}
	d := &net.Dialer{}
	w.realDial = d.DialContext
	w.proxy = New(Config{
		Resolver:    w.res,
		Dial:        w.dial,
		PeekTimeout: 2 * time.Second,
		DialTimeout: 2 * time.Second,
		AccessLog:   w.log,
		Logf:        t.Logf,
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.addr = ln.Addr().String()
	done := make(chan struct{})
	go func() { defer close(done); w.proxy.Serve(ln) }()
	t.Cleanup(func() {
		w.proxy.Close()
		<-done
	})
	return w
}

// dial is the proxy's Dial: it refuses anything the test did not map, so a
// bug can never send a packet to a real address.
func (w *world) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	w.dials.Add(1)
	w.mu.Lock()
	real, ok := w.dialMap[addr]
	w.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("test world: no server at %s", addr)
	}
	return w.realDial(ctx, network, real)
}

// host maps name (at the given port) to the server at realAddr and returns
// the 127.0.0.N the resolver answers.
func (w *world) host(name string, port uint16, realAddr string) netip.Addr {
	w.mu.Lock()
	defer w.mu.Unlock()
	ip, ok := w.res.answers[name]
	if !ok {
		ip = []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, w.nextIP})}
		w.nextIP++
		w.res.mu.Lock()
		w.res.answers[name] = ip
		w.res.mu.Unlock()
	}
	w.dialMap[netip.AddrPortFrom(ip[0], port).String()] = realAddr
	return ip[0]
}

// setPolicy compiles rules (allow actions unless given) allowing 127.0.0.0/8
// as a private destination, since every test server lives there.
var genCounter atomic.Uint64

func (w *world) setPolicy(private []string, rules ...egressrules.Rule) {
	w.t.Helper()
	doc := egressrules.Doc{Generation: genCounter.Add(1), PrivateDestinations: private}
	for i, r := range rules {
		if r.Action == "" {
			r.Action = egressrules.Allow
		}
		doc.Rules = append(doc.Rules, egressrules.Entry{Rule: r, ID: uint32(i + 1)})
	}
	p, err := doc.Compile()
	if err != nil {
		w.t.Fatal(err)
	}
	w.proxy.SetPolicy(p)
}

var loopback = []string{"127.0.0.0/8"}

func httpsRule(name string) egressrules.Rule {
	return egressrules.Rule{Dst: name, Proto: egressrules.HTTPS, Port: egressrules.Port(443)}
}

func httpRule(name string, port uint16) egressrules.Rule {
	return egressrules.Rule{Dst: name, Proto: egressrules.HTTP, Port: egressrules.Port(port)}
}

// countingListener counts what reaches a test server, so a test can assert
// that a refused connection delivered nothing.
type countingListener struct {
	net.Listener
	accepts atomic.Int64
	bytes   atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepts.Add(1)
		c = &countingConn{Conn: c, n: &l.bytes}
	}
	return c, err
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// rawServer runs handle for each connection on a fresh 127.0.0.1 listener.
func rawServer(t testing.TB, handle func(net.Conn)) *countingListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	go func() {
		for {
			c, err := cl.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handle(c) }()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return cl
}

// tlsServer terminates TLS with a leaf for name and runs handle on the
// decrypted conn.
func (w *world) tlsServer(name string, cfgMod func(*tls.Config), handle func(*tls.Conn)) (*countingListener, tls.Certificate) {
	cert := w.ca.leaf(w.t, name)
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	if cfgMod != nil {
		cfgMod(cfg)
	}
	cl := rawServer(w.t, func(c net.Conn) {
		tc := tls.Server(c, cfg)
		if err := tc.Handshake(); err != nil {
			return
		}
		handle(tc)
	})
	w.host(name, 443, cl.Addr().String())
	return cl, cert
}

// tlsClient opens a TLS connection to name through the proxy.
func (w *world) tlsClient(name string, mod func(*tls.Config)) (*tls.Conn, error) {
	raw, err := net.Dial("tcp", w.addr)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{ServerName: name, RootCAs: w.ca.pool}
	if mod != nil {
		mod(cfg)
	}
	tc := tls.Client(raw, cfg)
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		raw.Close()
		return nil, err
	}
	raw.SetDeadline(time.Time{})
	return tc, nil
}

// waitLog waits for an access-log line matching pred.
func (w *world) waitLog(pred func(logLine) bool) logLine {
	w.t.Helper()
	var found logLine
	waitFor(w.t, 3*time.Second, func() bool {
		for _, l := range w.log.lines() {
			if pred(l) {
				found = l
				return true
			}
		}
		return false
	}, "access-log line")
	return found
}

func waitFor(t testing.TB, d time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// captureConn records what a TLS client writes; its reads fail, which ends
// the handshake right after the ClientHello is written.
type captureConn struct {
	net.Conn
	buf bytes.Buffer
}

func (c *captureConn) Write(p []byte) (int, error)      { return c.buf.Write(p) }
func (c *captureConn) Read(p []byte) (int, error)       { return 0, errors.New("capture only") }
func (c *captureConn) Close() error                     { return nil }
func (c *captureConn) SetDeadline(time.Time) error      { return nil }
func (c *captureConn) SetReadDeadline(time.Time) error  { return nil }
func (c *captureConn) SetWriteDeadline(time.Time) error { return nil }
func (c *captureConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *captureConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }

// clientHello returns the bytes a real crypto/tls client sends first.
func clientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	c := &captureConn{}
	tls.Client(c, cfg).Handshake()
	if c.buf.Len() < 5 {
		t.Fatal("no ClientHello captured")
	}
	return c.buf.Bytes()
}

// reframe splits the handshake payload of a single-record ClientHello into
// parts records, as a client with a small record size (or a middlebox) might.
func reframe(t testing.TB, rec []byte, parts int) []byte {
	t.Helper()
	n := int(rec[3])<<8 | int(rec[4])
	if len(rec) != 5+n {
		t.Fatalf("want one record, have %d bytes for a %d-byte record", len(rec), n)
	}
	body := rec[5:]
	var out []byte
	step := (len(body) + parts - 1) / parts
	for i := 0; i < len(body); i += step {
		chunk := body[i:min(i+step, len(body))]
		out = append(out, 0x16, rec[1], rec[2], byte(len(chunk)>>8), byte(len(chunk)))
		out = append(out, chunk...)
	}
	return out
}

// reframeConn re-frames the first write (the ClientHello) into parts records.
type reframeConn struct {
	net.Conn
	t     testing.TB
	parts int
	done  bool
}

func (c *reframeConn) Write(p []byte) (int, error) {
	if c.done {
		return c.Conn.Write(p)
	}
	c.done = true
	if _, err := c.Conn.Write(reframe(c.t, p, c.parts)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// readAllCount reads r to EOF and returns the byte count.
func readAllCount(r io.Reader) (int64, error) {
	return io.Copy(io.Discard, bufio.NewReaderSize(r, 64<<10))
}
