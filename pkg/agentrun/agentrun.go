// Package agentrun is the Docker side of clawker's agent containers: Create
// makes and starts one (`clawker run`), Remove removes one (`clawker rm`).
//
// An agent container is named clawker.<project>.<agent>, sits on
// clawker-net and runs fully unprivileged: every capability dropped,
// no-new-privileges, clawker's seccomp profile (SeccompProfile: allow by
// default, refusing socket families other than unix, inet, inet6 and
// netlink, new namespaces and the syscalls that matter for an escape) and
// the daemon's default AppArmor profile, a pids and a memory limit, the
// image's HEALTHCHECK off (it would run commands the agent's image chose,
// outside clawkerd), no bind mounts (so no /sys/fs/bpf, no host cgroup
// tree, no Docker socket), not privileged, no restart policy. Its PID 1 is clawkerd, which
// registers with the control plane over mTLS, opens its Session and only
// then starts the user's command (with Spec.RequireEnforced, only once the
// control plane also says its firewall enforces the container).
//
// clawkerd and the agent's credentials are not in the image: Create copies
// them into /clawker/ between ContainerCreate and ContainerStart, because the
// certificate names the container's id, which exists only once the
// container does:
//
//	/clawker/           0500  the image user's uid:gid
//	/clawker/clawkerd   0500  the binary this clawker carries
//	/clawker/ca.crt     0400  the CA that signed the control plane's certificate
//	/clawker/agent.crt  0400  CN clawkerd, urn:clawker:agent:<project>.<agent>,
//	                          urn:clawker:container:<id>: a chain of short leaves
//	                          for one key (Spec.Chain), covering CertValidity
//	/clawker/agent.key  0400  its private key, minted on the host, never stored there
//	/clawker/agent.assertion
//	                    0400  only when the control plane runs Ory (Spec.Token): a
//	                          client assertion for clawker-agent, see below
//
// The agent's token. When the control plane runs the Ory servers, creating
// a new binding in its registry takes more than a certificate: Register must
// carry an access token of client clawker-agent with scope
// agent:self:register. Create mints the means to get one: a client assertion
// (RFC 7523, private_key_jwt) for clawker-agent, signed ES256 with the CLI's
// signing key (whose public half Hydra holds as that client's JWKS), aud
// Hydra's token endpoint as Hydra names itself
// (https://127.0.0.1:<hydra_public_port>/oauth2/token), a random jti, and
// exp AssertionValidity after it is minted: long enough for the image to
// start, short enough to be worthless soon after; it is minted after the
// container is created and names it (oauth.ContainerClaim), so it makes
// that container's binding only. clawkerd exchanges it once,
// before its first Register, at Token.URL (the same endpoint as reached from
// clawker-net), and sends the access token on Register. Hydra refuses a jti
// it has seen before exp, so the file is good for one exchange; a clawkerd
// that starts again (docker restart) re-registers its existing binding
// without a token, which its certificate alone proves.
//
// Whatever fails after the container was created removes it again: no
// half-made agent is left behind.
//
// The package imports no actors.
package agentrun

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/oauth"
)

// Where clawkerd and the agent's credentials are put inside the container.
const (
	Dir          = "/clawker"
	ClawkerdPath = Dir + "/clawkerd"
	CAPath       = Dir + "/ca.crt"
	CertPath     = Dir + "/agent.crt"
	KeyPath      = Dir + "/agent.key"
	// AssertionPath is the clawker-agent client assertion (Spec.Token).
	AssertionPath = Dir + "/agent.assertion"
)

// Modes of what Create copies in.
const (
	dirMode  = 0o500
	binMode  = 0o500
	fileMode = 0o400
)

// CertValidity is how long an agent's certificates cover it: the chain of
// certs.DefaultAgentChain, 30 leaves of 48 h starting 24 h apart, all for
// one key and copied in at once (the control plane cannot mint: the CA key
// stays on the host). Each leaf is short on purpose, since the key is a
// file inside a container that runs untrusted code: one leaf copied out is
// good for two days at most. clawkerd presents the leaf valid now; the
// registry binds the key, so the next leaf keeps the binding. An agent
// older than this cannot register again, e.g. after a control plane
// restart (clawkerd logs agent_certs_exhausted): remove it and run it
// again. Topping up a running agent's chain is not done.
var CertValidity = certs.DefaultAgentChain.End(time.Time{}).Sub(time.Time{})

