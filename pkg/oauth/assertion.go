package oauth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/clawker/clawker-cp/pkg/certs"
)

// DefaultAssertionTTL is how long a client assertion is valid. Hydra
// refuses a jti it has seen before exp, so a short life also bounds the
// replay store; an assertion is used once, right after it is minted.
const DefaultAssertionTTL = 60 * time.Second

// Assertion is what a client assertion says (RFC 7523 section 3).
type Assertion struct {
	ClientID string        // iss and sub
	Audience string        // aud: the token endpoint URL, exactly as Hydra computes it
	ID       string        // jti; empty: 128 random bits
	IssuedAt time.Time     // iat; zero: time.Now()
	TTL      time.Duration // exp = iat + TTL; zero: DefaultAssertionTTL
	// ContainerID, when set, is the clawker_container claim: the agent
	// container the assertion was minted for (ContainerClaim).
	ContainerID string
}

// Sign returns a compact JWS of a, signed ES256 with key. The header
// carries kid = the key's RFC 7638 thumbprint, which is also the kid of the
// JWKS pkg/certs publishes, so Hydra finds the key without guessing.
func (a Assertion) Sign(key *ecdsa.PrivateKey) (string, error) {
	if key == nil || key.Curve != elliptic.P256() {
		return "", errors.New("oauth: client assertion: want an ECDSA P-256 signing key")
	}
	if a.ClientID == "" || a.Audience == "" {
		return "", errors.New("oauth: client assertion: client id and audience are required")
	}
	jwk, err := certs.NewJWK(&key.PublicKey)
	if err != nil {
		return "", fmt.Errorf("oauth: client assertion: %w", err)
	}
	if a.ID == "" {
		if a.ID, err = randomID(); err != nil {
			return "", fmt.Errorf("oauth: client assertion: jti: %w", err)
		}
	}
	if a.IssuedAt.IsZero() {
		a.IssuedAt = time.Now()
	}
	if a.TTL <= 0 {
		a.TTL = DefaultAssertionTTL
	}
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: jwk.Kid, Algorithm: string(jose.ES256), Use: "sig"}},
		(&jose.SignerOptions{}).WithType("JWT"),
	)
	if err != nil {
		return "", fmt.Errorf("oauth: client assertion: %w", err)
	}
	claims := jwt.Claims{
		Issuer:   a.ClientID,
		Subject:  a.ClientID,
		Audience: jwt.Audience{a.Audience},
		ID:       a.ID,
		IssuedAt: jwt.NewNumericDate(a.IssuedAt),
		Expiry:   jwt.NewNumericDate(a.IssuedAt.Add(a.TTL)),
	}
	b := jwt.Signed(signer).Claims(claims)
	if a.ContainerID != "" {
		b = b.Claims(map[string]any{ContainerClaim: a.ContainerID})
	}
	out, err := b.Serialize()
	if err != nil {
		return "", fmt.Errorf("oauth: client assertion: %w", err)
	}
	return out, nil
}

func randomID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}
