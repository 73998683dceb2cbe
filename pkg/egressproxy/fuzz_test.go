package egressproxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// replayConn is a connection whose peer sent b and then went quiet;
// what is written to it goes nowhere.
type replayConn struct{ r *bytes.Reader }

func (c replayConn) Read(p []byte) (int, error)     { return c.r.Read(p) }
func (replayConn) Write(p []byte) (int, error)      { return len(p), nil }
func (replayConn) Close() error                     { return nil }
func (replayConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (replayConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (replayConn) SetDeadline(time.Time) error      { return nil }
func (replayConn) SetReadDeadline(time.Time) error  { return nil }
func (replayConn) SetWriteDeadline(time.Time) error { return nil }

var errSeenHello = errors.New("hello seen")

// goServerSNI is the server name crypto/tls's server reads from the same
// bytes, and whether it got as far as reading one.
func goServerSNI(b []byte) (string, bool) {
	var name string
	var seen bool
	srv := tls.Server(replayConn{bytes.NewReader(b)}, &tls.Config{
		GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			name, seen = chi.ServerName, true
			return nil, errSeenHello
		},
	})
	srv.Handshake()
	return name, seen
}

// FuzzClientHello peeks arbitrary first bytes of a connection as the
// catch-all listener does, and decides them under a one-rule policy.
// Properties:
//   - no panic, and nothing is read beyond the input: what Peek replays
//     upstream is a prefix of what the client sent;
//   - TLS without an error always has an SNI, in the form the policy
//     decides (lower case, no trailing dot, a valid host);
//   - the name decided on is the name the server reads: when crypto/tls's
//     server parses the same bytes, its ServerName is the SNI (any
//     difference would let an allowed name carry a connection to another);
//   - an allowed decision is for the one allowed name.
func FuzzClientHello(f *testing.F) {
	for _, cfg := range []*tls.Config{
		{ServerName: "api.example.test"},
		{ServerName: "API.Example.Test", MaxVersion: tls.VersionTLS12},
		{ServerName: "192.0.2.1"},
		{InsecureSkipVerify: true}, // no SNI
	} {
		h := clientHello(f, cfg)
		f.Add(h)
		if len(h) > 5+4 && cfg.ServerName != "" {
			f.Add(reframe(f, h, 3))
		}
	}
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a.example.test\r\n\r\n"))
	f.Add([]byte{0x16, 3, 1, 0, 0})
	f.Add([]byte{0x16, 3, 1, 0x40, 1})
	pol := egressrules.Compile([]egressrules.Entry{{Rule: egressrules.Rule{Dst: "api.example.test"}, ID: 1}}, nil)

	f.Fuzz(func(t *testing.T, b []byte) {
		pk, d, err := PeekDecide(bytes.NewReader(b), pol)
		if !bytes.HasPrefix(b, pk.Bytes) {
			t.Fatalf("replay of %d bytes is not a prefix of the %d sent", len(pk.Bytes), len(b))
		}
		if err != nil || pk.Kind != KindTLS {
			if d.Allow {
				t.Fatalf("allowed without a ClientHello: %+v, %v", d, err)
			}
			return
		}
		if pk.SNI == "" {
			t.Fatal("TLS without SNI and without error")
		}
		if h, err := normalizeHost(pk.SNI); err != nil || h != pk.SNI {
			t.Fatalf("SNI %q is not in normal form (%q, %v)", pk.SNI, h, err)
		}
		if d.Allow && pk.SNI != "api.example.test" {
			t.Fatalf("SNI %q allowed by a rule for api.example.test: %+v", pk.SNI, d)
		}
		if name, seen := goServerSNI(b); seen && strings.ToLower(name) != pk.SNI {
			t.Fatalf("the proxy decides on SNI %q, a Go server reads %q", pk.SNI, name)
		}
	})
}

// FuzzHTTPRequests reads arbitrary bytes as the plain-HTTP path does:
// request after request on one kept-alive connection, each judged on
// its own target. Properties:
//   - no panic;
//   - a target that is refused says what is wrong with it (Host, host
//     name, port or scheme);
//   - an accepted target is in the policy's form (normal host, port not
//     0), and the request the proxy forwards (hop-by-hop headers
//     stripped, Request.Write) is read by a Go upstream as being for the
//     same host and port, or not at all: a request cannot be decided on
//     one host and delivered to another.
func FuzzHTTPRequests(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a.example.test\r\n\r\n",
		"GET http://A.Example.Test:8080/x HTTP/1.1\r\nHost: b.example.test\r\n\r\n",
		"POST /u HTTP/1.1\r\nHost: a.example.test\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: b.example.test\r\n\r\n",
		"POST /u HTTP/1.1\r\nHost: a.example.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: c.example.test:81\r\nConnection: close, X-Drop\r\nX-Drop: 1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		"CONNECT a.example.test:443 HTTP/1.1\r\nHost: a.example.test:443\r\n\r\n",
		"GET https://a.example.test/ HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example.test:0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReader(bytes.NewReader(data))
		for range 4 {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			host, port, err := requestTarget(req)
			if err != nil {
				msg := strings.ToLower(err.Error())
				if !strings.Contains(msg, "host") && !strings.Contains(msg, "scheme") {
					t.Fatalf("refusal %q names neither the host nor the scheme", err)
				}
				return
			}
			if h, err := normalizeHost(host); err != nil || h != host || port == 0 {
				t.Fatalf("target %q:%d is not in the policy's form (%q, %v)", host, port, h, err)
			}
			if req.Method == http.MethodConnect {
				return // refused before anything is forwarded
			}
			stripHopByHop(req.Header, isUpgrade(req.Header))
			var out bytes.Buffer
			if err := req.Write(&out); err != nil {
				return // the proxy drops the connection
			}
			sent := bytes.Clone(out.Bytes())
			fwd, err := http.ReadRequest(bufio.NewReader(&out))
			if err != nil {
				// An opaque URI (GET http:x) is forwarded as a request
				// line the upstream refuses: no host to confuse.
				return
			}
			// A Go server routes on Request.Host (the absolute-form
			// authority, else the Host header).
			fh, fp := upstreamTarget(fwd.Host)
			if fh != host || fp != port {
				t.Fatalf("decided on %s:%d, the upstream reads Host %q\n%q", host, port, fwd.Host, sent)
			}
			io.Copy(io.Discard, fwd.Body)
			if req.Close {
				return
			}
		}
	})
}

// upstreamTarget is the host (lower case, no trailing dot) and port
// (80 when none) of a Host value.
func upstreamTarget(hp string) (string, uint16) {
	host, port := hp, uint16(80)
	if h, p, err := net.SplitHostPort(hp); err == nil {
		n, _ := strconv.ParseUint(p, 10, 16)
		host, port = h, uint16(n)
	}
	return strings.TrimSuffix(strings.ToLower(host), "."), port
}
