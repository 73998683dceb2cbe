package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// ErrNoKey is returned when a Material lacks the private key an operation
// needs, e.g. minting an agent cert from a server bundle.
var ErrNoKey = errors.New("certs: material lacks the required private key")

// ErrWrongClient is returned (inside the handshake) when a client presents
// a valid cert for another role than the listener serves.
var ErrWrongClient = errors.New("client certificate is for another role")

// ServerTLSConfig is the CP listener's config. It requires a client cert
// chained to the CA and accepts only leaves whose CN is clientCN:
// CLICommonName for the admin listener, AgentCommonName for agents. One
// role per listener keeps authorisation out of the handlers: an agent cert
// can never reach the admin API. For agents it also insists on a
// well-formed identity (ParseAgentIdentity), so handlers can rely on it.
func (m *Material) ServerTLSConfig(clientCN string) (*tls.Config, error) {
	if clientCN == "" {
		return nil, errors.New("certs: ServerTLSConfig: empty client CN")
	}
	if m.CA == nil || m.Server == nil || m.ServerKey == nil {
		return nil, fmt.Errorf("%w: server cert and key", ErrNoKey)
	}
	pool := x509.NewCertPool()
	pool.AddCert(m.CA)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{m.Server.Raw}, PrivateKey: m.ServerKey, Leaf: m.Server}},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		// VerifyConnection, unlike VerifyPeerCertificate, also runs on
		// resumed sessions, so the CN check cannot be skipped that way.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
				return errors.New("certs: no verified client certificate")
			}
			leaf := cs.VerifiedChains[0][0]
			if cn := leaf.Subject.CommonName; cn != clientCN {
				return fmt.Errorf("certs: %w: CN %q, want %q", ErrWrongClient, cn, clientCN)
			}
			if clientCN == AgentCommonName {
				if _, err := ParseAgentIdentity(leaf); err != nil {
					return fmt.Errorf("certs: %w", err)
				}
			}
			return nil
		},
	}, nil
}

// CLIClientTLSConfig is the CLI's config for dialing the CP. serverName
// defaults to ServerCommonName, which the server cert always carries, so
// the CLI can dial any address (127.0.0.1:port) and still verify the CP.
func (m *Material) CLIClientTLSConfig(serverName string) (*tls.Config, error) {
	if m.CA == nil || m.CLI == nil || m.CLIKey == nil {
		return nil, fmt.Errorf("%w: CLI cert and key", ErrNoKey)
	}
	pool := x509.NewCertPool()
	pool.AddCert(m.CA)
	return clientConfig(pool, tls.Certificate{Certificate: [][]byte{m.CLI.Raw}, PrivateKey: m.CLIKey, Leaf: m.CLI}, serverName), nil
}

// AgentClientTLSConfig is clawkerd's config, built from the PEM files the
// host mounted into the container. It depends only on crypto/tls and
// crypto/x509 so the agent binary stays small.
func AgentClientTLSConfig(caPEM, certPEM, keyPEM []byte, serverName string) (*tls.Config, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certs: agent cert/key: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("certs: agent CA: no certificate in PEM")
	}
	return clientConfig(pool, pair, serverName), nil
}

func clientConfig(roots *x509.CertPool, cert tls.Certificate, serverName string) *tls.Config {
	if serverName == "" {
		serverName = ServerCommonName
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		RootCAs:      roots,
		Certificates: []tls.Certificate{cert},
		ServerName:   serverName,
	}
}
