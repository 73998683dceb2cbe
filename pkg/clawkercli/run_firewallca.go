package clawkercli

import (
	"crypto/x509"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/settings"
)

// firewallCAForRun is the firewall CA's certificate an agent trusts when
// the firewall is on (made on first need, in the egress rules' directory,
// where the control plane reads it too); nil with the firewall off, where
// nothing inspects the agent's traffic.
func firewallCAForRun(s settings.Settings, paths settings.Paths) (*x509.Certificate, error) {
	if !s.Firewall.Enable {
		return nil, nil
	}
	ca, _, err := certs.EnsureFirewallCA(paths.FirewallDir)
	if err != nil {
		return nil, err
	}
	return ca.Cert, nil
}
