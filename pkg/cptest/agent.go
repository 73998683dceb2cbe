package cptest

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/agentdb"
	"github.com/clawker/clawker-cp/pkg/certs"
)

// ClawkerdPkg is the package path of clawkerd, for BuildBinaries.
const ClawkerdPkg = "github.com/clawker/clawker-cp/cmd/clawkerd"

// AgentFiles are the PEM files one agent container receives: the CA that
// signed the control plane's certificate, and the agent's own certificate
// and key, minted on the host with certs.MintAgentCert.
type AgentFiles struct {
	ID   certs.AgentIdentity
	Leaf *x509.Certificate
	Dir  string // holds the three files
	CA   string // ca.crt
	Cert string // agent.crt
	Key  string // agent.key (mode 0600)
}

// Name is "<project>.<agent>", the name of the agent's Session actor.
func (f AgentFiles) Name() string { return f.ID.Project + "." + f.ID.Agent }

// Thumbprint is what the registry binds: the hex SHA-256 of the leaf's
// public key (certs.KeyThumbprint), the same for every leaf of a chain.
func (f AgentFiles) Thumbprint() string { return certs.KeyThumbprint(f.Leaf) }

// AgentKey is the registry key of the binding the certificate makes.
func (f AgentFiles) AgentKey() string { return agentdb.Key(f.Thumbprint(), f.ID.ContainerID) }

// WriteAgentFiles mints a certificate for id with m and writes ca.crt,
// agent.crt and agent.key into a fresh directory, removed when the test
// ends.
func WriteAgentFiles(t testing.TB, m *certs.Material, id certs.AgentIdentity) AgentFiles {
	t.Helper()
	certPEM, keyPEM, err := m.MintAgentCert(id, 24*time.Hour)
	if err != nil {
		t.Fatalf("cptest: minting an agent cert for %s.%s: %v", id.Project, id.Agent, err)
	}
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		t.Fatal("cptest: the minted agent cert is not PEM")
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("cptest: parsing the minted agent cert: %v", err)
	}
	dir := t.TempDir()
	f := AgentFiles{ID: id, Leaf: leaf, Dir: dir,
		CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, "agent.crt"), Key: filepath.Join(dir, "agent.key")}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.CA.Raw})
	for _, w := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{f.CA, caPEM, 0o644}, {f.Cert, certPEM, 0o644}, {f.Key, keyPEM, 0o600}} {
		if err := os.WriteFile(w.path, w.data, w.mode); err != nil {
			t.Fatalf("cptest: %v", err)
		}
	}
	return f
}

// ClawkerdConfig is what StartClawkerd passes to clawkerd as flags.
type ClawkerdConfig struct {
	CPAddr string // --cp-addr, "127.0.0.1:<agent_port>"
	Files  AgentFiles
	// Home is --home (where .clawker/mcp/ is written); "" means a fresh
	// temporary directory.
	Home string
	// Heartbeat and MaxBackoff are --heartbeat and --max-backoff; zero
	// leaves clawkerd's defaults.
	Heartbeat  time.Duration
	MaxBackoff time.Duration
	// Command is the user's command, passed after "--"; empty means none.
	Command []string
	// Token, when set, is passed as --assertion, --token-url and
	// --token-audience (WriteAgentToken): clawkerd exchanges the assertion
	// before its first Register, as a control plane with Ory requires.
	Token *AgentToken
}

// Clawkerd is a started clawkerd process.
type Clawkerd struct {
	*Process
	Config ClawkerdConfig // as started, Home filled in
}

// Args are the command-line arguments cfg stands for.
func (cfg ClawkerdConfig) Args() []string {
	args := []string{
		"--cp-addr", cfg.CPAddr,
		"--ca", cfg.Files.CA, "--cert", cfg.Files.Cert, "--key", cfg.Files.Key,
		"--project", cfg.Files.ID.Project, "--agent", cfg.Files.ID.Agent,
		"--home", cfg.Home,
	}
	if cfg.Heartbeat > 0 {
		args = append(args, "--heartbeat", cfg.Heartbeat.String())
	}
	if cfg.MaxBackoff > 0 {
		args = append(args, "--max-backoff", cfg.MaxBackoff.String())
	}
	if t := cfg.Token; t != nil {
		args = append(args, "--assertion", t.Assertion, "--token-url", t.URL, "--token-audience", t.Audience)
	}
	if len(cfg.Command) > 0 {
		args = append(append(args, "--"), cfg.Command...)
	}
	return args
}

// StartClawkerd execs the clawkerd binary at bin with home's environment
// and cfg's flags. Its stderr (JSON lines) and stdout (shared with the
// user's command) are captured. When the test ends, the process group of
// the user's command (clawkerd logs its pid in agent_command_started) is
// killed, then clawkerd itself if it still runs.
func StartClawkerd(t testing.TB, home *Home, bin string, cfg ClawkerdConfig) *Clawkerd {
	t.Helper()
	if cfg.Home == "" {
		cfg.Home = t.TempDir()
	}
	p := Start(t, home, bin, cfg.Args())
	// Registered after Start's cleanup, so it runs before it: the user's
	// command runs in a process group of its own, which a SIGKILL of
	// clawkerd would leave behind.
	t.Cleanup(func() { killCommandGroups(p) })
	return &Clawkerd{Process: p, Config: cfg}
}

// CommandPIDs are the pids clawkerd logged for the user's command it
// started (agent_command_started), in order.
func (c *Clawkerd) CommandPIDs() []int {
	var pids []int
	for _, l := range FilterEvent(c.Lines(), "agent_command_started") {
		if f, ok := l["pid"].(float64); ok && f > 0 {
			pids = append(pids, int(f))
		}
	}
	return pids
}

// EventCount is how many JSON log lines with "event": event clawkerd wrote
// so far.
func (c *Clawkerd) EventCount(event string) int { return len(FilterEvent(c.Lines(), event)) }

// killCommandGroups SIGKILLs the process group of every user command p
// started whose group still exists (its leader is alive: the pid cannot
// have been reused for another group).
func killCommandGroups(p *Process) {
	c := &Clawkerd{Process: p}
	for _, pid := range c.CommandPIDs() {
		if pgid, err := syscall.Getpgid(pid); err != nil || pgid != pid {
			continue
		}
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// ProcState is the state letter of /proc/<pid>/stat ("R", "S", "T" for
// stopped, "Z" for a zombie...), or "" when it cannot be read (Linux only).
func ProcState(pid int) string {
	st, _, ok := procStat(pid)
	if !ok {
		return ""
	}
	return st
}

// GroupMembers lists the processes of process group pgid that are alive:
// zombies (exited, not yet reaped) are left out, as a signal to the group
// still "reaches" them (Linux only).
func GroupMembers(pgid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, pg, ok := procStat(pid)
		if ok && pg == pgid && st != "Z" {
			out = append(out, pid)
		}
	}
	return out
}

// procStat reads the state and the process group of pid from
// /proc/<pid>/stat.
func procStat(pid int) (state string, pgrp int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, false
	}
	// The command name is in parentheses and may hold spaces: the fields
	// after the last ')' are state, ppid, pgrp...
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return "", 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 3 {
		return "", 0, false
	}
	pg, err := strconv.Atoi(f[2])
	if err != nil {
		return "", 0, false
	}
	return f[0], pg, true
}
