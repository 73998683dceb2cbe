// Package dockerx holds the few helpers the control plane needs around the
// Docker Engine API client (github.com/moby/moby/client): building a client
// that negotiates its API version with whatever daemon answers, the label
// vocabulary clawker puts on its containers and the filters built from it,
// and a bound on every call.
//
// The daemons we meet are old (Docker 20.10 speaks API 1.41) while the
// client speaks 1.56; the client negotiates down on its first request, by
// pinging the daemon. If that ping fails (the daemon is down) the client
// pings again on the next request, so a client built while Docker is away
// still ends up on the right version.
//
// This package never imports actors/.
package dockerx

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/moby/moby/client"
)

// Labels clawker puts on what it creates.
const (
	// LabelManaged is "true" on everything clawker creates.
	LabelManaged = "dev.clawker.managed"
	// LabelPurpose says what a container is for: PurposeAgent,
	// PurposeControlPlane, ...
	LabelPurpose = "dev.clawker.purpose"
	// LabelProject and LabelAgent name an agent container's project and
	// agent.
	LabelProject = "dev.clawker.project"
	LabelAgent   = "dev.clawker.agent"
	// LabelFirewallCA is on an agent container: the fingerprint (hex
	// SHA-256) of the firewall CA it trusts.
	LabelFirewallCA = "dev.clawker.firewall-ca"
	// LabelBinHash and LabelSpecHash are on the control plane container:
	// the hash of its binaries and of its settings-derived configuration,
	// so a bootstrap can tell whether the running one is current.
	LabelBinHash  = "dev.clawker.binhash"
	LabelSpecHash = "dev.clawker.spechash"
	// LabelTest carries a test run's id on everything that test creates,
	// so it removes exactly what it made (set by tests only).
	LabelTest = "dev.clawker.test"
)

// Purposes (values of LabelPurpose).
const (
	PurposeAgent        = "agent"
	PurposeControlPlane = "controlplane"
)

// DefaultHost is where the daemon answers when DOCKER_HOST is not set.
const DefaultHost = client.DefaultDockerHost

// Host is DOCKER_HOST as getenv sees it, or DefaultHost.
func Host(getenv func(string) string) string {
	if h := getenv(client.EnvOverrideHost); h != "" {
		return h
	}
	return DefaultHost
}

// New builds a client for the daemon at host ("" means DOCKER_HOST, else
// DefaultHost, with DOCKER_TLS_VERIFY / DOCKER_CERT_PATH /
// DOCKER_API_VERSION honoured as the docker CLI does). Building a client
// never contacts the daemon; the API version is negotiated on the first
// request (see the package comment). Close it when done.
func New(host string) (*client.Client, error) {
	opts := []client.Opt{client.FromEnv}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	c, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client for %q: %w", host, err)
	}
	return c, nil
}

// Pinger is the part of *client.Client Negotiate needs.
type Pinger interface {
	Ping(ctx context.Context, options client.PingOptions) (client.PingResult, error)
}

// Negotiate pings the daemon within timeout, settling the client's API
// version, and returns the version the daemon speaks.
func Negotiate(ctx context.Context, c Pinger, timeout time.Duration) (string, error) {
	res, err := Call(ctx, timeout, func(ctx context.Context) (client.PingResult, error) {
		return c.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
	})
	if err != nil {
		return "", err
	}
	return res.APIVersion, nil
}

// LabelFilter is a filter matching objects that carry every one of the
// labels, given as "key=value" (or just "key" for any value).
func LabelFilter(labels ...string) client.Filters {
	return client.Filters{}.Add("label", labels...)
}

// Label renders key=value for LabelFilter.
func Label(key, value string) string { return key + "=" + value }

// ManagedFilter matches everything clawker manages.
func ManagedFilter() client.Filters {
	return LabelFilter(Label(LabelManaged, "true"))
}

// AgentFilter matches clawker's agent containers.
func AgentFilter() client.Filters {
	return LabelFilter(Label(LabelManaged, "true"), Label(LabelPurpose, PurposeAgent))
}

// ErrTimeout is wrapped by the error of a call that did not finish in time.
var ErrTimeout = errors.New("docker call timed out")

// Call runs fn with a context bounded by timeout (and by ctx). When the bound
// is what ended the call, the error wraps ErrTimeout as well as fn's own
// error, so callers can tell "Docker is slow" from "Docker said no".
func Call[T any](ctx context.Context, timeout time.Duration, fn func(context.Context) (T, error)) (T, error) {
	c, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	v, err := fn(c)
	if err != nil && errors.Is(c.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		err = fmt.Errorf("%w after %s: %w", ErrTimeout, timeout, err)
	}
	return v, err
}

// Do is Call for calls that return only an error.
func Do(ctx context.Context, timeout time.Duration, fn func(context.Context) error) error {
	_, err := Call(ctx, timeout, func(c context.Context) (struct{}, error) { return struct{}{}, fn(c) })
	return err
}
