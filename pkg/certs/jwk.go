package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
)

// JWK is an EC P-256 public key as RFC 7517/7518 spell it, restricted to
// what clawker publishes: an ES256 signature key.
type JWK struct {
	Kty string `json:"kty"` // "EC"
	Crv string `json:"crv"` // "P-256"
	X   string `json:"x"`   // base64url (unpadded) 32-byte big-endian coordinate
	Y   string `json:"y"`
	Kid string `json:"kid"` // RFC 7638 thumbprint, so the CP can match a JWT header without configuration
	Alg string `json:"alg"` // "ES256"
	Use string `json:"use"` // "sig"
}

// JWKS is the document stored in signing.jwk.json.
type JWKS struct {
	Keys []JWK `json:"keys"`
}

var b64 = base64.RawURLEncoding

// NewJWK encodes pub (which must be P-256) with kid set to its thumbprint.
func NewJWK(pub *ecdsa.PublicKey) (JWK, error) {
	if pub == nil || pub.Curve != elliptic.P256() {
		return JWK{}, errors.New("jwk: want an ECDSA P-256 public key")
	}
	pt, err := pub.Bytes() // 0x04 || X || Y, each fixed-width: exactly what RFC 7518 §6.2.1 asks
	if err != nil {
		return JWK{}, fmt.Errorf("jwk: %w", err)
	}
	j := JWK{Kty: "EC", Crv: "P-256", X: b64.EncodeToString(pt[1:33]), Y: b64.EncodeToString(pt[33:]), Alg: "ES256", Use: "sig"}
	j.Kid = j.Thumbprint()
	return j, nil
}

// Thumbprint is the RFC 7638 SHA-256 thumbprint, base64url unpadded. The
// canonical form is the required members in lexicographic order with no
// whitespace; x and y are base64url so they never need JSON escaping.
func (j JWK) Thumbprint() string {
	canon := `{"crv":"` + j.Crv + `","kty":"` + j.Kty + `","x":"` + j.X + `","y":"` + j.Y + `"}`
	sum := sha256.Sum256([]byte(canon))
	return b64.EncodeToString(sum[:])
}

// PublicKey decodes j, checking every field so a tampered or foreign JWKS
// is rejected rather than half-understood.
func (j JWK) PublicKey() (*ecdsa.PublicKey, error) {
	if j.Kty != "EC" || j.Crv != "P-256" {
		return nil, fmt.Errorf("jwk: kty %q crv %q, want EC P-256", j.Kty, j.Crv)
	}
	if j.Alg != "" && j.Alg != "ES256" {
		return nil, fmt.Errorf("jwk: alg %q, want ES256", j.Alg)
	}
	if j.Use != "" && j.Use != "sig" {
		return nil, fmt.Errorf("jwk: use %q, want sig", j.Use)
	}
	x, errX := b64.DecodeString(j.X)
	y, errY := b64.DecodeString(j.Y)
	if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
		return nil, errors.New("jwk: x and y must be 32-byte base64url values")
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
	if err != nil {
		return nil, fmt.Errorf("jwk: %w", err)
	}
	if j.Kid != "" && j.Kid != j.Thumbprint() {
		return nil, errors.New("jwk: kid is not the key's RFC 7638 thumbprint")
	}
	return pub, nil
}

// ParseJWKS decodes a JWKS and checks that every key in it is usable.
func ParseJWKS(data []byte) (*JWKS, error) {
	var s JWKS
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	if len(s.Keys) == 0 {
		return nil, errors.New("jwks: no keys")
	}
	for _, k := range s.Keys {
		if _, err := k.PublicKey(); err != nil {
			return nil, err
		}
	}
	return &s, nil
}

func encodeJWKS(pub *ecdsa.PublicKey) ([]byte, error) {
	j, err := NewJWK(pub)
	if err != nil {
		return nil, err
	}
	out, err := json.MarshalIndent(JWKS{Keys: []JWK{j}}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}
