package certs

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/clawker/clawker-cp/pkg/naming"
)

// URN prefixes of the agent cert's URI SANs. The agent URN is
// urn:clawker:agent:<project>.<agent>; the container URN is
// urn:clawker:container:<64-hex docker id>.
const (
	AgentURNPrefix     = "urn:clawker:agent:"
	ContainerURNPrefix = "urn:clawker:container:"
)

// Errors from ParseAgentIdentity, one per way a cert can be wrong, so the
// CP can log precisely why it dropped a connection.
var (
	ErrNotAgentCert        = errors.New("certificate CN is not " + AgentCommonName)
	ErrMissingAgentSAN     = errors.New("agent certificate has no " + AgentURNPrefix + " SAN")
	ErrMissingContainerSAN = errors.New("agent certificate has no " + ContainerURNPrefix + " SAN")
	ErrDuplicateSAN        = errors.New("agent certificate has more than one agent or container SAN")
	ErrUnexpectedSAN       = errors.New("agent certificate has a SAN clawker does not issue")
	ErrMalformedSAN        = errors.New("agent certificate has a malformed clawker SAN")
)

// AgentIdentity is who an agent cert speaks for.
//
// Naming rules (lowercase so they can be used verbatim in Docker names):
//   - Project: [a-z0-9][a-z0-9_.-]{0,62}. Dots are allowed because
//     projects are often named after directories like "my.site".
//   - Agent:   [a-z0-9][a-z0-9_-]{0,62}. No dots, so the agent URN
//     "<project>.<agent>" splits unambiguously at its last dot.
//   - ContainerID: the full Docker id, exactly 64 lowercase hex digits;
//     short ids are ambiguous and would not survive a prefix collision.
type AgentIdentity struct {
	Project     string
	Agent       string
	ContainerID string
}

// Field names used in InvalidFieldError.
const (
	FieldProject     = "project"
	FieldAgent       = "agent"
	FieldContainerID = "container ID"
	FieldValidity    = "validity"
)

// InvalidFieldError reports an input that breaks a naming rule.
type InvalidFieldError struct {
	Field string // one of the Field* constants
	Value string
	Rule  string
}

func (e *InvalidFieldError) Error() string {
	return fmt.Sprintf("invalid %s %q: %s", e.Field, e.Value, e.Rule)
}

// Validate checks id against the naming rules; the error names the field.
func (id AgentIdentity) Validate() error {
	if !naming.ValidProject(id.Project) {
		return &InvalidFieldError{FieldProject, id.Project, "must match " + naming.ProjectRule}
	}
	if !naming.ValidAgent(id.Agent) {
		return &InvalidFieldError{FieldAgent, id.Agent, "must match " + naming.AgentRule + " (no dots)"}
	}
	if !naming.ValidContainerID(id.ContainerID) {
		return &InvalidFieldError{FieldContainerID, id.ContainerID, "must be 64 lowercase hex digits"}
	}
	return nil
}

// MintAgentCert issues a client cert for one agent container: CN clawkerd,
// ClientAuth only, and the two URNs that ParseAgentIdentity reads back. It
// needs the CA key, so it runs on the host; the container receives only
// the returned PEMs and ca.crt. validity is clamped to the CA's lifetime.
func (m *Material) MintAgentCert(id AgentIdentity, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if err := id.Validate(); err != nil {
		return nil, nil, fmt.Errorf("certs: mint agent cert: %w", err)
	}
	if validity <= 0 {
		return nil, nil, fmt.Errorf("certs: mint agent cert: %w", &InvalidFieldError{FieldValidity, validity.String(), "must be positive"})
	}
	if m.CA == nil || m.CAKey == nil {
		return nil, nil, fmt.Errorf("%w: CA key (agent certs are minted on the host)", ErrNoKey)
	}
	spec := leafSpec{
		cn:   AgentCommonName,
		eku:  x509.ExtKeyUsageClientAuth,
		uris: []string{AgentURNPrefix + id.Project + "." + id.Agent, ContainerURNPrefix + id.ContainerID},
	}
	cert, key, err := issueLeaf(m.CA, m.CAKey, spec, m.clock(), validity)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: mint agent cert: %w", err)
	}
	if keyPEM, err = encodeKey(key); err != nil {
		return nil, nil, fmt.Errorf("certs: mint agent cert: %w", err)
	}
	return encodeCert(cert.Raw), keyPEM, nil
}

// ParseAgentIdentity reads the identity out of a verified agent leaf. It
// does not verify the chain: call it on VerifiedChains[0][0] of a live
// handshake (ServerTLSConfig(AgentCommonName) already does).
func ParseAgentIdentity(leaf *x509.Certificate) (AgentIdentity, error) {
	var id AgentIdentity
	if leaf == nil {
		return id, errors.New("certs: nil certificate")
	}
	if leaf.Subject.CommonName != AgentCommonName {
		return id, fmt.Errorf("%w: CN %q", ErrNotAgentCert, leaf.Subject.CommonName)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) > 0 {
		return id, ErrUnexpectedSAN
	}
	var haveAgent, haveContainer bool
	for _, u := range leaf.URIs {
		s := u.String()
		switch {
		case strings.HasPrefix(s, AgentURNPrefix):
			if haveAgent {
				return id, ErrDuplicateSAN
			}
			haveAgent = true
			rest := strings.TrimPrefix(s, AgentURNPrefix)
			dot := strings.LastIndexByte(rest, '.')
			if dot < 0 {
				return id, fmt.Errorf("%w: %q lacks <project>.<agent>", ErrMalformedSAN, s)
			}
			id.Project, id.Agent = rest[:dot], rest[dot+1:]
		case strings.HasPrefix(s, ContainerURNPrefix):
			if haveContainer {
				return id, ErrDuplicateSAN
			}
			haveContainer = true
			id.ContainerID = strings.TrimPrefix(s, ContainerURNPrefix)
		default:
			return id, fmt.Errorf("%w: %q", ErrUnexpectedSAN, s)
		}
	}
	if !haveAgent {
		return AgentIdentity{}, ErrMissingAgentSAN
	}
	if !haveContainer {
		return AgentIdentity{}, ErrMissingContainerSAN
	}
	// The same rules as minting, so whatever the CP accepts could have
	// been minted, and handlers can use the names in paths and labels.
	if err := id.Validate(); err != nil {
		return AgentIdentity{}, fmt.Errorf("%w: %w", ErrMalformedSAN, err)
	}
	return id, nil
}

// parseURN turns one of our URN strings into the url.URL x509 wants, and
// checks it round-trips so ParseAgentIdentity reads back what we wrote.
func parseURN(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "urn" || u.String() != s {
		return nil, fmt.Errorf("%q is not a plain URN", s)
	}
	return u, nil
}

// Thumbprint is the lowercase hex SHA-256 of the cert's DER: a stable key
// for logs and for pinning a specific agent cert.
func Thumbprint(leaf *x509.Certificate) string {
	sum := sha256.Sum256(leaf.Raw)
	return hex.EncodeToString(sum[:])
}
