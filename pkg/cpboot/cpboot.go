// Package cpboot brings the control plane up on the host: the
// clawker-controlplane container running clawker-cp as PID 1, built from
// the binaries embedded in this clawker and attached to clawker-net at the
// gateway's .202.
//
// EnsureRunning is what `clawker controlplane up` and every command that
// needs the control plane call. It is idempotent: against a control plane
// that answers /healthz and runs this clawker's binaries it costs one HTTP
// request and one container inspect. Otherwise it works under a file lock,
// so concurrent clawker processes create one container:
//
//  1. /sys/fs/bpf is the host's bpffs (mounted when running as root)
//  2. an existing container is adopted (same binaries and settings), or
//     replaced when no agent runs, or the call refuses
//  3. image clawker-controlplane:bin-<hash> is built when missing
//     (FROM scratch, from an in-memory context; nothing is pulled): /clawker-cp,
//     /clawkerd and, when this clawker carries them, /ory/{hydra,kratos,oathkeeper},
//     which clawker-cp then supervises (--ory-dir /ory)
//  4. network clawker-net exists; the CP's address is its gateway's .202
//  5. auth material exists and the server certificate names that address
//  6. the container is created and started
//  7. /healthz answers 200, or the container's exit is reported with the
//     tail of its log
//
// Stop is `clawker controlplane down`. The package imports no actors.
package cpboot

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/settings"
)

// DefaultTimeout bounds the wait for /healthz after the container starts.
const DefaultTimeout = 60 * time.Second

// lockWait bounds the wait for another clawker holding the bring-up lock:
// its build, start and health wait.
const lockWait = 5 * time.Minute

// LockFileName is the bring-up lock, in Paths.StateDir.
const LockFileName = "controlplane.lock"

// Options are EnsureRunning's inputs.
type Options struct {
	Settings settings.Settings
	Paths    settings.Paths
	Docker   Docker
	// Reporter shows progress; nil shows nothing.
	Reporter Reporter
	// Timeout bounds the wait for /healthz once the container runs;
	// 0 means DefaultTimeout.
	Timeout time.Duration
	// Labels are added to everything EnsureRunning creates (image,
	// network, container), beside clawker's own labels, which win. Tests
	// tag what they create with a run id so they can remove it by label.
	Labels map[string]string
	// Binaries replaces the embedded binaries (tests); nil means Embedded().
	Binaries *Bundle
	// DockerSocket is the host path of the Docker socket mounted into the
	// CP; "" means /var/run/docker.sock.
	DockerSocket string
	// Env is extra environment of the CP container, "KEY=value" (debug
	// knobs such as CLAWKER_CP_DEBUG_CLOCK_SKEW, for tests). It is part of
	// the container's spec: a container made with other Env is not adopted.
	Env []string
}

// labels are the labels of an object cpboot creates for purpose.
func (o *Options) labels(purpose string) map[string]string {
	l := maps.Clone(o.Labels)
	if l == nil {
		l = map[string]string{}
	}
	l[dockerx.LabelManaged] = "true"
	l[dockerx.LabelPurpose] = purpose
	return l
}

func (o *Options) timeout() time.Duration {
	if o.Timeout > 0 {
		return o.Timeout
	}
	return DefaultTimeout
}

func (o *Options) socket() string {
	if o.DockerSocket != "" {
		return o.DockerSocket
	}
	return dockerSocket
}

// Outcomes of EnsureRunning.
const (
	OutcomeAlreadyRunning = "already-running" // green and current: nothing done
	OutcomeAdopted        = "adopted"         // the running container was current; waited for it
	OutcomeStarted        = "started"         // the stopped container was current and was started
	OutcomeCreated        = "created"         // no container: one was created
	OutcomeReplaced       = "replaced"        // a container of other binaries or settings was replaced
)

// Step names in Result.Steps.
const (
	StepProbe   = "probe" // the first /healthz, before anything else
	StepLock    = "lock"
	StepBPFFS   = "bpffs"
	StepInspect = "inspect"
	StepReplace = "replace"
	StepImage   = "image"
	StepNetwork = "network"
	StepAuth    = "auth"
	StepCreate  = "create"
	StepStart   = "start"
	StepHealthz = "healthz"
)

// StepTime is how long one step of EnsureRunning took.
type StepTime struct {
	Name       string  `json:"name"`
	DurationMS float64 `json:"duration_ms"`
}

