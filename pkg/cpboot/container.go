package cpboot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/moby/moby/client/pkg/versions"

	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/settings"
)

// Names of what cpboot creates (its labels are pkg/dockerx's).
const (
	ContainerName = "clawker-controlplane"
	NetworkName   = dockerx.NetworkName
)

// Deprecated: the labels are pkg/dockerx's; these names remain for callers
// not yet moved over (dockerx.LabelManaged, ...).
const (
	LabelManaged        = dockerx.LabelManaged
	LabelPurpose        = dockerx.LabelPurpose
	LabelBinHash        = dockerx.LabelBinHash
	LabelSpecHash       = dockerx.LabelSpecHash
	PurposeControlPlane = dockerx.PurposeControlPlane
	PurposeAgent        = dockerx.PurposeAgent
)

// In-container locations: the CP resolves its XDG directories from these.
const (
	containerConfigHome = "/config"
	containerDataHome   = "/data"
	containerStateHome  = "/state"
	dockerSocket        = "/var/run/docker.sock"
	cgroupPath          = "/sys/fs/cgroup"
)

// spec is everything of the container that comes from the settings and the
// host paths. Its hash is a label, so a container created for other ports
// or directories is not adopted as if it were current.
type spec struct {
	Layout       int // bumped when the container's shape changes in code
	ConfigDir    string
	CPDir        string
	LogDir       string
	DockerSocket string
	Ports        []int // published ports, in publishedPorts order
	// Env is Options.Env; omitted when empty, so the hash of a container
	// made without debug knobs is what it was before Env existed.
	Env []string `json:",omitempty"`
	// OryDir is clawker-cp's --ory-dir (ContainerOryDir) when the bundle
	// carries the Ory servers; "" (omitted, so the hash is what it was
	// before Ory) runs the CP without them.
	OryDir string `json:",omitempty"`
	// StackDir is clawker-cp's --stack-dir (ContainerStackDir) when the
	// bundle carries the firewall siblings.
	StackDir string `json:",omitempty"`
	// FirewallDir is the host's firewall data dir (the egress rules
	// store), mounted read-write: the CP is the rules' only writer.
	FirewallDir string `json:",omitempty"`
	// HostProc is clawker-cp's --host-proc: where the host's /proc is
	// bind-mounted read-only (ContainerHostProc). The eBPF owner's cut
	// enters an agent's network namespace through the agent's init process
	// there; the container's own /proc shows no task of another container.
	HostProc string `json:",omitempty"`
	// ReservedPorts is every port the CP listens on, reserved in its
	// network namespace (net.ipv4.ip_local_reserved_ports): part of the
	// spec, so a change of any port makes a new container.
	ReservedPorts string `json:",omitempty"`
}

// ContainerHostProc is where the host's /proc is mounted in the CP's
// container.
const ContainerHostProc = "/host/proc"

const specLayout = 1

func newSpec(s settings.Settings, p settings.Paths, socket string) spec {
	return spec{Layout: specLayout, ConfigDir: p.ConfigDir, CPDir: p.CPDir, LogDir: p.LogDir, DockerSocket: socket, Ports: publishedPorts(s), FirewallDir: p.FirewallDir, HostProc: ContainerHostProc,
		ReservedPorts: reservedPorts(s)}
}

// withBundle is sp for a container of b's image: with --ory-dir when b
// carries Ory.
func (sp spec) withBundle(b *Bundle) spec {
	sp.OryDir, sp.StackDir = "", ""
	if b.HasOry() {
		sp.OryDir = ContainerOryDir
	}
	if b.HasStack() {
		sp.StackDir = ContainerStackDir
	}
	return sp
}

// cmd is the container's command: arguments after the image's entrypoint
// (/clawker-cp --bind 0.0.0.0).
func (sp spec) cmd() []string {
	var cmd []string
	if sp.OryDir != "" {
		cmd = append(cmd, oryDirFlag, sp.OryDir)
	}
	if sp.StackDir != "" {
		cmd = append(cmd, stackDirFlag, sp.StackDir)
	}
	if sp.HostProc != "" {
		cmd = append(cmd, hostProcFlag, sp.HostProc)
	}
	return cmd
}

// hostRootsFile is the host's CA bundle (stackapi.ProxyRootsFile: the same
// path in the CP container and in the proxy image).
const hostRootsFile = "/etc/ssl/certs/ca-certificates.crt"

// stackDirFlag is clawker-cp's flag naming the sibling binaries' directory.
const stackDirFlag = "--stack-dir"

// hostProcFlag is clawker-cp's flag naming where the host's /proc is.
const hostProcFlag = "--host-proc"

// oryDirFlag is clawker-cp's flag naming the Ory servers' directory.
const oryDirFlag = "--ory-dir"

func (sp spec) hash() string {
	b, _ := json.Marshal(sp)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])[:16]
}

