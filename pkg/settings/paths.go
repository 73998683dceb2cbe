package settings

import (
	"fmt"
	"path/filepath"
)

// Paths are the host directories and files clawker uses, per the XDG base
// directory spec.
type Paths struct {
	ConfigDir    string // $XDG_CONFIG_HOME/clawker
	DataDir      string // $XDG_DATA_HOME/clawker
	StateDir     string // $XDG_STATE_HOME/clawker
	SettingsFile string // ConfigDir/settings.yaml
	LogDir       string // StateDir/logs
	LogFile      string // LogDir/clawker-controlplane.log

	// AuthDir holds the CLI's auth material (CA and its key, CLI cert,
	// signing key). It never leaves the host.
	AuthDir string // DataDir/auth
	// CPDir is everything the control plane itself reads and writes; the
	// container mounts exactly this directory, so no CLI private key is
	// reachable from inside it.
	CPDir      string // DataDir/controlplane
	CPAuthDir  string // CPDir/auth: the server bundle (ca.crt, server.crt/key, signing.jwk.json)
	RegistryDB string // CPDir/controlplane.db
	// FirewallDir holds the egress rule store (egress-rules.yaml and the
	// rules' identities). The control plane's container mounts it beside
	// CPDir: the CP is the rules' only writer.
	FirewallDir string // DataDir/firewall
}

// ResolvePaths computes Paths from the environment. getenv is injected (pass
// os.Getenv) so tests need not mutate the process environment.
func ResolvePaths(getenv func(string) string) (Paths, error) {
	config, err := xdgDir(getenv, "XDG_CONFIG_HOME", ".config")
	if err != nil {
		return Paths{}, err
	}
	data, err := xdgDir(getenv, "XDG_DATA_HOME", ".local/share")
	if err != nil {
		return Paths{}, err
	}
	state, err := xdgDir(getenv, "XDG_STATE_HOME", ".local/state")
	if err != nil {
		return Paths{}, err
	}
	logDir := filepath.Join(state, "logs")
	return Paths{
		ConfigDir:    config,
		DataDir:      data,
		StateDir:     state,
		SettingsFile: filepath.Join(config, "settings.yaml"),
		LogDir:       logDir,
		LogFile:      filepath.Join(logDir, "clawker-controlplane.log"),
		AuthDir:      filepath.Join(data, "auth"),
		CPDir:        filepath.Join(data, "controlplane"),
		CPAuthDir:    filepath.Join(data, "controlplane", "auth"),
		RegistryDB:   filepath.Join(data, "controlplane", "controlplane.db"),
		FirewallDir:  filepath.Join(data, "firewall"),
	}, nil
}

// xdgDir returns $envVar/clawker, falling back to $HOME/homeRel/clawker. The
// XDG spec says relative values are invalid and must be ignored; we also
// refuse a relative HOME, since it would make paths depend on the working
// directory.
func xdgDir(getenv func(string) string, envVar, homeRel string) (string, error) {
	if dir := getenv(envVar); filepath.IsAbs(dir) {
		return filepath.Join(dir, "clawker"), nil
	}
	home := getenv("HOME")
	if !filepath.IsAbs(home) {
		return "", fmt.Errorf("cannot locate the clawker directory for %s: neither %s nor HOME is set to an absolute path; set one of them", envVar, envVar)
	}
	return filepath.Join(home, homeRel, "clawker"), nil
}