// Result says what EnsureRunning found and did.
type Result struct {
	Outcome     string     `json:"outcome"`
	ContainerID string     `json:"container_id"`
	Image       string     `json:"image"`
	BinHash     string     `json:"binhash"`
	IP          netip.Addr `json:"ip,omitzero"`
	// Ory: the control plane runs the Ory servers (its container was made
	// with --ory-dir, because the binaries carry them). It then refuses a
	// new agent binding without a clawker-agent token: `clawker run`
	// gives clawkerd the means to get one.
	Ory bool `json:"ory,omitempty"`
	// ImageBuilt: the image was missing and was built.
	ImageBuilt bool `json:"image_built,omitempty"`
	// PrunedImages are older control plane tags removed after the build.
	PrunedImages []string `json:"pruned_images,omitempty"`
	// CapBPF: the container was created with CAP_BPF besides CAP_SYS_ADMIN.
	// Only meaningful when this call created the container.
	CapBPF bool `json:"cap_bpf,omitempty"`
	// Steps are the steps run, in order, with their durations.
	Steps   []StepTime `json:"steps,omitempty"`
	TotalMS float64    `json:"total_ms"`
}

// Step returns the duration of the named step, 0 if it did not run.
func (r Result) Step(name string) time.Duration {
	var d time.Duration
	for _, s := range r.Steps {
		if s.Name == name {
			d += time.Duration(s.DurationMS * float64(time.Millisecond))
		}
	}
	return d
}

// EnsureRunning brings the control plane up, or finds it up. See the
// package comment for the steps.
func EnsureRunning(ctx context.Context, o Options) (Result, error) {
	start := time.Now()
	if o.Docker == nil {
		return Result{}, errors.New("cpboot: no Docker client")
	}
	if o.Reporter == nil {
		o.Reporter = nopReporter{}
	}
	b, isEmbedded := o.Binaries, o.Binaries == nil
	var hash string
	if isEmbedded {
		var err error
		if b, err = Embedded(); err != nil {
			return Result{}, err
		}
		hash = cachedHash(o.Paths.StateDir)
	}
	if hash == "" {
		var err error
		if hash, err = b.Hash(); err != nil {
			return Result{}, err
		}
		if isEmbedded {
			storeHash(o.Paths.StateDir, hash)
		}
	}
	r := &run{o: &o, b: b, sp: newSpec(o.Settings, o.Paths, o.socket()).withBundle(b), start: start}
	r.sp.Env = o.Env
	// Whatever succeeds below ends with a container of this spec running
	// (the spec hash, --ory-dir included, is on its label).
	r.res.Ory = r.sp.OryDir != ""
	r.setHash(hash)

	if ok, err := r.fastPath(ctx); err != nil || ok {
		return r.finish(err)
	}
	// From here on the hash names an image built from the bytes: computed
	// from them (once per process), never taken from the cache.
	full, err := b.Hash()
	if err != nil {
		return r.finish(err)
	}
	if full != hash {
		r.setHash(full)
		if isEmbedded {
			storeHash(o.Paths.StateDir, full)
		}
	}

	lctx, cancel := context.WithTimeout(ctx, lockWait)
	t := time.Now()
	unlock, err := lockFile(lctx, filepath.Join(o.Paths.StateDir, LockFileName), func() {
		o.Reporter.Note("another clawker is bringing the control plane up; waiting for it")
	})
	cancel()
	r.record(StepLock, t)
	if err != nil {
		return r.finish(err)
	}
	defer unlock()
	return r.finish(r.ensure(ctx))
}

// run is one EnsureRunning call.
type run struct {
	o     *Options
	b     *Bundle
	hash  string
	image string
	sp    spec
	start time.Time
	res   Result
}

func (r *run) setHash(h string) {
	r.hash, r.image = h, ImageRef(h)
	r.res.BinHash, r.res.Image = r.hash, r.image
}

func (r *run) record(step string, since time.Time) {
	r.res.Steps = append(r.res.Steps, StepTime{Name: step, DurationMS: cpapi.Millis(time.Since(since))})
}

func (r *run) finish(err error) (Result, error) {
	r.res.TotalMS = cpapi.Millis(time.Since(r.start))
	return r.res, err
}

// current reports whether st is our control plane for these binaries and
// settings.
func (r *run) current(st State) bool {
	return st.Exists && st.Ours && st.BinHash == r.hash && st.SpecHash == r.sp.hash()
}

func (r *run) healthURL() string {
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(r.o.Settings.ControlPlane.HealthPort)) + "/healthz"
}

