package grpc

import (
	"errors"
	"io"
	"net"

	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"

	"github.com/clawker/clawker-cp/pkg/certs"
)

// agentCredentials admits any client certificate chained to the CA. The
// identity checks (CN, agent and container SANs, replay) happen in the
// Register handler, where a refusal can carry PermissionDenied and a
// register_failed line with its reason instead of a bare handshake error.
func agentCredentials(m *certs.Material, log *zap.Logger) (credentials.TransportCredentials, error) {
	cfg, err := m.ServerTLSConfig(certs.AgentCommonName)
	if err != nil {
		return nil, err
	}
	cfg.VerifyConnection = nil
	return &loggedCreds{TransportCredentials: credentials.NewTLS(cfg), log: log, event: "register_failed", listener: "agent"}, nil
}

// adminCredentials admits only the CLI certificate: an agent certificate
// never completes a handshake with the AdminService.
func adminCredentials(m *certs.Material, log *zap.Logger) (credentials.TransportCredentials, error) {
	cfg, err := m.ServerTLSConfig(certs.CLICommonName)
	if err != nil {
		return nil, err
	}
	return &loggedCreds{TransportCredentials: credentials.NewTLS(cfg), log: log, event: "admin_refused", listener: "admin"}, nil
}

// loggedCreds logs refused handshakes, which gRPC itself swallows.
type loggedCreds struct {
	credentials.TransportCredentials
	log      *zap.Logger
	event    string
	listener string
}

func (c *loggedCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	out, info, err := c.TransportCredentials.ServerHandshake(conn)
	// EOF is a port probe (connect, then close), not a client to report.
	if err != nil && !errors.Is(err, io.EOF) {
		c.log.Warn("TLS handshake refused", zap.String("event", c.event), zap.String("listener", c.listener),
			zap.String("reason", "tls_handshake"), zap.String("peer", conn.RemoteAddr().String()), zap.Error(err))
	}
	return out, info, err
}

func (c *loggedCreds) Clone() credentials.TransportCredentials {
	return &loggedCreds{TransportCredentials: c.TransportCredentials.Clone(), log: c.log, event: c.event, listener: c.listener}
}
