package oauth

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// PerRPCCredentials puts "authorization: Bearer <token>" on every gRPC
// call except the public methods, and refuses to do so over a connection
// without privacy and integrity.
type PerRPCCredentials struct {
	Source *TokenSource
	// Public reports the full method names ("/pkg.Service/Method") that
	// need no token: no exchange happens for them, so they keep working
	// while Hydra is down (the clock-sync gate needs that).
	Public func(fullMethod string) bool
}

// GetRequestMetadata implements credentials.PerRPCCredentials. A failed
// exchange becomes Unauthenticated when Hydra refused the client and
// Unavailable when it could not be asked, with the exchange's error as
// the message.
func (c *PerRPCCredentials) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	ri, _ := credentials.RequestInfoFromContext(ctx)
	if c.Public != nil && ri.Method != "" && c.Public(ri.Method) {
		return nil, nil
	}
	if err := credentials.CheckSecurityLevel(ri.AuthInfo, credentials.PrivacyAndIntegrity); err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "oauth: refusing to send a bearer token over an insecure connection: %v", err)
	}
	tok, err := c.Source.Token(ctx)
	if err != nil {
		return nil, status.Error(codeOf(err), fmt.Sprintf("getting an access token for %q: %v", c.Source.ClientID(), err))
	}
	md := map[string]string{"authorization": "Bearer " + tok.AccessToken}
	if tok.Assertion != "" {
		md[AgentAssertionHeader] = tok.Assertion
	}
	return md, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (*PerRPCCredentials) RequireTransportSecurity() bool { return true }

func codeOf(err error) codes.Code {
	var e *Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.As(err, &e) && (e.Kind == KindRefused || e.Kind == KindAssertion):
		return codes.Unauthenticated
	}
	return codes.Unavailable
}