// fastPath answers without the lock when /healthz is green and the
// container is current: one HTTP request, one inspect.
func (r *run) fastPath(ctx context.Context) (bool, error) {
	t := time.Now()
	code, _ := getHealthz(ctx, r.healthURL(), time.Second)
	r.record(StepProbe, t)
	if code != http.StatusOK {
		return false, nil
	}
	t = time.Now()
	st, err := Inspect(ctx, r.o.Docker)
	r.record(StepInspect, t)
	if err != nil {
		return false, err
	}
	// A green /healthz with no running container behind it is a CP that
	// runs outside Docker; replacing a stopped container would only collide
	// with it on the ports.
	if !st.Exists || !st.Running {
		return false, fmt.Errorf("a control plane answers on 127.0.0.1:%d, but no running %s container: it runs outside Docker "+
			"(started by hand or by a test?); stop that process and run the command again",
			r.o.Settings.ControlPlane.HealthPort, ContainerName)
	}
	if st.Running && r.current(st) {
		r.res.Outcome, r.res.ContainerID, r.res.IP = OutcomeAlreadyRunning, st.ID, st.IP
		return true, nil
	}
	return false, nil
}

// ensure is the slow path, under the lock.
func (r *run) ensure(ctx context.Context) error {
	o, rep := r.o, r.o.Reporter

	// bpffs first: a host that cannot have it cannot run the CP.
	t := time.Now()
	mounted, err := ensureBPFFS()
	r.record(StepBPFFS, t)
	if err != nil {
		return err
	}
	if mounted {
		rep.Note("mounted the host's bpffs at " + BPFFSPath)
	}

	t = time.Now()
	st, err := Inspect(ctx, o.Docker)
	r.record(StepInspect, t)
	if err != nil {
		return err
	}
	if st.Exists && !st.Ours {
		return fmt.Errorf("a container named %s exists that clawker did not create (no %s=true, %s=%s labels); "+
			"remove it (docker rm -f %s) and run the command again", ContainerName, dockerx.LabelManaged, dockerx.LabelPurpose, dockerx.PurposeControlPlane, ContainerName)
	}

	if r.current(st) && st.Restarting {
		// Crash-looping under the on-failure policy (say, until the
		// settings were fixed): end the loop and start it afresh below.
		if st, err = r.endForRestart(ctx, st, "it is restarting after a crash"); err != nil {
			return err
		}
	}
	if r.current(st) && st.Running && !st.Restarting && st.RestartCount > 0 {
		// A retry of the on-failure policy that is not green yet: it may
		// have read settings fixed only since, and would then fail again.
		// A healthy one is left alone; one still starting is restarted.
		if code, _ := getHealthz(ctx, r.healthURL(), time.Second); code != http.StatusOK {
			if st, err = r.endForRestart(ctx, st, "it was restarted after a crash and is not green"); err != nil {
				return err
			}
		}
	}
	if r.current(st) && st.Running && !st.Restarting {
		// Someone (another clawker) started it: wait for it.
		r.res.Outcome, r.res.ContainerID, r.res.IP = OutcomeAdopted, st.ID, st.IP
		return r.waitHealthy(ctx, st, true)
	}

	replace := st.Exists && !r.current(st)
	if replace {
		if err := r.replace(ctx, st); err != nil {
			return err
		}
		st = State{}
	}

	if err := r.ensureImage(ctx); err != nil {
		return err
	}

	t = time.Now()
	rep.Begin("network " + NetworkName)
	ni, err := ensureNetwork(ctx, o.Docker, NetworkName, o.labels("network"))
	r.record(StepNetwork, t)
	if err != nil {
		rep.End("", err)
		return err
	}
	rep.End(fmt.Sprintf("network %s: gateway %s, control plane at %s", NetworkName, ni.Gateway, ni.CPIP), nil)
	r.res.IP = ni.CPIP

	// A stopped container made for another address (the network was
	// recreated since) would not start: make a new one.
	if st.Exists && (st.ConfiguredIP != ni.CPIP || (st.NetworkID != "" && st.NetworkID != ni.ID)) {
		if err := r.remove(ctx, st.ID); err != nil {
			return err
		}
		st = State{}
	}

	if err := r.ensureAuth(ni.CPIP); err != nil {
		return err
	}

	switch {
	case st.Exists:
		r.res.Outcome = OutcomeStarted
		r.res.ContainerID = st.ID
	case replace:
		r.res.Outcome = OutcomeReplaced
	default:
		r.res.Outcome = OutcomeCreated
	}
	if !st.Exists {
		id, err := r.create(ctx, ni.CPIP)
		if err != nil {
			return err
		}
		r.res.ContainerID = id
		st = State{Exists: true, ID: id}
	}
	if err := r.startContainer(ctx, r.res.ContainerID); err != nil {
		return err
	}
	started, err := Inspect(ctx, o.Docker)
	if err != nil {
		return err
	}
	return r.waitHealthy(ctx, started, false)
}

