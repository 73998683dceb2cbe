package egressproxy

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/denials"
	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// Inspection: a name whose deciding allow rule carries path rules
// (Decision.Paths != nil) is not spliced. The proxy terminates the agent's
// TLS with a leaf for the SNI minted from the firewall CA, serves HTTP/1.1
// or HTTP/2 (ALPN) on it, decides every request by method and normalised
// path, and forwards the allowed ones over a new TLS leg that verifies the
// upstream's own certificate. Every other name stays passthrough.

// Leaf cache bounds: a leaf lives 24 h (certs.MintInspectionLeaf) and is
// replaced leafRenewBefore its end, so an agent never gets one about to
// expire; leafCacheMax bounds the memory an agent resolving many inspected
// names (wildcard rules) can pin.
const (
	leafRenewBefore = 4 * time.Hour
	leafCacheMax    = 4096
)

// leafCache holds the minted leaves of the current CA. A CA change replaces
// the whole cache (the old leaves chain to a CA agents may no longer trust).
type leafCache struct {
	mu     sync.Mutex
	ca     *certs.FirewallCA
	leaves map[string]*tls.Certificate
	mints  atomic.Uint64
}

// SetInspectCA sets the firewall CA the inspection leaves are minted from.
// A CA with another fingerprint than the current one drops every cached
// leaf; nil leaves inspected names without a CA, and they are refused
// (fail closed) until one is set.
func (s *Server) SetInspectCA(ca *certs.FirewallCA) {
	s.leaves.mu.Lock()
	defer s.leaves.mu.Unlock()
	if cur := s.leaves.ca; cur != nil && ca != nil && cur.Fingerprint == ca.Fingerprint {
		return
	}
	s.leaves.ca = ca
	s.leaves.leaves = map[string]*tls.Certificate{}
}

// InspectCAFingerprint is the fingerprint of the CA set (empty: none).
func (s *Server) InspectCAFingerprint() string {
	s.leaves.mu.Lock()
	defer s.leaves.mu.Unlock()
	if s.leaves.ca == nil {
		return ""
	}
	return s.leaves.ca.Fingerprint
}

// ParseInspectCA builds the firewall CA from its certificate and key PEM,
// as the control plane's stack service hands them to the proxy.
func ParseInspectCA(certPEM, keyPEM []byte) (*certs.FirewallCA, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("firewall CA: %w", err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("firewall CA: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("firewall CA: the certificate is not a CA")
	}
	key, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("firewall CA: the key cannot sign")
	}
	return &certs.FirewallCA{Cert: cert, Key: key, CertPEM: bytes.Clone(certPEM), KeyPEM: bytes.Clone(keyPEM), Fingerprint: certs.CertFingerprint(cert)}, nil
}

// leafFor returns a leaf for host from the cache, minting one when there
// is none or it ends within leafRenewBefore.
func (s *Server) leafFor(host string) (*tls.Certificate, error) {
	lc := &s.leaves
	now := time.Now()
	lc.mu.Lock()
	ca := lc.ca
	if ca == nil {
		lc.mu.Unlock()
		return nil, errors.New("no firewall CA loaded yet; inspected names are refused until the control plane sends it")
	}
	if l := lc.leaves[host]; l != nil && now.Before(l.Leaf.NotAfter.Add(-leafRenewBefore)) {
		lc.mu.Unlock()
		return l, nil
	}
	lc.mu.Unlock()
	// Minted outside the lock: two first connections to one name may both
	// mint, which costs a signature, not correctness.
	leaf, err := certs.MintInspectionLeaf(ca, host, now)
	if err != nil {
		return nil, err
	}
	lc.mints.Add(1)
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.ca != ca {
		return leaf, nil // the CA changed meanwhile: serve this one, cache nothing
	}
	if len(lc.leaves) >= leafCacheMax {
		for h, l := range lc.leaves {
			if !now.Before(l.Leaf.NotAfter.Add(-leafRenewBefore)) {
				delete(lc.leaves, h)
			}
		}
		for h := range lc.leaves {
			if len(lc.leaves) < leafCacheMax {
				break
			}
			delete(lc.leaves, h) // map order: an arbitrary victim
		}
	}
	lc.leaves[host] = leaf
	return leaf, nil
}