// publishedPorts are the ports published on the host's 127.0.0.1, each at
// the same number inside: admin (gRPC), health, Hydra public (the token
// endpoint) and Oathkeeper's proxy. The agent port stays on clawker-net;
// the other Ory ports (Hydra admin, Kratos, Oathkeeper's API) stay inside.
func publishedPorts(s settings.Settings) []int {
	cp := s.ControlPlane
	return []int{cp.AdminPort, cp.HealthPort, cp.HydraPublicPort, cp.OathkeeperPort}
}

// createOptions is the control plane container.
func createOptions(o *Options, sp spec, image, binHash string, ip netip.Addr, capBPF bool) (client.ContainerCreateOptions, error) {
	exposed := network.PortSet{}
	bindings := network.PortMap{}
	loopback := netip.MustParseAddr("127.0.0.1")
	for _, p := range sp.Ports {
		port, ok := network.PortFrom(uint16(p), network.TCP)
		if !ok {
			return client.ContainerCreateOptions{}, fmt.Errorf("port %d is not a valid TCP port", p)
		}
		exposed[port] = struct{}{}
		bindings[port] = []network.PortBinding{{HostIP: loopback, HostPort: strconv.Itoa(p)}}
	}
	caps := []string{"SYS_ADMIN"}
	if capBPF {
		caps = append(caps, "BPF")
	}
	labels := o.labels(dockerx.PurposeControlPlane)
	labels[dockerx.LabelBinHash] = binHash
	labels[dockerx.LabelSpecHash] = sp.hash()
	opts := client.ContainerCreateOptions{
		Name: ContainerName,
		Config: &container.Config{
			Image: image,
			Env: append([]string{
				"XDG_CONFIG_HOME=" + containerConfigHome,
				"XDG_DATA_HOME=" + containerDataHome,
				"XDG_STATE_HOME=" + containerStateHome,
			}, sp.Env...),
			Cmd:          sp.cmd(),
			ExposedPorts: exposed,
			Labels:       labels,
		},
		HostConfig: &container.HostConfig{
			NetworkMode:   container.NetworkMode(NetworkName),
			PortBindings:  bindings,
			RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyOnFailure, MaximumRetryCount: 3},
			CapAdd:        caps,
			// The default seccomp profile stays on; AppArmor's docker-default
			// profile would deny mkdir under /sys/fs/bpf.
			SecurityOpt: []string{"apparmor=unconfined", "no-new-privileges:true"},
			Mounts: []mount.Mount{
				{Type: mount.TypeBind, Source: sp.ConfigDir, Target: containerConfigHome + "/clawker", ReadOnly: true},
				// CPDir, not the whole data dir: the CLI's private keys in
				// AuthDir never enter the container.
				{Type: mount.TypeBind, Source: sp.CPDir, Target: containerDataHome + "/clawker/controlplane"},
				{Type: mount.TypeBind, Source: sp.LogDir, Target: containerStateHome + "/clawker/logs"},
				// The egress rules: the CP is their only writer.
				{Type: mount.TypeBind, Source: sp.FirewallDir, Target: containerDataHome + "/clawker/firewall"},
				{Type: mount.TypeBind, Source: BPFFSPath, Target: BPFFSPath},
				{Type: mount.TypeBind, Source: cgroupPath, Target: cgroupPath, ReadOnly: true},
				// Read-only keeps the socket file from being replaced; the
				// API behind it is fully usable either way.
				{Type: mount.TypeBind, Source: sp.DockerSocket, Target: dockerSocket, ReadOnly: true},
			},
		},
		NetworkingConfig: &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
			NetworkName: {IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: ip}},
		}},
	}
	// No outgoing connection of the CP or its Ory children may take one of
	// the ports it listens on as its source port: Ory starts (and is
	// probed, and registers clients) before the gRPC servers bind, and a
	// port in the ephemeral range would then be taken. Namespaced: the
	// host's reservation is untouched.
	opts.HostConfig.Sysctls = map[string]string{"net.ipv4.ip_local_reserved_ports": sp.ReservedPorts}
	if fi, err := os.Stat(hostRootsFile); err == nil && fi.Mode().IsRegular() && sp.StackDir != "" {
		// The host's CA bundle, which the CP copies into the egress
		// proxy's image (the roots an inspected upstream must chain to);
		// the CP image itself is FROM scratch and has none.
		opts.HostConfig.Mounts = append(opts.HostConfig.Mounts, mount.Mount{Type: mount.TypeBind, Source: hostRootsFile, Target: hostRootsFile, ReadOnly: true})
	}
	if sp.HostProc != "" {
		// Read-only; opening a task's ns/net through it still passes the
		// kernel's ptrace check, which agents (no capabilities) meet.
		opts.HostConfig.Mounts = append(opts.HostConfig.Mounts, mount.Mount{Type: mount.TypeBind, Source: "/proc", Target: sp.HostProc, ReadOnly: true})
	}
	return opts, nil
}