// endForRestart ends a control plane that is restarting or not green, so
// that ensure starts one afresh, and returns the state after. With agents
// running it must not drain: the drain ends in ebpf_flush, which would
// leave them unfiltered until the new control plane enforced them again.
// A forced remove kills it with SIGKILL, which to the CP is a crash: its
// pins keep enforcing, and the next one adopts them (a stop instead could
// also race the on-failure policy's next start and SIGTERM that one). With
// no agent running it is stopped, a drain like down's.
func (r *run) endForRestart(ctx context.Context, st State, why string) (State, error) {
	agents, err := runningAgents(ctx, r.o.Docker)
	if err != nil {
		return st, err
	}
	if len(agents) == 0 {
		if _, err := stop(ctx, r.o.Docker, st.ID, 10*time.Second); err != nil {
			return st, err
		}
		return Inspect(ctx, r.o.Docker)
	}
	t := time.Now()
	r.o.Reporter.Begin(fmt.Sprintf("replacing %s without a drain (%s, and %d agent container(s) run, whose enforcement a drain would lift)",
		ContainerName, why, len(agents)))
	err = r.remove(ctx, st.ID)
	r.record(StepReplace, t)
	r.o.Reporter.End("killed and removed the previous "+ContainerName+" container; the eBPF pins kept enforcing", err)
	if err != nil {
		return st, err
	}
	return State{}, nil
}

// replace removes a container of other binaries or settings, unless agents
// run: they would be left without their supervisor.
func (r *run) replace(ctx context.Context, st State) error {
	why := "other binaries (" + orNone(st.BinHash) + ", this clawker has " + r.hash + ")"
	if st.BinHash == r.hash {
		why = "other settings (ports or directories changed since it was created)"
	}
	agents, err := runningAgents(ctx, r.o.Docker)
	if err != nil {
		return err
	}
	if len(agents) > 0 {
		return fmt.Errorf("the %s container runs %s, and %d agent container(s) are running (%s); "+
			"replacing the control plane now would leave them unsupervised. Stop the agents first, "+
			"or keep using the clawker that started this control plane",
			ContainerName, why, len(agents), strings.Join(agents, ", "))
	}
	t := time.Now()
	r.o.Reporter.Begin("replacing " + ContainerName + " (it runs " + why + ")")
	if st.Running || st.Restarting {
		if _, err := stop(ctx, r.o.Docker, st.ID, StopTimeout(r.o.Settings)); err != nil {
			r.o.Reporter.End("", err)
			return err
		}
	}
	err = r.remove(ctx, st.ID)
	r.record(StepReplace, t)
	r.o.Reporter.End("removed the previous "+ContainerName+" container", err)
	return err
}

func (r *run) remove(ctx context.Context, id string) error {
	_, err := bounded(ctx, callTimeout, func(ctx context.Context) (client.ContainerRemoveResult, error) {
		return r.o.Docker.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true})
	})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("removing container %s: %w", ContainerName, err)
	}
	return nil
}

func (r *run) ensureImage(ctx context.Context) error {
	o, rep := r.o, r.o.Reporter
	t := time.Now()
	defer r.record(StepImage, t)
	ok, err := imageExists(ctx, o.Docker, r.image)
	if err != nil || ok {
		return err
	}
	rep.Begin("building image " + r.image)
	if err := buildImage(ctx, o.Docker, r.b, r.image, o.labels(dockerx.PurposeControlPlane)); err != nil {
		rep.End("", err)
		return err
	}
	r.res.ImageBuilt = true
	rep.End("built image "+r.image, nil)
	// Older tags go; one still used by a container stays (not forced).
	match := maps.Clone(o.Labels)
	if match == nil {
		match = map[string]string{}
	}
	match[dockerx.LabelManaged], match[dockerx.LabelPurpose] = "true", dockerx.PurposeControlPlane
	removed, err := pruneImages(ctx, o.Docker, ImageRepo, r.image, match)
	if err != nil {
		rep.Note("could not remove older control plane images: " + err.Error())
	}
	r.res.PrunedImages = removed
	return nil
}

