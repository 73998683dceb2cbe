package egressproxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// httpIdleTimeout bounds the wait for the next request on a kept-alive
// connection, so idle agent connections do not pin proxy goroutines forever.
const httpIdleTimeout = 2 * time.Minute

// handleHTTP forwards plain HTTP/1.x request by request, deciding each one on
// its own Host: a kept-alive connection cannot smuggle a second, refused host
// behind an allowed first one. The upstream conn is kept while the host stays
// the same and re-dialled when it changes to another allowed host.
func (s *Server) handleHTTP(c *liveConn, pol *egressrules.Policy, pk Peeked, l *connLog) {
	br := bufio.NewReader(io.MultiReader(bytes.NewReader(pk.Bytes), c.client))
	cw := &flushWriter{bw: bufio.NewWriter(c.client)}
	defer func() { l.down = cw.n }()
	var (
		up    net.Conn
		ubr   *bufio.Reader
		uw    *flushWriter
		upKey string
	)
	defer func() {
		if uw != nil {
			l.up += uw.n
		}
	}()
	for first := true; ; first = false {
		if !first {
			pol = s.policyFor(c) // later requests: the policy current now
			c.client.SetReadDeadline(time.Now().Add(httpIdleTimeout))
		}
		req, err := http.ReadRequest(br)
		if err != nil {
			if first {
				l.verdict, l.closedBy = "denied", "policy"
				l.reason = "malformed HTTP request: " + err.Error()
				s.refuseHTTP(c.client, cw, http.StatusBadRequest, "clawker firewall: malformed HTTP request: "+err.Error()+"\n")
			} else {
				l.closedBy = "client"
			}
			return
		}
		c.client.SetReadDeadline(time.Time{})
		l.requests++
		host, port, err := requestTarget(req)
		if err != nil {
			l.verdict, l.closedBy, l.reason = "denied", "policy", err.Error()
			s.refuseHTTP(c.client, cw, http.StatusBadRequest, "clawker firewall: "+err.Error()+"\n")
			return
		}
		l.addHost(host)
		if req.Method == http.MethodConnect {
			l.verdict, l.closedBy, l.reason = "denied", "policy", "CONNECT is not supported on the transparent proxy"
			s.refuseHTTP(c.client, cw, http.StatusForbidden, "clawker firewall: CONNECT is not supported; connect to "+host+" directly, the firewall sees the TLS server name\n")
			return
		}
		d := decide(pol, host, egressrules.HTTP, port)
		d = s.setKey(c, pol, d, host, egressrules.HTTP, port)
		l.rule, l.reason = ruleKey(d), d.Reason
		if !d.Allow {
			l.verdict, l.closedBy = "denied", "policy"
			s.refuseHTTP(c.client, cw, http.StatusForbidden, denyBody(host, port, d.Reason))
			return
		}
		if d.Paths != nil {
			// Path rules on a plain-HTTP name: decided per request as on an
			// inspected TLS leg, and forwarded with the normalised path.
			rl := requestLog{start: time.Now(), src: l.src, proto: "http", host: host, method: req.Method, path: rawRequestPath(req)}
			norm, ok := s.decidePath(d, req.Method, rl.path, &rl)
			if !ok {
				rl.verdict, rl.status = "denied", http.StatusForbidden
				s.log.writeRequest(&rl)
				body, allow := pathDenyBody("http", host, port, req.Method, rl.path, rl.reason, rl.denyRule)
				l.verdict, l.closedBy, l.reason = "denied", "policy", rl.reason
				l.denial = &Denial{Time: rl.start, Src: l.src, Proto: "http", Host: host, Reason: rl.reason,
					Where: WherePath, Method: req.Method, Path: rl.path, Allow: allow}
				s.pathDenied.Add(1)
				s.refuseHTTP(c.client, cw, http.StatusForbidden, body)
				return
			}
			rl.verdict, rl.path = "allowed", norm
			setPath(req.URL, norm)
			s.log.writeRequest(&rl)
		}
		l.verdict = "allowed"

		if key := net.JoinHostPort(host, strconv.Itoa(int(port))); up == nil || key != upKey {
			if up != nil {
				l.up += uw.n
				up.Close()
			}
			conn, addr, err := s.dialAllowed(s.policy.Load(), host, port)
			if err != nil {
				l.verdict, l.closedBy, l.reason = "error", "error", err.Error()
				s.refuseHTTP(c.client, cw, http.StatusBadGateway, fmt.Sprintf("clawker firewall: %s is allowed but could not be reached: %v\n", host, err))
				return
			}
			up, upKey, l.upstream = conn, key, addr
			ubr = bufio.NewReader(up)
			uw = &flushWriter{bw: bufio.NewWriter(up)}
			s.setUpstream(c, up)
			if c.byPolicy.Load() {
				return
			}
		}

		upgrade := isUpgrade(req.Header)
		stripHopByHop(req.Header, upgrade)
		if req.Body != nil && req.Body != http.NoBody {
			req.Body = flushBody{req.Body, uw}
		}
		// The request is written concurrently with reading the response: a
		// client sending "Expect: 100-continue" waits for the interim 100
		// before sending its body, and servers may answer before the body.
		werr := make(chan error, 1)
		go func(w *flushWriter) {
			err := req.Write(w)
			if err == nil {
				err = w.Flush()
			}
			werr <- err
		}(uw)

		var resp *http.Response
		for {
			resp, err = http.ReadResponse(ubr, req)
			if err != nil {
				break
			}
			if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
				resp.Write(cw) // interim response: relay and keep reading
				cw.Flush()
				continue
			}
			break
		}
		if err != nil {
			up.Close() // unblocks the request writer
			<-werr
			l.verdict, l.closedBy, l.reason = "error", "error", "reading upstream response: "+err.Error()
			s.refuseHTTP(c.client, cw, http.StatusBadGateway, fmt.Sprintf("clawker firewall: %s is allowed but its response could not be read: %v\n", host, err))
			return
		}

		if resp.StatusCode == http.StatusSwitchingProtocols {
			if !upgrade {
				resp.Body.Close()
				l.verdict, l.closedBy, l.reason = "error", "error", "101 without an upgrade request"
				return
			}
			resp.Write(cw)
			err := cw.Flush()
			if werr := <-werr; werr != nil || err != nil {
				l.closedBy = "error"
				return
			}
			// Bytes already buffered on either side go first, then the bare
			// conns are spliced.
			if n := br.Buffered(); n > 0 {
				b, _ := br.Peek(n)
				up.Write(b)
				l.up += int64(n)
			}
			if n := ubr.Buffered(); n > 0 {
				b, _ := ubr.Peek(n)
				c.client.Write(b)
				cw.n += int64(n)
			}
			upN, downN, by := pipe(c.client, up)
			l.up += upN
			cw.n += downN
			l.closedBy = by
			return
		}

		stripHopByHop(resp.Header, false)
		if resp.Body != nil && resp.Body != http.NoBody {
			resp.Body = flushBody{resp.Body, cw}
		}
		err = resp.Write(cw)
		if err == nil {
			err = cw.Flush()
		}
		resp.Body.Close()
		if err != nil {
			l.closedBy = "error"
			l.reason = "writing response: " + err.Error()
			return
		}
		if err := <-werr; err != nil {
			l.closedBy = "error"
			l.reason = "writing request upstream: " + err.Error()
			return
		}
		if resp.Close {
			l.closedBy = "upstream"
			gentleClose(c.client)
			return
		}
		if req.Close {
			l.closedBy = "client"
			gentleClose(c.client)
			return
		}
	}
}

