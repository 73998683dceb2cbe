package oauth

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// ErrorKind says which step of a token exchange failed.
type ErrorKind int

const (
	// KindUnreachable: no HTTP answer (connection refused, timeout, DNS).
	KindUnreachable ErrorKind = iota + 1
	// KindTLS: the endpoint answered with a certificate the clawker CA
	// did not sign, or the handshake failed otherwise.
	KindTLS
	// KindRefused: the endpoint answered with an OAuth2 error
	// (invalid_client, invalid_scope, jti_known, ...).
	KindRefused
	// KindBadResponse: an answer that is neither a token nor an OAuth2
	// error (a proxy's 502, malformed JSON, no expires_in).
	KindBadResponse
	// KindAssertion: the client assertion could not be minted (bad key).
	KindAssertion
)

// Error is a failed token exchange. Its message names the endpoint, the
// client and, for refusals, Hydra's error code and description.
type Error struct {
	Kind        ErrorKind
	URL         string // token endpoint
	ClientID    string
	StatusCode  int    // HTTP status, 0 without an answer
	Code        string // OAuth2 "error", e.g. invalid_client
	Description string // OAuth2 "error_description" (and "error_hint")
	Err         error  // the underlying transport or decoding error
}

func (e *Error) Error() string {
	switch e.Kind {
	case KindUnreachable:
		return fmt.Sprintf("oauth: token endpoint %s unreachable: %v", e.URL, e.Err)
	case KindTLS:
		return fmt.Sprintf("oauth: TLS with token endpoint %s failed: %v", e.URL, e.Err)
	case KindRefused:
		msg := fmt.Sprintf("oauth: token endpoint %s refused client %q: HTTP %d %s", e.URL, e.ClientID, e.StatusCode, e.Code)
		if e.Description != "" {
			msg += ": " + e.Description
		}
		return msg
	case KindBadResponse:
		return fmt.Sprintf("oauth: token endpoint %s: unusable answer (HTTP %d): %v", e.URL, e.StatusCode, e.Err)
	case KindAssertion:
		return fmt.Sprintf("oauth: client %q: %v", e.ClientID, e.Err)
	}
	return fmt.Sprintf("oauth: token endpoint %s: %v", e.URL, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// transportError classifies an *http.Client error.
func transportError(url, clientID string, err error) *Error {
	var unknownCA x509.UnknownAuthorityError
	var verify *tls.CertificateVerificationError
	var hostname x509.HostnameError
	var recordHeader tls.RecordHeaderError
	kind := KindUnreachable
	if errors.As(err, &unknownCA) || errors.As(err, &verify) || errors.As(err, &hostname) || errors.As(err, &recordHeader) {
		kind = KindTLS
	}
	return &Error{Kind: kind, URL: url, ClientID: clientID, Err: err}
}
