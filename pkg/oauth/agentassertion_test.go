package oauth_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/oauth"
)

// VerifyAgentAssertion reads the container claim of a clawker-agent
// assertion signed with a key of the JWKS, and refuses every other one,
// saying why.
func TestVerifyAgentAssertion(t *testing.T) {
	key, other := newKey(t), newKey(t)
	jwk, err := certs.NewJWK(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	keys := &certs.JWKS{Keys: []certs.JWK{jwk}}
	iat := time.Now().Truncate(time.Second)
	cid := strings.Repeat("ab", 32)
	good, err := oauth.Assertion{ClientID: oauth.ClientAgent, Audience: "aud", IssuedAt: iat, TTL: 10 * time.Minute, ContainerID: cid}.Sign(key)
	if err != nil {
		t.Fatal(err)
	}
	got, err := oauth.VerifyAgentAssertion(good, keys)
	if err != nil || got.ContainerID != cid || !got.IssuedAt.Equal(iat) || !got.Expiry.Equal(iat.Add(10*time.Minute)) {
		t.Fatalf("good assertion: %+v, %v", got, err)
	}
	for _, tc := range []struct {
		name string
		a    oauth.Assertion
		key  bool // signed with the JWKS's key
		want string
	}{
		{"no container claim", oauth.Assertion{ClientID: oauth.ClientAgent}, true, "names no container"},
		{"another client", oauth.Assertion{ClientID: oauth.ClientCLI, ContainerID: cid}, true, "want clawker-agent"},
		{"another key", oauth.Assertion{ClientID: oauth.ClientAgent, ContainerID: cid}, false, "not the CLI's signing key"},
	} {
		tc.a.Audience, tc.a.IssuedAt, tc.a.TTL = "aud", iat, time.Minute
		k := other
		if tc.key {
			k = key
		}
		jws, err := tc.a.Sign(k)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := oauth.VerifyAgentAssertion(jws, keys); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
		if tc.name == "no container claim" {
			if _, err := oauth.VerifyAgentAssertion(jws, keys); !errors.Is(err, oauth.ErrNoContainerClaim) {
				t.Errorf("no container claim: %v, want ErrNoContainerClaim", err)
			}
		}
	}
	if _, err := oauth.VerifyAgentAssertion("not.a.jws", keys); err == nil {
		t.Error("garbage verified")
	}
}