// AssertionValidity is the lifetime of the client assertion Create copies
// in (Spec.Token): clawkerd exchanges it within seconds of the container's
// start, so ten minutes cover a slow image start and little else. Past
// it, a clawkerd that never got its token registers without one, and the
// control plane refuses to create its binding.
const AssertionValidity = 10 * time.Minute

// The limits when Spec leaves them 0 (settings' defaults).
const (
	DefaultPidsLimit = 4096
	DefaultMemory    = 8 << 30
)

// ContainerPrefix starts every agent container's name.
const ContainerPrefix = "clawker."

// callTimeout bounds every Docker call but the copy.
const callTimeout = 30 * time.Second

// copyTimeout bounds the copy of clawkerd (tens of MB) into the container.
const copyTimeout = 2 * time.Minute

// Docker is the part of the Docker API client agentrun uses.
// *client.Client (github.com/moby/moby/client) implements it.
type Docker interface {
	ContainerCreate(ctx context.Context, o client.ContainerCreateOptions) (client.ContainerCreateResult, error)
	ContainerStart(ctx context.Context, id string, o client.ContainerStartOptions) (client.ContainerStartResult, error)
	ContainerRemove(ctx context.Context, id string, o client.ContainerRemoveOptions) (client.ContainerRemoveResult, error)
	ContainerInspect(ctx context.Context, id string, o client.ContainerInspectOptions) (client.ContainerInspectResult, error)
	ImageInspect(ctx context.Context, ref string, o ...client.ImageInspectOption) (client.ImageInspectResult, error)
	CopyToContainer(ctx context.Context, id string, o client.CopyToContainerOptions) (client.CopyToContainerResult, error)
	CopyFromContainer(ctx context.Context, id string, o client.CopyFromContainerOptions) (client.CopyFromContainerResult, error)
}

var _ Docker = (*client.Client)(nil)

// ContainerName is the agent's container: clawker.<project>.<agent>.
func ContainerName(project, agent string) string { return ContainerPrefix + project + "." + agent }

// Spec is what Create makes.
type Spec struct {
	Project string
	Agent   string
	// Image is the agent's image; it must be present (nothing is pulled).
	Image string
	// Cmd, when not empty, replaces the image's Cmd, as the arguments after
	// the image do in `docker run`: clawkerd runs the image's Entrypoint
	// followed by Cmd.
	Cmd []string
	// CPAddr is host:port of the control plane's agent listener, as
	// clawkerd dials it from clawker-net (the CP's static address and
	// control_plane.agent_port).
	CPAddr string
	// Heartbeat is clawkerd's heartbeat (CLAWKERD_HEARTBEAT); 0 leaves
	// clawkerd's default. The control plane breaks a Session that stays
	// silent for three of its own heartbeat intervals, so clawkerd must
	// beat at least as often as the control plane does.
	Heartbeat time.Duration
	// RequireEnforced makes clawkerd hold the user's command back until
	// the control plane says its egress firewall enforces this container
	// (CLAWKERD_REQUIRE_ENFORCED=1). `clawker run` sets it when the
	// settings' firewall.enable is true.
	RequireEnforced bool
	// Network is the network to join; "" means cpboot.NetworkName.
	Network string
	// Labels are added to the container, beside clawker's own labels,
	// which win (tests tag what they create).
	Labels map[string]string
	// Auth is the host's auth material: the CA that signs the agent's
	// certificate (its key is needed) and whose certificate is ca.crt.
	Auth *certs.Material
	// Binaries carries clawkerd; nil means cpboot.Embedded().
	Binaries *cpboot.Bundle
	// Chain is how many leaves the agent gets and how long each is
	// valid; zero means certs.DefaultAgentChain.
	Chain certs.AgentChain
	// PidsLimit caps the container's tasks; 0 means DefaultPidsLimit
	// (settings' agents.pids_limit).
	PidsLimit int64
	// Memory caps its memory in bytes; 0 means DefaultMemory
	// (settings' agents.memory).
	Memory int64
	// FirewallCA, when set, is the firewall CA's certificate (only: the
	// type carries no key): the agent trusts it (see firewallca.go).
	// `clawker run` sets it when the firewall is on.
	FirewallCA *x509.Certificate
	// Token, when set, has clawkerd get an access token of clawker-agent
	// before its first Register (see the package comment). Set it when
	// the control plane runs Ory, which then refuses a new binding
	// without one; nil changes nothing.
	Token *Token
}

