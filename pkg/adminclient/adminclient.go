// Package adminclient connects the clawker CLI to the control plane's
// AdminService: mTLS gRPC on host loopback, authenticated by the CLI
// certificate in the auth directory.
//
// Dial fails fast and says what to do: run "clawker auth rotate" when the
// CLI's material is missing or broken, "clawker controlplane up" when
// nothing listens on the admin port, restart the control plane when it
// serves other auth material than the CLI holds.
//
// With WithOAuth, every method except the public ones (IsPublic) also
// carries an OAuth2 bearer token that the CLI obtains from the control
// plane's Hydra (client clawker-cli, scope admin) with a client assertion
// signed by its signing key (pkg/oauth).
package adminclient

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/oauth"
	"github.com/clawker/clawker-cp/pkg/settings"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// CallTimeout bounds every AdminService call the CLI makes; callers derive
// their per-call context from it.
const CallTimeout = 5 * time.Second

// ProbeTimeout bounds Dial's first call. The connection is lazy, so this
// call is what discovers a stopped control plane or a TLS mismatch; it is
// short because a healthy CP on loopback answers in milliseconds.
const ProbeTimeout = 2 * time.Second

// RestartHint is the fix when the CP serves material the CLI does not
// match (or its Hydra refuses the CLI's assertions): a restart reloads the
// bundle `clawker auth rotate` wrote.
const RestartHint = `if "clawker auth rotate" ran since the control plane started, restart it ("clawker controlplane down", then "clawker controlplane up")`

// Client is an open connection to the AdminService. Close it when done.
type Client struct {
	adminv1.AdminServiceClient
	conn *grpc.ClientConn
	addr string
}

// Addr is the address dialed, 127.0.0.1:<admin_port>.
func (c *Client) Addr() string { return c.addr }

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Dial opens an mTLS gRPC connection to the CP's AdminService on
// 127.0.0.1:<admin_port>, with the CLI certificate from paths.AuthDir. It
// makes one short call (GetSystemTime, public scope) so that a control plane
// that is down or untrusted is reported here, with the fix, rather than as a
// bare "Unavailable" from the first real call.
func Dial(ctx context.Context, paths settings.Paths, s settings.Settings, opts ...Option) (*Client, error) {
	var o dialOptions
	for _, opt := range opts {
		opt(&o)
	}
	m, err := LoadMaterial(paths.AuthDir)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := m.CLIClientTLSConfig("")
	if err != nil {
		return nil, fmt.Errorf("CLI auth material in %s: %w; run \"clawker auth rotate\"", paths.AuthDir, err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(s.ControlPlane.AdminPort))
	rec := &recorder{}
	dopts := []grpc.DialOption{
		grpc.WithTransportCredentials(recordingCreds{credentials.NewTLS(tlsCfg), rec}),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", a)
			if err != nil {
				rec.set(&rec.dialErr, err)
			}
			return c, err
		}),
	}
	ts := o.tokens
	if ts == nil && o.oauth {
		if ts, err = NewTokenSource(m, s); err != nil {
			return nil, err
		}
	}
	if ts != nil {
		dopts = append(dopts,
			grpc.WithPerRPCCredentials(&oauth.PerRPCCredentials{Source: ts, Public: IsPublic}),
			grpc.WithChainUnaryInterceptor(invalidateOnUnauthenticated(ts)))
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, dopts...)
	if err != nil {
		return nil, fmt.Errorf("admin client for %s: %w", addr, err)
	}
	c := &Client{AdminServiceClient: adminv1.NewAdminServiceClient(conn), conn: conn, addr: addr}

	pctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	_, err = c.GetSystemTime(pctx, &adminv1.GetSystemTimeRequest{})
	if err := probeError(ctx, addr, err, rec); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// Option tunes Dial.
type Option func(*dialOptions)

type dialOptions struct {
	oauth  bool
	tokens *oauth.TokenSource
}

// WithOAuth makes every non-public call carry a bearer token from the
// control plane's Hydra (NewTokenSource). Tokens are fetched on the first
// call that needs one, so Dial and the public methods work without Hydra.
func WithOAuth() Option { return func(o *dialOptions) { o.oauth = true } }

// WithTokenSource is WithOAuth with a given source (one shared by several
// connections, or one pointed elsewhere in tests).
func WithTokenSource(ts *oauth.TokenSource) Option {
	return func(o *dialOptions) { o.tokens = ts }
}

// IsPublic reports whether an AdminService method (full name) is served
// without a bearer token. It must agree with the control plane's scope
// map (actors/grpc AdminScopes; a test checks).
func IsPublic(fullMethod string) bool {
	return fullMethod == adminv1.AdminService_GetSystemTime_FullMethodName
}

