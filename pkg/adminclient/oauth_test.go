package adminclient_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/adminclient/adminclienttest"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

func dialOAuth(t *testing.T, h *adminclienttest.Home) *adminclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := adminclient.Dial(ctx, h.Paths(t), h.Settings(t), adminclient.WithOAuth())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestWithOAuthSendsBearerExceptOnPublicMethods(t *testing.T) {
	h := adminclienttest.NewHome(t)
	m := h.EnsureAuth(t)
	srv := adminclienttest.Serve(t, m)
	tokens := adminclienttest.ServeTokenEndpoint(t, m)
	h.SetPorts(t, srv.Port, tokens.Port)
	if got := adminclient.TokenURL(h.Settings(t)); got != tokens.URL {
		t.Fatalf("TokenURL = %q, want %q", got, tokens.URL)
	}

	c := dialOAuth(t, h)
	if tokens.Issued() != 0 {
		t.Error("Dial (a public probe) fetched a token")
	}
	if a := srv.Authorization("GetSystemTime"); a != "" {
		t.Errorf("GetSystemTime carried %q, want no token", a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), adminclient.CallTimeout)
	defer cancel()
	for range 3 {
		if _, err := c.ListAgents(ctx, &adminv1.ListAgentsRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	if a := srv.Authorization("ListAgents"); a != "Bearer fake-token-1" {
		t.Errorf("ListAgents carried %q, want Bearer fake-token-1", a)
	}
	if n := tokens.Issued(); n != 1 {
		t.Errorf("%d tokens for 3 calls, want 1 (cached)", n)
	}
}

func TestWithOAuthTokenEndpointDown(t *testing.T) {
	h := adminclienttest.NewHome(t)
	m := h.EnsureAuth(t)
	srv := adminclienttest.Serve(t, m)
	h.SetPorts(t, srv.Port, adminclienttest.FreePort(t))
	c := dialOAuth(t, h) // the probe needs no token
	ctx, cancel := context.WithTimeout(context.Background(), adminclient.CallTimeout)
	defer cancel()
	_, err := c.ListAgents(ctx, &adminv1.ListAgentsRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "token endpoint") || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("ListAgents without Hydra: %v, want Unavailable naming the unreachable token endpoint", err)
	}
	if n := srv.Calls("ListAgents"); n != 0 {
		t.Errorf("the call went out without a token (%d served)", n)
	}
}

func TestWithOAuthRefusedByHydra(t *testing.T) {
	h := adminclienttest.NewHome(t)
	m := h.EnsureAuth(t)
	srv := adminclienttest.Serve(t, m)
	// Hydra knows another signing key (a rotation the CP did not pick up).
	stale := *m
	stale.SigningJWK = adminclienttest.NewHome(t).EnsureAuth(t).SigningJWK
	tokens := adminclienttest.ServeTokenEndpoint(t, &stale)
	h.SetPorts(t, srv.Port, tokens.Port)
	c := dialOAuth(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), adminclient.CallTimeout)
	defer cancel()
	_, err := c.ListAgents(ctx, &adminv1.ListAgentsRequest{})
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "invalid_client") || !strings.Contains(err.Error(), "Unable to verify") {
		t.Fatalf("ListAgents: %v, want Unauthenticated with invalid_client and Hydra's description", err)
	}
	t.Log(err)
}

func TestWithOAuthTokenEndpointFromOtherCA(t *testing.T) {
	h := adminclienttest.NewHome(t)
	m := h.EnsureAuth(t)
	srv := adminclienttest.Serve(t, m)
	tokens := adminclienttest.ServeTokenEndpoint(t, adminclienttest.NewHome(t).EnsureAuth(t))
	h.SetPorts(t, srv.Port, tokens.Port)
	c := dialOAuth(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), adminclient.CallTimeout)
	defer cancel()
	_, err := c.ListAgents(ctx, &adminv1.ListAgentsRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("ListAgents: %v, want Unavailable naming TLS", err)
	}
	t.Log(err)
}

func TestIsPublic(t *testing.T) {
	if !adminclient.IsPublic(adminv1.AdminService_GetSystemTime_FullMethodName) {
		t.Error("GetSystemTime is not public")
	}
	if adminclient.IsPublic(adminv1.AdminService_ListAgents_FullMethodName) {
		t.Error("ListAgents is public")
	}
}