// Token says where clawkerd exchanges the client assertion Create mints.
type Token struct {
	// URL is where clawkerd posts the exchange: Hydra's token endpoint at
	// the control plane's address on clawker-net,
	// https://<cp address>:<hydra_public_port>/oauth2/token. clawkerd
	// verifies the endpoint's certificate with ca.crt, as the server name
	// it verifies the agent port with (certs.ServerCommonName), so the
	// address need not be one of the certificate's IP SANs.
	URL string
	// Audience is the assertion's aud: Hydra's token endpoint as Hydra
	// computes it (its urls.self.public + "oauth2/token", that is
	// https://127.0.0.1:<hydra_public_port>/oauth2/token). It differs from
	// URL, and it is the one Hydra checks.
	Audience string
	// Validity is the assertion's lifetime; 0 means AssertionValidity.
	Validity time.Duration
}

// AgentAssertion mints the client assertion clawkerd exchanges for its
// token: iss = sub = clawker-agent, aud = audience, a random jti, iat =
// now and exp = now + validity (AssertionValidity when 0), the container
// it is for as oauth.ContainerClaim, signed ES256 with key, the CLI's
// signing key. It returns the compact JWS and exp.
func AgentAssertion(key *ecdsa.PrivateKey, audience, containerID string, now time.Time, validity time.Duration) (string, time.Time, error) {
	if validity <= 0 {
		validity = AssertionValidity
	}
	// Whole seconds: exp is a NumericDate, and NotAfter should say what
	// the token endpoint will check.
	now = now.Truncate(time.Second)
	if containerID == "" {
		return "", time.Time{}, errors.New("the agent's client assertion needs the container id it is for")
	}
	jws, err := oauth.Assertion{ClientID: oauth.ClientAgent, Audience: audience, IssuedAt: now, TTL: validity, ContainerID: containerID}.Sign(key)
	if err != nil {
		return "", time.Time{}, err
	}
	return jws, now.Add(validity), nil
}

// Result says what Create made.
type Result struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Image string `json:"image"`
	// Argv is the user's command clawkerd starts once its Session is
	// established; empty: clawkerd runs no command and holds the Session.
	Argv []string `json:"argv"`
	// Owner is the uid:gid owning /clawker and its files: the image's user.
	Owner string `json:"owner"`
	// CertNotAfter is when the last leaf of the agent's chain expires;
	// CertLeaves how many leaves it has.
	CertNotAfter time.Time `json:"cert_not_after"`
	CertLeaves   int       `json:"cert_leaves"`
	// AssertionNotAfter is the exp of the client assertion copied in;
	// zero without Spec.Token.
	AssertionNotAfter time.Time `json:"assertion_not_after,omitzero"`
	// Durations of the steps.
	CreateMS float64 `json:"create_ms"`
	InjectMS float64 `json:"inject_ms"` // owner lookup, mint, copy
	StartMS  float64 `json:"start_ms"`
}

// Errors of Create and Remove; match them with errors.Is.
var (
	// ErrImageNotFound: the image is not on the daemon (clawker never pulls).
	ErrImageNotFound = errors.New("image not found")
	// ErrExists: a container with the agent's name exists already.
	ErrExists = errors.New("agent container exists")
	// ErrNotFound: no container has the agent's name.
	ErrNotFound = errors.New("no such agent container")
	// ErrNotAgent: the container with the agent's name is not one clawker
	// made for that agent.
	ErrNotAgent = errors.New("not a clawker agent container")
	// ErrRunning: Remove without force met a running agent.
	ErrRunning = errors.New("agent container is running")
)

// ValidateNames checks project and agent against the certificate naming
// rules (certs.AgentIdentity); the error is a *certs.InvalidFieldError
// naming the field.
func ValidateNames(project, agent string) error {
	// Any valid id: only the names are checked here.
	id := certs.AgentIdentity{Project: project, Agent: agent, ContainerID: strings.Repeat("0", 64)}
	return id.Validate()
}

