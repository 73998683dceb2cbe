package oauth

import (
	"errors"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/clawker/clawker-cp/pkg/certs"
)

// ContainerClaim is the private claim of a clawker-agent client assertion
// naming the container `clawker run` minted it for (after the container
// was created, before it was started).
const ContainerClaim = "clawker_container"

// AgentAssertionHeader is the gRPC metadata key clawkerd sends the client
// assertion under, beside the access token it exchanged it for, on a
// Register that creates a binding.
const AgentAssertionHeader = "clawker-agent-assertion"

// maxAgentAssertion bounds what VerifyAgentAssertion parses.
const maxAgentAssertion = 16 << 10

// AgentAssertionClaims is what VerifyAgentAssertion read.
type AgentAssertionClaims struct {
	ContainerID string
	IssuedAt    time.Time
	Expiry      time.Time
}

// ErrNoContainerClaim: a verified assertion names no container.
var ErrNoContainerClaim = errors.New("the assertion names no container (" + ContainerClaim + ")")

// VerifyAgentAssertion checks that jws is a clawker-agent client assertion
// signed ES256 with a key of keys (the CLI's signing JWKS, matched by kid)
// and returns its container claim and times. It checks no time: the
// assertion was spent at Hydra's token endpoint, which checked exp and the
// jti; the caller relates the times to the token it was exchanged for.
func VerifyAgentAssertion(jws string, keys *certs.JWKS) (AgentAssertionClaims, error) {
	var out AgentAssertionClaims
	if len(jws) > maxAgentAssertion {
		return out, fmt.Errorf("assertion: %d bytes, more than %d", len(jws), maxAgentAssertion)
	}
	tok, err := jwt.ParseSigned(jws, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return out, fmt.Errorf("assertion: %w", err)
	}
	if len(tok.Headers) != 1 {
		return out, errors.New("assertion: want one signature")
	}
	if keys == nil {
		return out, errors.New("assertion: no signing key to verify it with")
	}
	kid := tok.Headers[0].KeyID
	for _, k := range keys.Keys {
		if k.Kid != kid {
			continue
		}
		pub, err := k.PublicKey()
		if err != nil {
			return out, fmt.Errorf("assertion: signing key %s: %w", kid, err)
		}
		var std jwt.Claims
		var priv struct {
			Container string `json:"clawker_container"`
		}
		if err := tok.Claims(pub, &std, &priv); err != nil {
			return out, fmt.Errorf("assertion: %w", err)
		}
		if std.Issuer != ClientAgent || std.Subject != ClientAgent {
			return out, fmt.Errorf("assertion: iss %q sub %q, want %s", std.Issuer, std.Subject, ClientAgent)
		}
		if priv.Container == "" {
			return out, ErrNoContainerClaim
		}
		out.ContainerID = priv.Container
		if std.IssuedAt != nil {
			out.IssuedAt = std.IssuedAt.Time()
		}
		if std.Expiry != nil {
			out.Expiry = std.Expiry.Time()
		}
		return out, nil
	}
	return out, fmt.Errorf("assertion: signed with key %q, not the CLI's signing key (run `clawker auth rotate`?)", kid)
}
