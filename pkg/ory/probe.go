package ory

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

// probeTimeout bounds one probe request when the caller's context does not.
const probeTimeout = 2 * time.Second

// Check is one named health check, for /healthz.
type Check struct {
	Name  string
	Check func(ctx context.Context) error
}

// Probe returns the readiness check of the named server: every listener it
// opens answers. Hydra: admin /health/ready and public /health/ready over
// TLS (verified against CAFile, so a bad certificate fails here, not in the
// first CLI exchange). Kratos: admin and public /health/ready. Oathkeeper:
// API /health/ready (rules loaded) and the proxy accepting connections.
func (c Config) Probe(name string) (func(ctx context.Context) error, error) {
	plain := newHTTPClient(nil)
	switch name {
	case Hydra:
		tlsClient, err := c.tlsClient()
		if err != nil {
			return nil, err
		}
		return all(
			getOK(plain, c.HydraAdminURL()+"/health/ready"),
			getOK(tlsClient, c.HydraPublicURL()+"/health/ready"),
		), nil
	case Kratos:
		return all(
			getOK(plain, c.KratosAdminURL()+"/admin/health/ready"),
			getOK(plain, c.KratosPublicURL()+"/health/ready"),
		), nil
	case Oathkeeper:
		proxy := dialOK(hostPort(LoopbackHost, c.Ports.Oathkeeper), nil)
		if c.TLSCertFile != "" {
			tlsClient, err := c.tlsClient()
			if err != nil {
				return nil, err
			}
			// A complete handshake: a bare connect would make the proxy
			// log a handshake error at every probe.
			proxy = dialOK(hostPort(LoopbackHost, c.Ports.Oathkeeper), tlsClient.Transport.(*http.Transport).TLSClientConfig)
		}
		return all(getOK(plain, c.OathkeeperAPIURL()+"/health/ready"), proxy), nil
	}
	return nil, fmt.Errorf("ory: no server named %q", name)
}

// Checks are the health checks of the three servers, named hydra, kratos
// and oathkeeper: their readiness probes.
func (c Config) Checks() ([]Check, error) {
	var out []Check
	for _, n := range Names {
		p, err := c.Probe(n)
		if err != nil {
			return nil, err
		}
		out = append(out, Check{Name: n, Check: p})
	}
	return out, nil
}

// tlsClient trusts CAFile only; without one it trusts the system roots
// (and Hydra public then fails its probe unless its certificate is public).
func (c Config) tlsClient() (*http.Client, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ory: reading the CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ory: %s holds no PEM certificate", c.CAFile)
		}
		cfg.RootCAs = pool
	}
	return newHTTPClient(cfg), nil
}

// newHTTPClient never uses a proxy from the environment and keeps no idle
// connection to a server that may be restarted under it.
func newHTTPClient(tlsCfg *tls.Config) *http.Client {
	return &http.Client{
		Timeout: probeTimeout,
		Transport: &http.Transport{
			Proxy:             nil,
			TLSClientConfig:   tlsCfg,
			DisableKeepAlives: true,
			DialContext:       (&net.Dialer{Timeout: probeTimeout}).DialContext,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func all(checks ...func(ctx context.Context) error) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		for _, c := range checks {
			if err := c(ctx); err != nil {
				return err
			}
		}
		return nil
	}
}

func getOK(c *http.Client, url string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		res, err := c.Do(req)
		if err != nil {
			return err
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s %s", url, res.Status, body)
		}
		return nil
	}
}

// dialOK connects to addr, with a TLS handshake when tlsCfg is set.
func dialOK(addr string, tlsCfg *tls.Config) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		var conn net.Conn
		var err error
		if tlsCfg != nil {
			d := tls.Dialer{NetDialer: &net.Dialer{Timeout: probeTimeout}, Config: tlsCfg}
			conn, err = d.DialContext(ctx, "tcp", addr)
		} else {
			d := net.Dialer{Timeout: probeTimeout}
			conn, err = d.DialContext(ctx, "tcp", addr)
		}
		if err != nil {
			return fmt.Errorf("connecting to %s: %w", addr, err)
		}
		return conn.Close()
	}
}