// upstreamTLS is the client side of the re-encrypted leg for host: the
// upstream's certificate is verified against Config.UpstreamRoots (the
// system roots plus firewall.upstream_ca) for exactly that name.
func (s *Server) upstreamTLS(host string) *tls.Config {
	return &tls.Config{
		ServerName:         host,
		RootCAs:            s.cfg.UpstreamRoots,
		MinVersion:         tls.VersionTLS12,
		ClientSessionCache: s.sessions,
	}
}

// inspectTLS terminates the agent's TLS for pk.SNI and serves its requests
// until the connection ends.
func (s *Server) inspectTLS(c *liveConn, pk Peeked, l *connLog) {
	host := pk.SNI
	l.inspected = true
	leaf, err := s.leafFor(host)
	if err != nil {
		l.verdict, l.closedBy, l.reason = "error", "error", "inspection: "+err.Error()
		sendAlert(c.client, alertInternalError)
		return
	}
	l.verdict = "allowed"
	raw := &countConn{Conn: c.client, r: io.MultiReader(bytes.NewReader(pk.Bytes), c.client)}
	tc := tls.Server(raw, &tls.Config{
		Certificates: []tls.Certificate{*leaf},
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
	})
	defer func() { l.up, l.down = raw.in.Load(), raw.out.Load() }()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PeekTimeout)
	err = tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		l.closedBy = "error"
		l.reason = "inspection handshake with the agent failed (does it trust the firewall CA?): " + err.Error()
		return
	}
	c.client.SetReadDeadline(time.Time{})

	ins := &inspection{s: s, c: c, host: host, l: l, src: l.src}
	ins.tr = &http.Transport{
		// The pinned dial: resolve once, floor-check, dial exactly the
		// checked IP; whatever address the transport asks for is ignored.
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			conn, addr, err := s.dialAllowed(s.policy.Load(), host, 443)
			if err != nil {
				return nil, err
			}
			ins.mu.Lock()
			ins.upstream = addr
			ins.mu.Unlock()
			return conn, nil
		},
		TLSClientConfig:     s.upstreamTLS(host),
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: s.cfg.DialTimeout,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     httpIdleTimeout,
		ReadBufferSize:      64 << 10,
		WriteBufferSize:     64 << 10,
	}
	defer ins.tr.CloseIdleConnections()
	ins.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "https"
			pr.Out.URL.Host = host
			pr.Out.Host = host
		},
		Transport:      ins.tr,
		BufferPool:     copyBuffers,
		ErrorHandler:   ins.upstreamError,
		ModifyResponse: ins.recordStatus,
		ErrorLog:       log.New(logfWriter(s.cfg.Logf), "egressproxy: inspected "+host+": ", 0),
	}

	ln := newOneConnListener(tc)
	ins.ln = ln
	hs := &http.Server{
		Handler:           ins,
		ReadHeaderTimeout: s.cfg.PeekTimeout,
		IdleTimeout:       httpIdleTimeout,
		ErrorLog:          log.New(io.Discard, "", 0),
		ConnState: func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateClosed:
				ln.Close()
			case http.StateHijacked:
				// An upgrade: the server forgets the conn; the handler
				// (the reverse proxy's copy) ends it, see ServeHTTP.
				ins.hijacked.Store(true)
			}
		},
	}
	_ = hs.Serve(ln)
	// HTTP/2 handlers run on their own goroutines and may outlive the
	// connection by a moment; their contexts are cancelled by now.
	for deadline := time.Now().Add(5 * time.Second); ins.active.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	ins.mu.Lock()
	l.upstream = ins.upstream
	ins.mu.Unlock()
	if l.closedBy == "" {
		l.closedBy = "client"
	}
}

// copyBuffers are the reverse proxy's body buffers: larger than its 32 KiB
// default, so a download moves in fewer, fuller TLS records.
var copyBuffers = &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte  { return *b.p.Get().(*[]byte) }
func (b *bufferPool) Put(x []byte) { b.p.Put(&x) }

// inspection is the HTTP handler of one inspected agent connection.
type inspection struct {
	s    *Server
	c    *liveConn
	host string // the SNI: every request must be for it
	src  string
	l    *connLog
	tr   *http.Transport
	rp   *httputil.ReverseProxy

	ln       *oneConnListener
	hijacked atomic.Bool
	active   atomic.Int64
	mu       sync.Mutex // guards upstream and l.requests
	// upstream is the address of the newest upstream connection.
	upstream string
}

