package certs

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"
)

// A chain is its leaves for one key, each verifying against the CA in its
// own window, none past the CA; bad parameters name the field.
func TestMintAgentChain(t *testing.T) {
	_, m := newAuth(t)
	id := AgentIdentity{Project: "p", Agent: "a", ContainerID: strings.Repeat("ab", 32)}
	start := time.Now() // not before the fresh CA: leaves are verified below
	c := AgentChain{Leaves: 5, Validity: 48 * time.Hour, Step: 24 * time.Hour, Start: start}
	chainPEM, keyPEM, err := m.MintAgentChain(id, c)
	if err != nil {
		t.Fatal(err)
	}
	var leaves []*x509.Certificate
	for rest := chainPEM; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		l, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		leaves = append(leaves, l)
	}
	if len(leaves) != 5 {
		t.Fatalf("%d leaves, want 5", len(leaves))
	}
	blk, _ := pem.Decode(keyPEM)
	if blk == nil {
		t.Fatal("key is not PEM")
	}
	for i, l := range leaves {
		if KeyThumbprint(l) != KeyThumbprint(leaves[0]) || (i > 0 && Thumbprint(l) == Thumbprint(leaves[0])) {
			t.Errorf("leaf %d: key %s, leaf %s; want the same key, another leaf", i, KeyThumbprint(l)[:12], Thumbprint(l)[:12])
		}
		from := start.Add(time.Duration(i) * c.Step)
		if !l.NotBefore.Equal(from.Add(-clockSkew).Truncate(time.Second)) || !l.NotAfter.Equal(from.Add(c.Validity).Truncate(time.Second)) {
			t.Errorf("leaf %d valid %s..%s, want %s..%s", i, l.NotBefore, l.NotAfter, from.Add(-clockSkew), from.Add(c.Validity))
		}
		if got, err := ParseAgentIdentity(l); err != nil || got != id {
			t.Errorf("leaf %d: %+v %v", i, got, err)
		}
		mid := from.Add(c.Validity / 2)
		if err := verifyLeaf(l, m.CA, x509.ExtKeyUsageClientAuth, mid); err != nil {
			t.Errorf("leaf %d at its middle: %v", i, err)
		}
		if err := verifyLeaf(l, m.CA, x509.ExtKeyUsageClientAuth, from.Add(c.Validity+time.Minute)); err == nil {
			t.Errorf("leaf %d verified after its end", i)
		}
	}
	// Leaves that would start after the CA expires are not minted; the
	// last is clamped to it.
	late := AgentChain{Leaves: 3, Validity: 48 * time.Hour, Step: 24 * time.Hour, Start: m.CA.NotAfter.Add(-30 * time.Hour)}
	latePEM, _, err := m.MintAgentChain(id, late)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rest := latePEM; ; n++ {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if l, _ := x509.ParseCertificate(b.Bytes); l.NotAfter.After(m.CA.NotAfter) {
			t.Errorf("a leaf outlives the CA: %s > %s", l.NotAfter, m.CA.NotAfter)
		}
	}
	if n != 2 {
		t.Errorf("%d leaves near the CA's end, want 2", n)
	}
	for _, tc := range []struct {
		c     AgentChain
		field string
	}{
		{AgentChain{Leaves: 0, Validity: time.Hour}, FieldLeaves},
		{AgentChain{Leaves: 1001, Validity: time.Hour, Step: time.Hour}, FieldLeaves},
		{AgentChain{Leaves: 2, Validity: 0, Step: time.Hour}, FieldValidity},
		{AgentChain{Leaves: 2, Validity: time.Hour, Step: 2 * time.Hour}, FieldStep},
		{AgentChain{Leaves: 2, Validity: time.Hour}, FieldStep},
	} {
		_, _, err := m.MintAgentChain(id, tc.c)
		var fe *InvalidFieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%+v: %v, want the %s field named", tc.c, err, tc.field)
		}
	}
}
