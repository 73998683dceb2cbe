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
// Agent certificates are not stored here: the host mints one per container
// with MintAgentCert and hands the container only its own cert, its key and
// ca.crt.
package certs