// reqInfo travels in a forwarded request's context, so the reverse proxy's
// callbacks can fill in the access-log line.
type reqInfo struct {
	status int
	err    error
}

type reqInfoKey struct{}

func (ins *inspection) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ins.active.Add(1)
	defer func() {
		ins.active.Add(-1)
		if ins.hijacked.Load() {
			ins.ln.Close() // the upgraded connection ended with this handler
		}
	}()
	ins.mu.Lock()
	ins.l.requests++
	ins.mu.Unlock()
	s := ins.s
	rl := requestLog{start: time.Now(), src: ins.src, proto: "https", host: ins.host, method: r.Method, path: rawRequestPath(r)}
	defer func() { s.log.writeRequest(&rl) }()

	if h, err := authorityHost(r.Host, "443"); err != nil || h != ins.host {
		// Domain fronting: the TLS name was allowed, the request is for
		// another host. Only an inspected leg can see this.
		rl.verdict, rl.status = "denied", http.StatusMisdirectedRequest
		rl.reason = fmt.Sprintf("Host %q differs from the TLS server name %q", r.Host, ins.host)
		plainError(w, rl.status, fmt.Sprintf("clawker firewall: this connection is for %s (TLS server name) but the request is for %q: refused (421 Misdirected Request). Connect to that host directly.\n", ins.host, r.Host))
		s.reportDenial(Denial{Time: rl.start, Src: ins.src, Proto: "https", Host: ins.host, Reason: rl.reason})
		return
	}
	if r.Method == http.MethodConnect {
		rl.verdict, rl.status, rl.reason = "denied", http.StatusMethodNotAllowed, "CONNECT on an inspected connection"
		plainError(w, rl.status, "clawker firewall: CONNECT is not supported through the firewall\n")
		return
	}
	// The policy current now: path rules changed since the connection was
	// accepted apply to its next request.
	pol := s.policyFor(ins.c)
	d := decide(pol, ins.host, egressrules.HTTPS, 443)
	if !d.Allow {
		rl.verdict, rl.status, rl.reason = "denied", http.StatusForbidden, d.Reason
		plainError(w, rl.status, fmt.Sprintf("clawker firewall: https://%s denied: %s\nTo allow it: clawker firewall add %s\n", ins.host, d.Reason, ins.host))
		return
	}
	norm, ok := ins.s.decidePath(d, r.Method, rl.path, &rl)
	if !ok {
		rl.verdict, rl.status = "denied", http.StatusForbidden
		body, allow := pathDenyBody("https", ins.host, 443, r.Method, rl.path, rl.reason, rl.denyRule)
		plainError(w, rl.status, body)
		s.reportDenial(Denial{Time: rl.start, Src: ins.src, Proto: "https", Host: ins.host, Reason: rl.reason,
			Where: WherePath, Method: r.Method, Path: rl.path, Allow: allow})
		return
	}
	rl.path = norm
	setPath(r.URL, norm)
	info := &reqInfo{}
	r = r.WithContext(context.WithValue(r.Context(), reqInfoKey{}, info))
	ins.rp.ServeHTTP(w, r)
	rl.status = info.status
	switch {
	case info.err != nil:
		rl.verdict, rl.reason = "error", info.err.Error()
	default:
		rl.verdict = "allowed"
	}
}

// decidePath decides a request's method and raw path under d: with path
// rules their decision, without (the rule lost its path rules since the
// connection began) every path is allowed. It returns the normalised path
// the request is forwarded with.
func (s *Server) decidePath(d egressrules.Decision, method, raw string, rl *requestLog) (string, bool) {
	if d.Paths == nil {
		norm, err := egressrules.NormalizePath(raw)
		if err != nil {
			rl.reason = "malformed path: " + err.Error()
			return "", false
		}
		return norm, true
	}
	pd := d.Paths.Decide(method, raw)
	rl.reason = pd.Reason
	if pd.Rule != nil {
		rl.rule = pd.Rule.Path
		if pd.Rule.Action == egressrules.Deny {
			rl.denyRule = pd.Rule.Path
		}
	}
	if pd.Path != "" {
		rl.path = pd.Path
	}
	return pd.Path, pd.Allow
}

func (ins *inspection) recordStatus(resp *http.Response) error {
	if info, ok := resp.Request.Context().Value(reqInfoKey{}).(*reqInfo); ok {
		info.status = resp.StatusCode
	}
	return nil
}

