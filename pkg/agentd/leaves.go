package agentd

// The agent's certificates.
//
// `clawker run` copies in a chain of short leaves for one key
// (certs.MintAgentChain: by default 30 leaves of 48 h, one starting every
// 24 h), because the control plane cannot mint (the CA key stays on the
// host) and an agent must be able to register again, e.g. after a control
// plane restart, long after its first day. The control plane binds the
// key, not a leaf, so moving on to the next leaf keeps the binding.
//
// At every handshake clawkerd presents the leaf valid now with the latest
// NotAfter. Past the chain's end it logs agent_certs_exhausted, naming the
// fix, and still presents its last leaf: the control plane's clock is the
// one that decides.

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/clawker/clawker-cp/pkg/certs"
)

// leafChain is the agent's leaves, each a tls.Certificate with the key.
type leafChain struct {
	certs []tls.Certificate // Leaf set, in file order
	id    certs.AgentIdentity
	now   func() time.Time
	// firstPEM and keyPEM build the TLS config (certs.AgentClientTLSConfig).
	firstPEM, keyPEM []byte
}

// errChainExhausted: every leaf has expired.
var errChainExhausted = errors.New("every certificate of this agent has expired")

// loadLeafChain reads every CERTIFICATE block of chainPEM as a leaf of the
// key in keyPEM. Every leaf must certify that key and name the same agent
// and container; anything else is a file that was not minted for this
// agent, refused here rather than by the control plane.
func loadLeafChain(chainPEM, keyPEM []byte, now func() time.Time) (*leafChain, error) {
	if now == nil {
		now = time.Now
	}
	c := &leafChain{now: now, keyPEM: keyPEM}
	for rest, i := chainPEM, 0; ; i++ {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("block %d is a %s, not a CERTIFICATE", i+1, blk.Type)
		}
		pair, err := tls.X509KeyPair(pem.EncodeToMemory(blk), keyPEM)
		if err != nil {
			return nil, fmt.Errorf("certificate %d with --key: %w", i+1, err)
		}
		leaf := pair.Leaf
		if leaf == nil {
			if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
				return nil, fmt.Errorf("certificate %d: %w", i+1, err)
			}
			pair.Leaf = leaf
		}
		id, err := certs.ParseAgentIdentity(leaf)
		if err != nil {
			return nil, fmt.Errorf("certificate %d is not an agent certificate: %w", i+1, err)
		}
		if len(c.certs) > 0 && id != c.id {
			return nil, fmt.Errorf("certificate %d is for %s.%s in container %.12s, certificate 1 for %s.%s in container %.12s: "+
				"one file holds the leaves of one agent", i+1, id.Project, id.Agent, id.ContainerID, c.id.Project, c.id.Agent, c.id.ContainerID)
		}
		if len(c.certs) == 0 {
			c.firstPEM = pem.EncodeToMemory(blk)
		}
		c.id = id
		c.certs = append(c.certs, pair)
	}
	if len(c.certs) == 0 {
		return nil, errors.New("no PEM certificate in it")
	}
	return c, nil
}

// pick is the leaf to present at now: of those valid at now, the one with
// the latest NotAfter. With none valid: the earliest to become valid when
// every leaf is still to come (this clock may be behind the control
// plane's), or else the one expiring last, with errChainExhausted when
// all have expired.
func (c *leafChain) pick(now time.Time) (*tls.Certificate, error) {
	var valid, next, last *tls.Certificate
	for i := range c.certs {
		cert := &c.certs[i]
		l := cert.Leaf
		switch {
		case now.Before(l.NotBefore):
			if next == nil || l.NotBefore.Before(next.Leaf.NotBefore) {
				next = cert
			}
		case now.After(l.NotAfter):
			if last == nil || l.NotAfter.After(last.Leaf.NotAfter) {
				last = cert
			}
		default:
			if valid == nil || l.NotAfter.After(valid.Leaf.NotAfter) {
				valid = cert
			}
		}
	}
	switch {
	case valid != nil:
		return valid, nil
	case next != nil:
		return next, nil
	}
	return last, errChainExhausted
}

// end is when the chain's last leaf expires.
func (c *leafChain) end() time.Time {
	var end time.Time
	for _, cert := range c.certs {
		if cert.Leaf.NotAfter.After(end) {
			end = cert.Leaf.NotAfter
		}
	}
	return end
}

// exhaustedFix is what agent_certs_exhausted tells the operator.
func (c *leafChain) exhaustedFix() string {
	return fmt.Sprintf("the control plane will refuse this agent: its certificates (%d leaves) ran out at %s, and only the host, "+
		"which holds the CA key, can mint more: recreate the agent (clawker rm --force %s && clawker run ... %s)",
		len(c.certs), c.end().UTC().Format(time.RFC3339), c.id.Agent, c.id.Agent)
}

// clientConfig is the mTLS config that presents pick's leaf at every
// handshake.
func (c *leafChain) clientConfig(caPEM []byte, serverName string) (*tls.Config, error) {
	cfg, err := certs.AgentClientTLSConfig(caPEM, c.firstPEM, c.keyPEM, serverName)
	if err != nil {
		return nil, err
	}
	cfg.Certificates = nil
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		cert, _ := c.pick(c.now())
		return cert, nil
	}
	return cfg, nil
}

// checkLeaves logs agent_certs_exhausted, once, when the leaf the next
// handshake presents has expired; the dial goes ahead all the same.
func (a *agent) checkLeaves() {
	if a.leaves == nil {
		return
	}
	now := a.leaves.now()
	if _, err := a.leaves.pick(now); err == nil {
		a.exhaustedLogged = false
		return
	}
	if !a.exhaustedLogged {
		a.exhaustedLogged = true
		a.log.error("agent_certs_exhausted", a.leaves.exhaustedFix(), "chain_end", a.leaves.end().UTC().Format(time.RFC3339),
			"leaves", len(a.leaves.certs), "now", now.UTC().Format(time.RFC3339))
	}
}