// ProjectFromDir turns a directory's base name into a project name:
// lowercased, every character the naming rules do not allow replaced by
// '-', leading characters that cannot start a name dropped, cut to 63
// characters. ok is false when nothing usable is left ("/", "___").
func ProjectFromDir(dir string) (project string, ok bool) {
	dir = strings.TrimRight(dir, `/\`)
	if i := strings.LastIndexAny(dir, `/\`); i >= 0 {
		dir = dir[i+1:]
	}
	var b strings.Builder
	for _, r := range strings.ToLower(dir) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_', r == '.', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	s := strings.TrimLeft(b.String(), "_.-")
	if len(s) > 63 {
		s = s[:63]
	}
	if s == "" || ValidateNames(s, "a") != nil {
		return "", false
	}
	return s, true
}

// Create creates the agent container, injects clawkerd and the agent's
// freshly minted credentials, and starts it. See the package comment.
func Create(ctx context.Context, d Docker, s Spec) (res Result, err error) {
	if err := ValidateNames(s.Project, s.Agent); err != nil {
		return Result{}, err
	}
	if s.Image == "" {
		return Result{}, errors.New("no image given")
	}
	if s.CPAddr == "" {
		return Result{}, errors.New("no control plane address")
	}
	if s.Auth == nil || s.Auth.CA == nil || s.Auth.CAKey == nil {
		return Result{}, errors.New("the auth material has no CA key: agent certificates are minted on the host")
	}
	if t := s.Token; t != nil {
		switch {
		case t.URL == "" || t.Audience == "":
			return Result{}, errors.New("the agent token needs the token endpoint's URL and audience")
		case s.Auth.SigningKey == nil:
			return Result{}, errors.New("the auth material has no signing key: the agent's client assertion is minted on the host; run `clawker auth rotate`")
		}
	}
	chain := s.Chain
	if chain.Leaves == 0 {
		chain = certs.DefaultAgentChain
	}
	bin, err := clawkerd(s.Binaries)
	if err != nil {
		return Result{}, err
	}
	network := s.Network
	if network == "" {
		network = cpboot.NetworkName
	}
	name := ContainerName(s.Project, s.Agent)
	res = Result{Name: name, Image: s.Image}

	img, err := dockerx.Call(ctx, callTimeout, func(ctx context.Context) (client.ImageInspectResult, error) {
		return d.ImageInspect(ctx, s.Image)
	})
	if cerrdefs.IsNotFound(err) {
		return res, fmt.Errorf("%w: %s is not on this Docker daemon; clawker does not pull images: pull or build it first", ErrImageNotFound, s.Image)
	}
	if err != nil {
		return res, fmt.Errorf("inspecting image %s: %w", s.Image, err)
	}
	var imgEntrypoint, imgCmd []string
	var imgUser string
	if img.Config != nil {
		imgEntrypoint, imgCmd, imgUser = img.Config.Entrypoint, img.Config.Cmd, img.Config.User
	}
	res.Argv = command(imgEntrypoint, imgCmd, s.Cmd)

	t := time.Now()
	created, err := dockerx.Call(ctx, callTimeout, func(ctx context.Context) (client.ContainerCreateResult, error) {
		return d.ContainerCreate(ctx, createOptions(s, name, network, res.Argv))
	})
	res.CreateMS = cpapi.Millis(time.Since(t))
	if cerrdefs.IsConflict(err) {
		return res, fmt.Errorf("%w: a container named %s exists already", ErrExists, name)
	}
	if err != nil {
		return res, fmt.Errorf("creating container %s: %w", name, err)
	}
	res.ID = created.ID
	defer func() {
		if err == nil {
			return
		}
		// Removed even when ctx is done (interrupted): no half-made agent.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), callTimeout)
		defer cancel()
		if _, rerr := d.ContainerRemove(rctx, created.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); rerr != nil && !cerrdefs.IsNotFound(rerr) {
			err = fmt.Errorf("%w (and removing the half-made container %s failed: %v; remove it with docker rm -f %s)", err, name, rerr, name)
			return
		}
		res.ID = ""
	}()
	if err = injectFirewallCA(ctx, d, created.ID, s.FirewallCA); err != nil {
		return res, err
	}

	t = time.Now()
	own, err := resolveOwner(ctx, d, created.ID, imgUser)
	if err != nil {
		return res, err
	}
	res.Owner = own.String()
	certPEM, keyPEM, err := s.Auth.MintAgentChain(certs.AgentIdentity{Project: s.Project, Agent: s.Agent, ContainerID: created.ID}, chain)
	if err != nil {
		return res, err
	}
	for rest := certPEM; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if leaf, perr := x509.ParseCertificate(blk.Bytes); perr == nil && leaf.NotAfter.After(res.CertNotAfter) {
			res.CertNotAfter = leaf.NotAfter.UTC()
		}
		res.CertLeaves++
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Auth.CA.Raw})
	files := []file{{CAPath, caPEM}, {CertPath, certPEM}, {KeyPath, keyPEM}}
	if s.Token != nil {
		// Minted last, right before the copy and the start: its validity
		// counts from as close to clawkerd's first breath as the host can.
		jws, exp, err := AgentAssertion(s.Auth.SigningKey, s.Token.Audience, created.ID, time.Now(), s.Token.Validity)
		if err != nil {
			return res, fmt.Errorf("minting the agent's client assertion: %w", err)
		}
		res.AssertionNotAfter = exp.UTC()
		files = append(files, file{AssertionPath, []byte(jws)})
	}
	err = dockerx.Do(ctx, copyTimeout, func(ctx context.Context) error {
		pr, pw := io.Pipe()
		go func() {
			pw.CloseWithError(writeTar(pw, own, time.Now(), bin, files))
		}()
		defer pr.Close()
		_, err := d.CopyToContainer(ctx, created.ID, client.CopyToContainerOptions{DestinationPath: "/", Content: pr})
		return err
	})
	res.InjectMS = cpapi.Millis(time.Since(t))
	if err != nil {
		return res, fmt.Errorf("copying clawkerd and the agent's certificate into %s: %w", name, err)
	}

	t = time.Now()
	_, err = dockerx.Call(ctx, callTimeout, func(ctx context.Context) (client.ContainerStartResult, error) {
		return d.ContainerStart(ctx, created.ID, client.ContainerStartOptions{})
	})
	res.StartMS = cpapi.Millis(time.Since(t))
	if err != nil {
		return res, fmt.Errorf("starting container %s: %w", name, err)
	}
	return res, nil
}

// command is what clawkerd runs, as `docker run IMAGE [CMD...]` would: the
// image's Entrypoint, then the given command or else the image's Cmd.
func command(entrypoint, imageCmd, cmd []string) []string {
	if len(cmd) == 0 {
		cmd = imageCmd
	}
	out := append(slices.Clone(entrypoint), cmd...)
	if out == nil {
		out = []string{}
	}
	return out
}

// labels are the container's labels: extra, then clawker's, which win.
func labels(s Spec) map[string]string {
	l := maps.Clone(s.Labels)
	if l == nil {
		l = map[string]string{}
	}
	l[dockerx.LabelManaged] = "true"
	l[dockerx.LabelPurpose] = dockerx.PurposeAgent
	l[dockerx.LabelProject] = s.Project
	l[dockerx.LabelAgent] = s.Agent
	firewallCALabel(s, l)
	return l
}

// Environment variables clawkerd reads (pkg/agentd).
const (
	EnvCPAddr    = "CLAWKERD_CP_ADDR"
	EnvCA        = "CLAWKERD_CA"
	EnvCert      = "CLAWKERD_CERT"
	EnvKey       = "CLAWKERD_KEY"
	EnvProject   = "CLAWKERD_PROJECT"
	EnvAgent     = "CLAWKERD_AGENT"
	EnvHeartbeat = "CLAWKERD_HEARTBEAT"

	EnvRequireEnforced = "CLAWKERD_REQUIRE_ENFORCED"

	// With Spec.Token: where to exchange the assertion, the audience it
	// must name, and the file holding it.
	EnvTokenURL      = "CLAWKERD_TOKEN_URL"
	EnvTokenAudience = "CLAWKERD_TOKEN_AUDIENCE"
	EnvAssertion     = "CLAWKERD_ASSERTION"
)

// createOptions is the agent container: see the package comment for what
// it has, and above all what it has not.
func createOptions(s Spec, name, network string, argv []string) client.ContainerCreateOptions {
	env := []string{
		EnvCPAddr + "=" + s.CPAddr,
		EnvCA + "=" + CAPath,
		EnvCert + "=" + CertPath,
		EnvKey + "=" + KeyPath,
		EnvProject + "=" + s.Project,
		EnvAgent + "=" + s.Agent,
	}
	if s.Heartbeat > 0 {
		env = append(env, EnvHeartbeat+"="+s.Heartbeat.String())
	}
	if s.RequireEnforced {
		env = append(env, EnvRequireEnforced+"=1")
	}
	if s.Token != nil {
		env = append(env, EnvTokenURL+"="+s.Token.URL, EnvTokenAudience+"="+s.Token.Audience, EnvAssertion+"="+AssertionPath)
	}
	env = append(env, firewallCAEnv(s)...)
	pids, mem := s.PidsLimit, s.Memory
	if pids <= 0 {
		pids = DefaultPidsLimit
	}
	if mem <= 0 {
		mem = DefaultMemory
	}
	return client.ContainerCreateOptions{
		Name: name,
		Config: &container.Config{
			// The image's HEALTHCHECK would run a command of its choosing
			// beside clawkerd, before the firewall says it enforces.
			Healthcheck: &container.HealthConfig{Test: []string{"NONE"}},
			Image:       s.Image,
			Entrypoint:  []string{ClawkerdPath},
			// Always "--" first: an empty Cmd would let Docker fall back
			// to the image's, and "--" keeps a command starting with a
			// dash from being read as one of clawkerd's flags.
			Cmd:    append([]string{"--"}, argv...),
			Env:    env,
			Labels: labels(s),
		},
		HostConfig: &container.HostConfig{
			NetworkMode:   container.NetworkMode(network),
			CapDrop:       []string{"ALL"},
			RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyDisabled},
			// The default AppArmor profile still applies (none named).
			SecurityOpt: []string{"no-new-privileges:true", "seccomp=" + SeccompProfile()},
			Resources:   container.Resources{PidsLimit: &pids, Memory: mem},
			// Deliberately nothing else: not privileged, no CapAdd, no
			// Mounts or Binds (no /sys/fs/bpf, no host cgroup tree, no
			// Docker socket), no published ports.
		},
	}
}

// Remove removes the agent container clawker.<project>.<agent>. A running
// one is refused (ErrRunning) unless force, which kills it first. Only a
// container labelled as that agent by clawker is removed (ErrNotAgent
// otherwise). Its anonymous volumes go with it.
func Remove(ctx context.Context, d Docker, project, agent string, force bool) (RemoveResult, error) {
	if err := ValidateNames(project, agent); err != nil {
		return RemoveResult{}, err
	}
	name := ContainerName(project, agent)
	res := RemoveResult{Name: name}
	in, err := dockerx.Call(ctx, callTimeout, func(ctx context.Context) (client.ContainerInspectResult, error) {
		return d.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
	})
	if cerrdefs.IsNotFound(err) {
		return res, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err != nil {
		return res, fmt.Errorf("inspecting container %s: %w", name, err)
	}
	c := in.Container
	res.ID = c.ID
	// Docker's inspect also matches an id prefix: insist on the name.
	if strings.TrimPrefix(c.Name, "/") != name {
		return res, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	var l map[string]string
	if c.Config != nil {
		l = c.Config.Labels
	}
	if l[dockerx.LabelManaged] != "true" || l[dockerx.LabelPurpose] != dockerx.PurposeAgent ||
		l[dockerx.LabelProject] != project || l[dockerx.LabelAgent] != agent {
		return res, fmt.Errorf("%w: %s lacks the labels %s=true, %s=%s, %s=%s, %s=%s; leaving it alone", ErrNotAgent, name,
			dockerx.LabelManaged, dockerx.LabelPurpose, dockerx.PurposeAgent, dockerx.LabelProject, project, dockerx.LabelAgent, agent)
	}
	if c.State != nil {
		res.Status = string(c.State.Status)
		res.WasRunning = c.State.Running || c.State.Restarting || c.State.Paused
	}
	if res.WasRunning && !force {
		return res, fmt.Errorf("%w: %s (%s)", ErrRunning, name, res.Status)
	}
	_, err = dockerx.Call(ctx, callTimeout, func(ctx context.Context) (client.ContainerRemoveResult, error) {
		return d.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: force, RemoveVolumes: true})
	})
	if cerrdefs.IsNotFound(err) {
		return res, nil // gone meanwhile
	}
	if err != nil {
		return res, fmt.Errorf("removing container %s: %w", name, err)
	}
	return res, nil
}

// RemoveResult says what Remove found.
type RemoveResult struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Status is the container's state before the removal.
	Status     string `json:"status"`
	WasRunning bool   `json:"was_running"`
}