// daemonKnowsCapBPF says whether to ask for CAP_BPF at all: Docker before
// API 1.43 (Engine 24) rejects it as an unknown capability.
func daemonKnowsCapBPF(apiVersion string) bool {
	return apiVersion != "" && !versions.LessThan(apiVersion, "1.43")
}

// isUnknownCapability matches the daemon's refusal of a capability it does
// not know ("unknown capability: \"CAP_BPF\"").
func isUnknownCapability(err error) bool {
	return err != nil && strings.Contains(strings.ToLower(err.Error()), "unknown capability")
}

// State is what `docker inspect clawker-controlplane` says, in short.
type State struct {
	Exists       bool   `json:"exists"`
	ID           string `json:"id,omitempty"`
	Status       string `json:"status,omitempty"` // created, running, restarting, exited, dead, ...
	Running      bool   `json:"running"`
	Restarting   bool   `json:"restarting,omitempty"`
	ExitCode     int    `json:"exit_code,omitempty"`
	RestartCount int    `json:"restart_count,omitempty"`
	Image        string `json:"image,omitempty"`
	BinHash      string `json:"binhash,omitempty"`
	SpecHash     string `json:"spechash,omitempty"`
	// Ours: labelled managed=true, purpose=controlplane.
	Ours bool `json:"ours"`
	// Ory: its command runs the Ory servers (--ory-dir).
	Ory bool       `json:"ory,omitempty"`
	IP  netip.Addr `json:"ip,omitzero"`
	// ConfiguredIP is the static address asked for at creation.
	ConfiguredIP netip.Addr `json:"-"`
	NetworkID    string     `json:"-"`
}

// Inspect inspects the clawker-controlplane container. A missing container
// is a State with Exists false, not an error.
func Inspect(ctx context.Context, d Docker) (State, error) {
	return inspectContainer(ctx, d, ContainerName)
}

func inspectContainer(ctx context.Context, d Docker, name string) (State, error) {
	res, err := bounded(ctx, callTimeout, func(ctx context.Context) (client.ContainerInspectResult, error) {
		return d.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
	})
	if isNotFound(err) {
		return State{}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("inspecting container %s: %w", name, err)
	}
	c := res.Container
	st := State{Exists: true, ID: c.ID, RestartCount: c.RestartCount}
	if c.State != nil {
		st.Status = string(c.State.Status)
		st.Running = c.State.Running
		st.Restarting = c.State.Restarting
		st.ExitCode = c.State.ExitCode
	}
	if c.Config != nil {
		l := c.Config.Labels
		st.Image = c.Config.Image
		st.BinHash = l[dockerx.LabelBinHash]
		st.SpecHash = l[dockerx.LabelSpecHash]
		st.Ours = l[dockerx.LabelManaged] == "true" && l[dockerx.LabelPurpose] == dockerx.PurposeControlPlane
		st.Ory = slices.Contains(c.Config.Cmd, oryDirFlag)
	}
	if c.NetworkSettings != nil {
		if ep := c.NetworkSettings.Networks[NetworkName]; ep != nil {
			st.IP = ep.IPAddress
			st.NetworkID = ep.NetworkID
			if ep.IPAMConfig != nil {
				st.ConfiguredIP = ep.IPAMConfig.IPv4Address
			}
		}
	}
	return st, nil
}

// logTail returns the last n lines the container wrote (stdout and stderr).
func logTail(ctx context.Context, d Docker, id string, n int) (string, error) {
	return bounded(ctx, callTimeout, func(ctx context.Context) (string, error) {
		rc, err := d.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(n)})
		if err != nil {
			return "", err
		}
		defer rc.Close()
		var out strings.Builder
		if _, err := stdcopy.StdCopy(&out, &out, rc); err != nil {
			return out.String(), err
		}
		return strings.TrimRight(out.String(), "\n"), nil
	})
}

// runningAgents lists the running containers labelled as clawker agents.
func runningAgents(ctx context.Context, d Docker) ([]string, error) {
	f := make(client.Filters).
		Add("label", dockerx.LabelManaged+"=true", dockerx.LabelPurpose+"="+dockerx.PurposeAgent).
		Add("status", "running")
	res, err := bounded(ctx, callTimeout, func(ctx context.Context) (client.ContainerListResult, error) {
		return d.ContainerList(ctx, client.ContainerListOptions{Filters: f})
	})
	if err != nil {
		return nil, fmt.Errorf("listing agent containers: %w", err)
	}
	var names []string
	for _, c := range res.Items {
		name := c.ID
		if len(name) > 12 {
			name = name[:12]
		}
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		names = append(names, name)
	}
	return names, nil
}

// reservedPorts lists every port the CP's container listens on, for
// net.ipv4.ip_local_reserved_ports.
func reservedPorts(s settings.Settings) string {
	var b strings.Builder
	for i, p := range s.Ports() {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(p.Port))
	}
	return b.String()
}