// upstreamError answers 502 when the upstream could not be reached or its
// certificate does not verify; the latter also gets one log line naming
// the host and the verification error.
func (ins *inspection) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	info, _ := r.Context().Value(reqInfoKey{}).(*reqInfo)
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		// The agent went away mid-request: nothing to answer.
		if info != nil {
			info.err = err
		}
		return
	}
	msg := fmt.Sprintf("clawker firewall: %s is allowed but the upstream could not be reached: %v\n", ins.host, err)
	var verr *tls.CertificateVerificationError
	if errors.As(err, &verr) {
		err = fmt.Errorf("upstream certificate does not verify: %w", verr.Err)
		ins.s.cfg.Logf("egressproxy: inspected %s: upstream certificate does not verify for %s: %v (firewall.upstream_ca adds roots)", ins.host, ins.host, verr.Err)
		msg = fmt.Sprintf("clawker firewall: %s is allowed but its certificate does not verify: %v\nIf it is signed by a private CA, add that CA to firewall.upstream_ca.\n", ins.host, verr.Err)
	}
	if info != nil {
		info.err = err
		info.status = http.StatusBadGateway
	}
	plainError(w, http.StatusBadGateway, msg)
}

// reportDenial hands a refusal to OnDenied at once: a path refusal is one
// request, the connection carries on.
func (s *Server) reportDenial(d Denial) {
	s.pathDenied.Add(1)
	if s.cfg.OnDenied != nil {
		s.cfg.OnDenied(d)
	}
}

// pathDenyBody is the 403 body of a refused request: what was refused, why,
// and the command that allows it. It also returns that command.
func pathDenyBody(scheme, host string, port uint16, method, path, reason, denyRule string) (body, allow string) {
	allow = denials.PathAllowCommand(host, scheme, int(port), method, path, denyRule)
	authority := host
	if (scheme == "http" && port != 80) || (scheme == "https" && port != 443) {
		authority = net.JoinHostPort(host, strconv.Itoa(int(port)))
	}
	return fmt.Sprintf("clawker firewall: %s %s://%s%s denied: %s\nTo allow it: %s\n", method, scheme, authority, path, reason, allow), allow
}

func plainError(w http.ResponseWriter, code int, body string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	io.WriteString(w, body)
}

// rawRequestPath is the request's path as the agent sent it, without the
// query: what the path rules are matched against after normalisation.
func rawRequestPath(r *http.Request) string {
	p := r.RequestURI
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	if !strings.HasPrefix(p, "/") && r.URL != nil && r.URL.IsAbs() {
		p = r.URL.EscapedPath() // absolute form: scheme://host/path
	}
	return p
}

// setPath makes u carry the normalised (still escaped) path: the upstream
// gets exactly the path that was decided, so it cannot read the request
// otherwise than the firewall did.
func setPath(u *url.URL, norm string) {
	dec, err := url.PathUnescape(norm)
	if err != nil {
		dec = norm
	}
	u.Path, u.RawPath = dec, norm
	if u.EscapedPath() != norm {
		u.RawPath = ""
	}
}

// authorityHost is the host of a Host header or :authority, normalised, with
// the default port dropped; another port is an error.
func authorityHost(hp string, defPort string) (string, error) {
	host := hp
	if h, p, err := net.SplitHostPort(hp); err == nil {
		if p != defPort {
			return "", fmt.Errorf("port %s", p)
		}
		host = h
	}
	return normalizeHost(host)
}

// countConn replays the peeked bytes, then reads the conn, counting both
// directions (the inspected leg cannot splice anyway).
type countConn struct {
	net.Conn
	r       io.Reader
	in, out atomic.Int64 // HTTP/2 reads and writes from two goroutines
}

func (c *countConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c *countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(int64(n))
	return n, err
}

// oneConnListener hands http.Server one conn, then blocks until closed.
type oneConnListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func newOneConnListener(c net.Conn) *oneConnListener {
	l := &oneConnListener{ch: make(chan net.Conn, 1), done: make(chan struct{}), addr: c.LocalAddr()}
	l.ch <- c
	return l
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.addr }

// logfWriter adapts Logf to the *log.Logger the reverse proxy wants.
type logfWriter func(format string, args ...any)

func (f logfWriter) Write(p []byte) (int, error) {
	f("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