// requestTarget returns the host and port a request is for: the authority of
// an absolute-form URI (proxy style), else the Host header; port 80 unless
// named.
func requestTarget(req *http.Request) (string, uint16, error) {
	if req.URL.IsAbs() && !strings.EqualFold(req.URL.Scheme, "http") {
		return "", 0, fmt.Errorf("scheme %q in a plain-HTTP request", req.URL.Scheme)
	}
	// http.ReadRequest already prefers the absolute-form authority over the
	// Host header (RFC 9112 3.2.2), and Request.Write sends origin form.
	hp := req.Host
	if hp == "" {
		return "", 0, errors.New("request without a Host")
	}
	host, port := hp, uint16(80)
	if h, p, err := net.SplitHostPort(hp); err == nil {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return "", 0, fmt.Errorf("bad port in Host %q", hp)
		}
		host, port = h, uint16(n)
	}
	host, err := normalizeHost(host)
	if err != nil {
		return "", 0, err
	}
	return host, port, nil
}

// denyBody names what was refused, why, and the exact command that allows it.
func denyBody(host string, port uint16, reason string) string {
	cmd := "clawker firewall add " + host + " --proto http"
	if port != 80 {
		cmd += " --port " + strconv.Itoa(int(port))
	}
	return fmt.Sprintf("clawker firewall: http://%s denied: %s\nTo allow it: %s\n",
		net.JoinHostPort(host, strconv.Itoa(int(port))), reason, cmd)
}

func (s *Server) refuseHTTP(c net.Conn, w *flushWriter, code int, body string) {
	fmt.Fprintf(w, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		code, http.StatusText(code), len(body), body)
	w.Flush()
	gentleClose(c)
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h[name] {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

func isUpgrade(h http.Header) bool {
	return headerHasToken(h, "Connection", "upgrade") && h.Get("Upgrade") != ""
}

// stripHopByHop removes the headers that describe this hop only (RFC 9110
// 7.6.1). An upgrade keeps Connection: Upgrade and Upgrade, which the server
// needs to switch protocols.
func stripHopByHop(h http.Header, upgrade bool) {
	for _, v := range h["Connection"] {
		for t := range strings.SplitSeq(v, ",") {
			t = textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(t))
			if t != "" && !(upgrade && t == "Upgrade") {
				h.Del(t)
			}
		}
	}
	for _, k := range []string{"Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer"} {
		h.Del(k)
	}
	if upgrade {
		h.Set("Connection", "Upgrade")
	} else {
		h.Del("Connection")
		h.Del("Upgrade")
	}
}

// flushWriter buffers writes to a conn and counts them. It deliberately has no
// ReadFrom, so io.Copy feeds it through Write, which lets flushBody flush it
// between reads without corrupting a bufio.Writer mid-ReadFrom.
type flushWriter struct {
	bw *bufio.Writer
	n  int64
}

func (f *flushWriter) Write(p []byte) (int, error) {
	n, err := f.bw.Write(p)
	f.n += int64(n)
	return n, err
}

// WriteByte makes Request.Write use the writer as is instead of wrapping it in
// its own bufio.Writer, which we could not flush.
func (f *flushWriter) WriteByte(b byte) error {
	if err := f.bw.WriteByte(b); err != nil {
		return err
	}
	f.n++
	return nil
}

func (f *flushWriter) Flush() error { return f.bw.Flush() }

// flushBody flushes what was written so far before each read of the body, so
// headers and streamed chunks (SSE, long-poll, 100-continue bodies) go out
// before the proxy blocks waiting for more, while back-to-back data still
// travels in full buffers.
type flushBody struct {
	io.ReadCloser
	f *flushWriter
}

func (b flushBody) Read(p []byte) (int, error) {
	if b.f.bw.Buffered() > 0 {
		if err := b.f.bw.Flush(); err != nil {
			return 0, err
		}
	}
	return b.ReadCloser.Read(p)
}