// ensureAuth is `clawker auth rotate` without --force: material that is
// missing or invalid (including a server certificate that does not name
// ip) is created, the rest kept, and the server bundle rewritten into the
// directory the container mounts.
func (r *run) ensureAuth(ip netip.Addr) error {
	p, rep := r.o.Paths, r.o.Reporter
	t := time.Now()
	defer r.record(StepAuth, t)
	rep.Begin("auth material")
	items, err := certs.Ensure(p.AuthDir, certs.Options{ServerIPs: []net.IP{ip.AsSlice()}})
	if err != nil {
		rep.End("", err)
		return fmt.Errorf("auth material in %s: %w (`clawker auth rotate` shows which part)", p.AuthDir, err)
	}
	m, err := certs.Load(p.AuthDir)
	if err == nil {
		err = m.WriteServerBundle(p.CPAuthDir)
	}
	if err != nil {
		rep.End("", err)
		return fmt.Errorf("writing the control plane's server bundle to %s: %w", p.CPAuthDir, err)
	}
	var created []string
	for _, it := range items {
		if it.Created {
			created = append(created, it.Name)
		}
	}
	detail := "auth material: kept"
	if len(created) > 0 {
		detail = "auth material: created " + strings.Join(created, ", ")
	}
	rep.End(detail, nil)
	return nil
}

// create creates the container, with CAP_BPF when the daemon knows it.
func (r *run) create(ctx context.Context, ip netip.Addr) (string, error) {
	o, rep := r.o, r.o.Reporter
	t := time.Now()
	defer r.record(StepCreate, t)
	for _, dir := range []string{r.sp.ConfigDir, r.sp.CPDir, r.sp.LogDir, r.sp.FirewallDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", fmt.Errorf("creating %s for the control plane's mounts: %w", dir, err)
		}
	}
	rep.Begin("creating container " + ContainerName)
	id, capBPF, err := createWithCaps(ctx, o.Docker, func(capBPF bool) (client.ContainerCreateOptions, error) {
		return createOptions(o, r.sp, r.image, r.hash, ip, capBPF)
	})
	if err != nil {
		rep.End("", err)
		return "", err
	}
	r.res.CapBPF = capBPF
	rep.End(fmt.Sprintf("created container %s (%s) at %s", ContainerName, shortID(id), ip), nil)
	if !capBPF {
		rep.Note(fmt.Sprintf("the Docker daemon (API %s) does not know CAP_BPF; the control plane runs with CAP_SYS_ADMIN alone, which covers loading BPF on this kernel", o.Docker.ClientVersion()))
	}
	return id, nil
}

// createWithCaps creates a container from opts, asking for CAP_BPF when the
// daemon's API version says it knows it, and falling back to CAP_SYS_ADMIN
// alone when the daemon still rejects it as unknown.
func createWithCaps(ctx context.Context, d Docker, opts func(capBPF bool) (client.ContainerCreateOptions, error)) (id string, capBPF bool, err error) {
	capBPF = daemonKnowsCapBPF(d.ClientVersion())
	for {
		co, err := opts(capBPF)
		if err != nil {
			return "", false, err
		}
		res, err := bounded(ctx, callTimeout, func(ctx context.Context) (client.ContainerCreateResult, error) {
			return d.ContainerCreate(ctx, co)
		})
		if err == nil {
			return res.ID, capBPF, nil
		}
		if capBPF && isUnknownCapability(err) {
			capBPF = false
			continue
		}
		if isConflict(err) {
			return "", false, fmt.Errorf("creating container %s: %w (a container of that name appeared meanwhile; run the command again)", co.Name, err)
		}
		return "", false, fmt.Errorf("creating container %s: %w", co.Name, err)
	}
}

func (r *run) startContainer(ctx context.Context, id string) error {
	rep := r.o.Reporter
	t := time.Now()
	defer r.record(StepStart, t)
	rep.Begin("starting " + ContainerName)
	_, err := bounded(ctx, callTimeout, func(ctx context.Context) (client.ContainerStartResult, error) {
		return r.o.Docker.ContainerStart(ctx, id, client.ContainerStartOptions{})
	})
	if err != nil {
		rep.End("", err)
		return fmt.Errorf("starting container %s: %w%s\nsee `docker logs %s`", ContainerName, err, startHint(err, r.o.Settings), ContainerName)
	}
	rep.End("started "+ContainerName, nil)
	return nil
}

// startHint explains the usual causes of a failed start.
func startHint(err error, s settings.Settings) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "port is already allocated") || strings.Contains(msg, "address already in use"):
		return fmt.Sprintf("\na port the control plane publishes on 127.0.0.1 (%s) is taken by another process: free it, or change the port in settings.yaml (control_plane:)",
			joinInts(publishedPorts(s)))
	case strings.Contains(msg, "user specified IP address is supported only"):
		return fmt.Sprintf("\nnetwork %s was created without a subnet; remove it (docker network rm %s) so clawker recreates it", NetworkName, NetworkName)
	}
	return ""
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func orNone(s string) string {
	if s == "" {
		return "unlabelled"
	}
	return s
}
