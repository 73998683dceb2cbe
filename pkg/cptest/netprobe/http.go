package netprobe

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// httpAttempt is one GET. Failures carry the step that failed: "resolve",
// "dial", "tls", "request" or "read".
func httpAttempt(o *Outcome, a Attempt, deadline time.Time) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	host := a.Host
	port := strconv.Itoa(int(a.Port))
	var resolveErr error
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		target := a.DialIP.String()
		if !a.DialIP.IsValid() {
			r := &net.Resolver{PreferGo: true}
			ips, err := r.LookupNetIP(ctx, "ip4", host)
			if err != nil {
				resolveErr = err
				return nil, err
			}
			target = ips[0].String()
		}
		o.Target = net.JoinHostPort(target, port)
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp4", o.Target)
		if err == nil {
			o.Connected = true
			o.Local, o.Remote = c.LocalAddr().String(), c.RemoteAddr().String()
		}
		return c, err
	}
	tr := &http.Transport{
		DialContext:       dial,
		DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{
			ServerName: host,
			// The test compares the reported fingerprint with its own
			// server's: verification would hide a MITM's certificate.
			InsecureSkipVerify: true,
		},
	}
	defer tr.CloseIdleConnections()
	if a.CAFile != "" {
		pemData, err := os.ReadFile(a.CAFile)
		pool := x509.NewCertPool()
		if err != nil || !pool.AppendCertsFromPEM(pemData) {
			o.fail("tls", fmt.Errorf("ca=%s: no PEM roots (%v)", a.CAFile, err))
			return
		}
		tr.TLSClientConfig.InsecureSkipVerify = false
		tr.TLSClientConfig.RootCAs = pool
	}
	scheme := a.Kind
	url := scheme + "://" + net.JoinHostPort(host, port) + a.Path
	if (scheme == "https" && a.Port == 443) || (scheme == "http" && a.Port == 80) {
		url = scheme + "://" + host + a.Path
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		o.fail("request", err)
		return
	}
	o.Sent = "GET " + url
	resp, err := tr.RoundTrip(req)
	if err != nil {
		switch {
		case resolveErr != nil:
			o.fail("resolve", resolveErr)
		case !o.Connected:
			o.fail("dial", err)
		case scheme == "https" && strings.Contains(err.Error(), "tls"):
			o.fail("tls", err)
		default:
			o.fail("request", err)
		}
		return
	}
	defer resp.Body.Close()
	o.Status = resp.StatusCode
	if resp.TLS != nil && len(resp.TLS.PeerCertificates) > 0 {
		sum := sha256.Sum256(resp.TLS.PeerCertificates[0].Raw)
		o.Cert = hex.EncodeToString(sum[:])
	}
	if a.ReadBytes > 0 {
		n, err := io.CopyN(io.Discard, resp.Body, a.ReadBytes)
		o.Bytes = n
		if err != nil {
			o.fail("read", fmt.Errorf("after %d bytes: %w", n, err))
			return
		}
	} else {
		line, _ := bufio.NewReader(io.LimitReader(resp.Body, 4096)).ReadString('\n')
		o.Reply = strings.TrimRight(line, "\r\n")
	}
	o.OK = true
}
