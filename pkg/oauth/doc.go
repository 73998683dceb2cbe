// Package oauth is clawker's side of the OAuth2 exchange with Hydra.
//
// The CLI proves who it is to Hydra with a client assertion (RFC 7523,
// private_key_jwt): a JWT signed ES256 with the signing key from the auth
// directory (pkg/certs), whose public half Hydra holds as the client's JWKS.
// TokenSource mints one assertion per exchange (a fresh jti, one minute of
// validity), trades it at the token endpoint for an access token with the
// client_credentials grant, caches the token and refreshes it before it
// expires. PerRPCCredentials puts the token on gRPC calls as
// "authorization: Bearer <token>", and only over a secure transport.
//
// The control plane never sees the signing key: it asks Hydra's admin API
// whether a bearer token is active and what scope it carries
// (Introspector). Authorization decisions are made in actors/grpc.
//
// Clients and scopes as Hydra knows them:
//
//	clawker-cli     scope admin                 (the CLI, every AdminService method)
//	clawker-agent   scope agent:self:register   (clawkerd, a Register that creates a binding)
//
// clawker-agent's assertion is minted on the host too, by `clawker run`
// (pkg/agentrun, with Assertion), and copied into the agent container;
// clawkerd exchanges it with a small client of its own (pkg/agentd), so
// that it links no JOSE library.
package oauth

// Client IDs and scopes registered in Hydra.
const (
	ClientCLI   = "clawker-cli"
	ClientAgent = "clawker-agent"

	ScopeAdmin         = "admin"
	ScopeAgentRegister = "agent:self:register"
)

// AssertionType is the client_assertion_type of RFC 7523 section 2.2.
const AssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
