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
	FieldLeaves      = "leaves"
	FieldStep        = "step"
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
	cert, key, err := issueLeaf(m.CA, m.CAKey, agentLeafSpec(id), m.clock(), validity)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: mint agent cert: %w", err)
	}
	if keyPEM, err = encodeKey(key); err != nil {
		return nil, nil, fmt.Errorf("certs: mint agent cert: %w", err)
	}
	return encodeCert(cert.Raw), keyPEM, nil
}

// AgentChain says how many leaves MintAgentChain signs for one agent key
// and when each is valid: leaf i from Start + i*Step for Validity. Step <
// Validity makes the windows overlap, so one is always valid with hours to
// spare, whatever the hour clawkerd dials at.
type AgentChain struct {
	Leaves   int
	Validity time.Duration
	Step     time.Duration
	// Start is when the first leaf becomes valid (minus the usual hour of
	// clock skew); zero means now.
	Start time.Time
}

// DefaultAgentChain is what `clawker run` mints: 30 leaves of 48 h, one
// starting every 24 h, so an agent is covered for 31 days while no single
// leaf, copied out of the container, is good for more than two.
var DefaultAgentChain = AgentChain{Leaves: 30, Validity: 48 * time.Hour, Step: 24 * time.Hour}

// maxAgentChainLeaves bounds a chain (a leaf is about 700 bytes of PEM).
const maxAgentChainLeaves = 1000

// End is when the chain's last leaf expires (before clamping to the CA).
func (c AgentChain) End(start time.Time) time.Time {
	return start.Add(time.Duration(c.Leaves-1)*c.Step + c.Validity)
}

// MintAgentChain issues c.Leaves agent certificates for id (as
// MintAgentCert does one) that all certify the same fresh key, with
// consecutive overlapping validity windows (AgentChain), and returns them
// as one PEM file, earliest first, and the key's PEM. The registry binds
// the key (KeyThumbprint), not a leaf, so clawkerd moving on to the next
// leaf keeps its binding. Leaves that would start after the CA expires
// are left out.
func (m *Material) MintAgentChain(id AgentIdentity, c AgentChain) (chainPEM, keyPEM []byte, err error) {
	fail := func(err error) ([]byte, []byte, error) {
		return nil, nil, fmt.Errorf("certs: mint agent chain: %w", err)
	}
	if err := id.Validate(); err != nil {
		return fail(err)
	}
	switch {
	case c.Leaves < 1 || c.Leaves > maxAgentChainLeaves:
		return fail(&InvalidFieldError{FieldLeaves, fmt.Sprint(c.Leaves), fmt.Sprintf("must be 1 to %d", maxAgentChainLeaves)})
	case c.Validity <= 0:
		return fail(&InvalidFieldError{FieldValidity, c.Validity.String(), "must be positive"})
	case c.Leaves > 1 && (c.Step <= 0 || c.Step > c.Validity):
		return fail(&InvalidFieldError{FieldStep, c.Step.String(), "must be positive and at most the validity, or the chain has gaps"})
	}
	if m.CA == nil || m.CAKey == nil {
		return nil, nil, fmt.Errorf("%w: CA key (agent certs are minted on the host)", ErrNoKey)
	}
	key, err := newKey()
	if err != nil {
		return fail(err)
	}
	start := c.Start
	if start.IsZero() {
		start = m.clock()
	}
	spec := agentLeafSpec(id)
	for i := range c.Leaves {
		from := start.Add(time.Duration(i) * c.Step)
		if i > 0 && !from.Before(m.CA.NotAfter) {
			break
		}
		leaf, err := signLeaf(m.CA, m.CAKey, &key.PublicKey, spec, from.Add(-clockSkew), from.Add(c.Validity))
		if err != nil {
			return fail(err)
		}
		chainPEM = append(chainPEM, encodeCert(leaf.Raw)...)
	}
	if keyPEM, err = encodeKey(key); err != nil {
		return fail(err)
	}
	return chainPEM, keyPEM, nil
}

func agentLeafSpec(id AgentIdentity) leafSpec {
	return leafSpec{
		cn:   AgentCommonName,
		eku:  x509.ExtKeyUsageClientAuth,
		uris: []string{AgentURNPrefix + id.Project + "." + id.Agent, ContainerURNPrefix + id.ContainerID},
	}
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

// Thumbprint is the lowercase hex SHA-256 of the cert's DER: it names one
// certificate (one leaf of an agent's chain).
func Thumbprint(leaf *x509.Certificate) string {
	sum := sha256.Sum256(leaf.Raw)
	return hex.EncodeToString(sum[:])
}

// KeyThumbprint is the lowercase hex SHA-256 of the cert's
// SubjectPublicKeyInfo (DER): it names the key, the same for every leaf
// of an agent's chain. The registry binds an agent's container to it.
func KeyThumbprint(leaf *x509.Certificate) string {
	sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}