// TokenURL is Hydra's token endpoint as the CLI reaches it: the public
// port published on host loopback. It is also the client assertion's aud,
// so Hydra's urls.self.public must be https://127.0.0.1:<hydra_public_port>/.
func TokenURL(s settings.Settings) string {
	return "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(s.ControlPlane.HydraPublicPort)) + "/oauth2/token"
}

// NewTokenSource is the CLI's OAuth2 client: clawker-cli, scope admin, its
// assertions signed by the signing key in m, Hydra's certificate verified
// against the clawker CA as the control plane's server name.
func NewTokenSource(m *certs.Material, s settings.Settings) (*oauth.TokenSource, error) {
	if m.CA == nil || m.SigningKey == nil {
		return nil, fmt.Errorf("CLI auth material in %s lacks the CA or the signing key; run \"clawker auth rotate\"", m.Dir)
	}
	pool := x509.NewCertPool()
	pool.AddCert(m.CA)
	return oauth.NewTokenSource(oauth.Config{
		TokenURL:   TokenURL(s),
		ClientID:   oauth.ClientCLI,
		Scopes:     []string{oauth.ScopeAdmin},
		Key:        m.SigningKey,
		RootCAs:    pool,
		ServerName: certs.ServerCommonName,
	})
}

// invalidateOnUnauthenticated drops the cached token when the control
// plane refuses it (Hydra restarted with its in-memory store and forgot
// it, or it was revoked), so the next call exchanges a new assertion.
func invalidateOnUnauthenticated(ts *oauth.TokenSource) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if status.Code(err) == codes.Unauthenticated && !IsPublic(method) {
			ts.Invalidate()
		}
		return err
	}
}

// LoadMaterial loads the CLI's auth material from dir. It distinguishes
// "never created" from "broken": both are fixed by the same command
// ("clawker auth rotate", which its errors name), but the first deserves a
// one-line message.
func LoadMaterial(dir string) (*certs.Material, error) {
	if _, err := os.Stat(filepath.Join(dir, certs.CACertFile)); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no CLI auth material in %s; run \"clawker auth rotate\"", dir)
	}
	m, err := certs.Load(dir)
	if err != nil {
		// certs.Load names the file and ends with the rotate hint.
		return nil, fmt.Errorf("CLI auth material is unusable: %w", err)
	}
	return m, nil
}

// probeError turns the probe's outcome into an actionable error, or nil
// when the CP answered at all: any status the server sent (even
// Unimplemented) proves the connection and both certificates work.
func probeError(ctx context.Context, addr string, err error, rec *recorder) error {
	if err == nil {
		return nil
	}
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
	default:
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("connecting to the control plane at %s: %w", addr, ctx.Err())
	}
	dialErr, hsErr := rec.get()
	var unknownCA x509.UnknownAuthorityError
	switch {
	case errors.Is(dialErr, syscall.ECONNREFUSED):
		return fmt.Errorf("the control plane is not running (nothing answers at %s); start it with \"clawker controlplane up\"", addr)
	case dialErr != nil:
		return fmt.Errorf("cannot reach the control plane at %s: %v; check it with \"clawker controlplane status\"", addr, dialErr)
	case errors.As(hsErr, &unknownCA):
		return fmt.Errorf("the service at %s presented a certificate that clawker's CA did not sign, so it was refused: either another program holds the admin port or the control plane runs with other auth material; %s", addr, RestartHint)
	case hsErr != nil:
		return fmt.Errorf("TLS handshake with the control plane at %s failed: %v; %s", addr, hsErr, RestartHint)
	case st.Code() == codes.DeadlineExceeded:
		return fmt.Errorf("the control plane at %s did not answer within %s; check it with \"clawker controlplane status\"", addr, ProbeTimeout)
	default:
		// The TLS 1.3 client finishes its handshake before the server
		// checks the client certificate, so a CP that does not trust this
		// CLI shows up here, as a closed connection.
		return fmt.Errorf("the control plane at %s refused the connection (%s); it may not trust this CLI's certificate; %s", addr, st.Message(), RestartHint)
	}
}

// recorder keeps the latest dial and handshake errors: gRPC reports both as
// an opaque Unavailable status, and the fix differs.
type recorder struct {
	mu               sync.Mutex
	dialErr, hsError error
}

func (r *recorder) set(field *error, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	*field = err
}

func (r *recorder) get() (dialErr, hsErr error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dialErr, r.hsError
}

// recordingCreds is TLS credentials that remember why a client handshake
// failed.
type recordingCreds struct {
	credentials.TransportCredentials
	rec *recorder
}

func (c recordingCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		c.rec.set(&c.rec.hsError, err)
	}
	return conn, info, err
}

func (c recordingCreds) Clone() credentials.TransportCredentials {
	return recordingCreds{c.TransportCredentials.Clone(), c.rec}
}
