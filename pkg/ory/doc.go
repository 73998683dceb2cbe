// Package ory runs clawker's OAuth2 stack: Ory Hydra (the token issuer),
// Ory Kratos (the identity store) and Ory Oathkeeper (an authenticating
// HTTP proxy), as child processes of the control plane.
//
// It has three parts, none of which knows about actors:
//
//   - Config writes each server's YAML configuration (and Kratos's identity
//     schema, Oathkeeper's access rules) into a run directory, 0600, atomically,
//     at every start. Prepare returns what is needed to start one server.
//   - Process starts one server binary with a clean environment (telemetry
//     off), copies its output line by line with a "<name>: " prefix, polls its
//     health endpoint until it is ready, reports its exit on a channel, and
//     stops it with SIGTERM then SIGKILL.
//   - Admin talks to Hydra's admin API (net/http + encoding/json, no SDK) to
//     register the OAuth2 clients clawker uses.
//
// Every server runs with DSN=memory: nothing is written to disk, and Hydra's
// system secret is generated afresh at each start. Hence nothing issued
// survives a restart of Hydra, let alone of the control plane: OAuth2 clients
// are registered again after every start and every access token issued
// before becomes invalid (clients simply fetch a new one).
//
// Listeners: Hydra's public port (TLS, with the control plane's server
// certificate) and Oathkeeper's proxy port listen on Config.BindHost, the
// address the control plane publishes; every admin or API port (Hydra admin,
// Kratos public and admin, Oathkeeper API and metrics) listens on 127.0.0.1
// only, because nothing outside the control plane's own network namespace
// may reach them: Hydra's admin API registers clients and answers
// introspection without authentication.
package ory
