package clawkercli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/oauth"
	"github.com/clawker/clawker-cp/pkg/settings"
)

// Reading /debug/actors and /debug/state (controlplane tree and state).
//
// The control plane serves them on an internal listener that only its
// Oathkeeper reaches, and Oathkeeper serves them on oathkeeper_port (TLS
// with the control plane's server certificate, published on the host's
// loopback) to bearer tokens with scope admin. The CLI gets its token as
// every other verb does (client clawker-cli, adminclient.NewTokenSource)
// and trusts the clawker CA only.
//
// A control plane without Ory (a host process started without --ory-dir,
// as tests run it) has nothing on oathkeeper_port: when the connection is
// refused there, the CLI reads the health port instead, which serves
// /debug/* when it is bound to loopback (a host process).

// debugTimeout bounds each step of a read: reaching Oathkeeper, the token
// exchange, the GET.
const debugTimeout = 5 * time.Second

// maxDebugBody bounds the answer read (the worldview of a busy host is
// well under this).
const maxDebugBody = 64 << 20

// proxyBase is the control plane's Oathkeeper as seen from the host.
func proxyBase(s settings.Settings) string {
	return "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(s.ControlPlane.OathkeeperPort))
}

// getDebug GETs one of the control plane's debug endpoints (path is
// /debug/actors or /debug/state), decodes its JSON into v and returns the
// raw body as well.
func getDebug(ctx context.Context, paths settings.Paths, s settings.Settings, path string, v any) ([]byte, error) {
	base := proxyBase(s)
	url := base + path
	dctx, cancel := context.WithTimeout(ctx, debugTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", strings.TrimPrefix(base, "https://"))
	if errors.Is(err, syscall.ECONNREFUSED) {
		return getDebugPlain(healthBase(s), base, path, v)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot reach the control plane's Oathkeeper at %s: %v; check it with `clawker controlplane status`", base, err)
	}
	m, err := adminclient.LoadMaterial(paths.AuthDir)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(m.CA)
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, ServerName: certs.ServerCommonName}
	// A handshake on this first connection checks the proxy's certificate
	// before a token is asked for (and, completed, it keeps the proxy from
	// logging an aborted one).
	tc := tls.Client(conn, tlsCfg)
	err = tc.HandshakeContext(dctx)
	_ = tc.Close()
	if err != nil {
		return nil, proxyTLSError(base, err)
	}

	ts, err := adminclient.NewTokenSource(m, s)
	if err != nil {
		return nil, err
	}
	tctx, cancelToken := context.WithTimeout(ctx, debugTimeout)
	defer cancelToken()
	tok, err := ts.Token(tctx)
	if err != nil {
		hint := "check the control plane with `clawker controlplane status`"
		var oe *oauth.Error
		if errors.As(err, &oe) && (oe.Kind == oauth.KindRefused || oe.Kind == oauth.KindTLS) {
			hint = adminclient.RestartHint
		}
		return nil, fmt.Errorf("reading %s needs an access token: %v; %s", url, err, hint)
	}

	gctx, cancelGet := context.WithTimeout(ctx, debugTimeout)
	defer cancelGet()
	req, err := http.NewRequestWithContext(gctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	req.Header.Set("Accept", "application/json")
	client := &http.Client{
		Transport: &http.Transport{TLSClientConfig: tlsCfg, DisableKeepAlives: true},
		// A redirect would carry the token elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %v; check the control plane with `clawker controlplane status`", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDebugBody))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", url, err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return decodeDebug(path, body, v)
	case http.StatusUnauthorized:
		return nil, fmt.Errorf("%s answered %s: %s; the control plane does not accept this CLI's token: %s",
			url, resp.Status, strings.TrimSpace(string(body)), adminclient.RestartHint)
	case http.StatusForbidden:
		return nil, fmt.Errorf("%s answered %s: %s; %s needs a token with scope admin, and the control plane's Hydra did not grant it to this CLI",
			url, resp.Status, strings.TrimSpace(string(body)), path)
	}
	return nil, fmt.Errorf("%s answered %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
}

// proxyTLSError explains a failed handshake with Oathkeeper.
func proxyTLSError(base string, err error) error {
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	if errors.As(err, &unknownCA) || errors.As(err, &hostname) {
		return fmt.Errorf("the service at %s presented a certificate that is not the control plane's (clawker's CA did not sign it for %s), so it was refused: either another program holds oathkeeper_port or the control plane runs with other auth material; %s",
			base, certs.ServerCommonName, adminclient.RestartHint)
	}
	return fmt.Errorf("TLS handshake with the control plane's Oathkeeper at %s failed: %v; check it with `clawker controlplane status`", base, err)
}

// getDebugPlain reads path from the health port: the way to a control
// plane without Ory, whose proxy (at proxy) refused the connection.
func getDebugPlain(base, proxy, path string, v any) ([]byte, error) {
	resp, err := httpClient.Get(base + path)
	if err != nil {
		return nil, fmt.Errorf("the control plane is not running (nothing answers at %s nor at %s); start it with `clawker controlplane up`", proxy, base)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDebugBody))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", base+path, err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return decodeDebug(path, body, v)
	case http.StatusNotFound:
		// A control plane in its container serves /debug/* only through
		// Oathkeeper.
		return nil, fmt.Errorf("%s answered %s and the control plane's Oathkeeper at %s refused the connection: this control plane serves %s only through Oathkeeper; check it with `clawker controlplane status` (its /healthz names the failing ory_oathkeeper probe)",
			base+path, resp.Status, proxy, path)
	}
	return nil, fmt.Errorf("%s answered %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
}

func decodeDebug(path string, body []byte, v any) ([]byte, error) {
	if err := json.Unmarshal(body, v); err != nil {
		return nil, fmt.Errorf("%s: unreadable answer: %w", path, err)
	}
	return body, nil
}
