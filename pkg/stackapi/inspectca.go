package stackapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// The firewall CA (certificate and key) reaches the egress proxy over this
// service, never over its environment or a file: the proxy mints the
// leaves of inspected names from it. Only the proxy's identity may fetch
// it; the DNS sibling's key opens nothing of it. The policy long poll
// carries the CA's fingerprint (InspectCAHeader), so a rotation reaches
// the proxy the way a rule change does.

// InspectCAPath is where the proxy fetches the firewall CA.
const InspectCAPath = "/v1/inspect-ca"

// InspectCAHeader carries the current CA fingerprint on the proxy's policy
// answers (empty: none); the proxy's poll names the one it holds in the
// "ca" query parameter and is answered at once when they differ.
const InspectCAHeader = "X-Clawker-Inspect-Ca"

// InspectCA is the answer of InspectCAPath.
type InspectCA struct {
	Fingerprint string `json:"fingerprint"` // hex SHA-256 of the certificate's DER
	CertPEM     []byte `json:"cert_pem"`
	KeyPEM      []byte `json:"key_pem"`
}

// SetInspectCA makes certPEM/keyPEM the firewall CA served to the proxy
// and wakes its policy poll when the fingerprint changed. Nil certPEM
// withdraws it, and so does a certificate that does not parse or a missing
// key: the proxy then refuses inspected names (fail closed) rather than
// keep a CA the control plane no longer holds.
func (s *Server) SetInspectCA(certPEM, keyPEM []byte) {
	var ca *InspectCA
	if fp, err := PEMFingerprint(certPEM); err == nil && len(keyPEM) > 0 {
		ca = &InspectCA{Fingerprint: fp, CertPEM: bytes.Clone(certPEM), KeyPEM: bytes.Clone(keyPEM)}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if fingerprint(s.inspectCA) == fingerprint(ca) {
		return
	}
	s.inspectCA = ca
	close(s.changed)
	s.changed = make(chan struct{})
}

// InspectCAFingerprint is the fingerprint of the CA served (empty: none).
func (s *Server) InspectCAFingerprint() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fingerprint(s.inspectCA)
}

func fingerprint(ca *InspectCA) string {
	if ca == nil {
		return ""
	}
	return ca.Fingerprint
}

// PEMFingerprint is the hex SHA-256 of the DER of the first certificate in
// certPEM (certs.CertFingerprint of it).
func PEMFingerprint(certPEM []byte) (string, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return "", errors.New("stackapi: firewall CA: no certificate in PEM")
	}
	if _, err := x509.ParseCertificate(block.Bytes); err != nil {
		return "", fmt.Errorf("stackapi: firewall CA: %w", err)
	}
	sum := sha256.Sum256(block.Bytes)
	return hex.EncodeToString(sum[:]), nil
}

func (s *Server) serveInspectCA(w http.ResponseWriter, r *http.Request) {
	if peerName(r) != ProxyClient {
		http.Error(w, "only the egress proxy fetches the firewall CA", http.StatusForbidden)
		return
	}
	s.mu.Lock()
	ca := s.inspectCA
	s.mu.Unlock()
	if ca == nil {
		http.Error(w, "no firewall CA yet (made when a rule first has path rules)", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(ca)
}

// ErrNoInspectCA is FetchInspectCA's error when the control plane has none.
var ErrNoInspectCA = errors.New("the control plane has no firewall CA yet")

// FetchInspectCA fetches the firewall CA (the proxy's identity only).
func (c *Client) FetchInspectCA(ctx context.Context) (*InspectCA, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+InspectCAPath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching the firewall CA: %w", err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, ErrNoInspectCA
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("fetching the firewall CA: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	var ca InspectCA
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&ca); err != nil {
		return nil, fmt.Errorf("fetching the firewall CA: %w", err)
	}
	if fp, err := PEMFingerprint(ca.CertPEM); err != nil || fp != ca.Fingerprint {
		return nil, fmt.Errorf("fetching the firewall CA: the certificate does not match its fingerprint %s", ca.Fingerprint)
	}
	return &ca, nil
}

// The proxy's upstream roots: the host's CA bundle, copied into the proxy
// image at ProxyRootsFile when the image is built (none when the host has
// none), plus firewall.upstream_ca, passed as PEM in EnvUpstreamCA.
const (
	ProxyRootsFile = "/etc/ssl/certs/ca-certificates.crt"
	EnvUpstreamCA  = "CLAWKER_PROXY_UPSTREAM_CA"
)

// The firewall actor hands the CA over through this method set
// (actors/firewall/inspectca.go).
var _ interface{ SetInspectCA(certPEM, keyPEM []byte) } = (*Server)(nil)
