// Package certs creates, validates and loads clawker's host-side auth
// material and turns it into TLS configurations for the control plane (CP),
// the CLI and the in-container agent (clawkerd).
//
// Everything lives in one auth directory (normally
// $XDG_DATA_HOME/clawker/auth, passed in by the caller):
//
//	ca.crt            0644  ECDSA P-256 root CA, 10 years
//	ca.key            0600  its private key (never leaves the host)
//	server.crt        0644  CP server cert, 1 year, ServerAuth
//	server.key        0600
//	cli.crt           0644  CLI client cert (CN clawker-cli), 1 year, ClientAuth
//	cli.key           0600  (never leaves the host)
//	signing.key       0600  ES256 key for OAuth2 client assertions, PKCS#8
//	signing.jwk.json  0644  its public key as a JWKS
//	.lock             0600  serialises concurrent Ensure/Rotate/Load
//
// Directories are 0700. Every file is replaced atomically (temp file in the
// same directory, fsync, rename, fsync directory), and within a group the key
// is written before the certificate. A crash therefore leaves either the old
// pair, the new pair, or a new key next to an old certificate; the last case
// fails the key/cert match check and Ensure regenerates the group.
//
// Agent certificates are not stored here: the host mints them per container
// and hands the container only its own certs, its key and ca.crt.
//
// Agent certificates outlive a day without the CP minting (the CA key stays
// on the host): `clawker run` mints with MintAgentChain a chain of short
// leaves for ONE key with consecutive, overlapping windows
// (DefaultAgentChain: 30 leaves of 48 h starting 24 h apart, 31 days), all
// copied in at once. clawkerd presents at every handshake the leaf valid
// now with the latest NotAfter. The registry binds the key
// (KeyThumbprint, SHA-256 of the SubjectPublicKeyInfo), not the leaf
// (Thumbprint), so the next leaf is the same binding: binding the key is
// cleaner than keeping the leaf thumbprint and also accepting any leaf of
// the same key, which would make the registry key change with every leaf
// (or stop being derived from what the handshake proves) and store two
// thumbprints for one fact. A leaf stolen out of a container is good for
// 48 h at most; the key is as long-lived as the container, as before.
// Past the chain's end clawkerd logs agent_certs_exhausted and the agent
// must be recreated. Topping up a running agent's chain is possible but
// not done: signing needs only the public key, which the CLI could read
// from the container's /clawker/agent.crt, and clawkerd would have to
// re-read that file at each dial.
package certs
