package clawkercli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/clawker/clawker-cp/pkg/certs"
)

func authCommand(env Env) *cli.Command {
	return &cli.Command{
		Name:  "auth",
		Usage: "manage the auth material the control plane depends on",
		Subcommands: []*cli.Command{{
			Name:  "rotate",
			Usage: "create missing or invalid auth material (all of it with --force) and refresh the control plane's server bundle",
			Description: "Checks the CA, the control plane's server certificate, the CLI's client certificate and the\n" +
				"OAuth2 signing key, and regenerates whatever is missing or invalid; valid material is kept.\n" +
				"--force regenerates everything, including the CA: agent containers created under the old CA\n" +
				"must then be recreated. The control plane's server bundle is rewritten from the result either\n" +
				"way; a running control plane loads it when restarted.",
			Flags: []cli.Flag{
				&cli.BoolFlag{Name: "force", Usage: "regenerate everything, including the CA and the signing key"},
				&cli.StringSliceFlag{Name: "server-ip", Usage: "extra IP address for the server certificate (repeatable); 127.0.0.1 is always included"},
			},
			Action: func(c *cli.Context) error { return authRotate(c, env) },
		}},
	}
}

func authRotate(c *cli.Context, env Env) error {
	var ips []net.IP
	v, err := prologue(c, env, needs{noArgs: "auth rotate", args: func() (err error) {
		ips, err = parseServerIPs(c.StringSlice("server-ip"))
		return err
	}, paths: true})
	if err != nil {
		return err
	}
	defer v.release()
	paths := v.paths

	_, statErr := os.Stat(filepath.Join(paths.AuthDir, certs.CACertFile))
	hadCA := statErr == nil
	oldBundle := readBundleDir(paths.CPAuthDir)

	ensure := certs.Ensure
	if c.Bool("force") {
		ensure = certs.Rotate
	}
	items, err := ensure(paths.AuthDir, certs.Options{ServerIPs: ips})
	if err != nil {
		writeAuthFailure(env.Stdout, failedGroup(err), err)
		return fmt.Errorf("auth material in %s is incomplete; the server bundle in %s was left unchanged", paths.AuthDir, paths.CPAuthDir)
	}
	if err := writeAuthItems(env.Stdout, items); err != nil {
		return err
	}

	m, err := certs.Load(paths.AuthDir)
	if err != nil {
		return fmt.Errorf("reading back the new auth material: %w", err)
	}
	if err := m.WriteServerBundle(paths.CPAuthDir); err != nil {
		return fmt.Errorf("writing the server bundle: %w", err)
	}
	fmt.Fprintf(env.Stdout, "server bundle written to %s\n", paths.CPAuthDir)

	if hadCA && items[0].Name == certs.GroupCA && items[0].Created {
		fmt.Fprintln(env.Stderr, "hint: the CA was replaced: agent containers created under the old CA can no longer register with the control plane; recreate them.")
	}
	if len(oldBundle) > 0 && !sameBundle(oldBundle, m.ServerBundle()) {
		fmt.Fprintln(env.Stderr, `hint: the server bundle changed: if the control plane is running, restart it to load the new one ("clawker controlplane down", then "clawker controlplane up").`)
	}
	return nil
}

func parseServerIPs(vals []string) ([]net.IP, error) {
	var ips []net.IP
	for _, v := range vals {
		ip := net.ParseIP(strings.TrimSpace(v))
		if ip == nil {
			return nil, fmt.Errorf("--server-ip: %q is not an IP address", v)
		}
		ips = append(ips, ip)
	}
	return ips, nil
}

// writeAuthItems prints one aligned line per group:
//
//	✓ ca       kept     expires 2036-11-26T00:00:00Z  /…/auth/ca.crt
//	✓ signing  created  no expiry                     /…/auth/signing.jwk.json
//
// followed, for each group regenerated because its previous files were
// rejected, by an indented line saying why (nothing is renewed silently).
func writeAuthItems(w io.Writer, items []certs.Item) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	var reasons []string
	for _, it := range items {
		state := "kept"
		if it.Created {
			state = "created"
		}
		expiry := "no expiry"
		if !it.NotAfter.IsZero() {
			expiry = "expires " + it.NotAfter.UTC().Format(time.RFC3339)
		}
		// The state is padded to its widest value so the layout does not
		// shift between a run that creates something and one that keeps all.
		fmt.Fprintf(tw, "✓ %s\t%-7s\t%s\t%s\n", it.Name, state, expiry, it.Path)
		// A first creation needs no explanation; a replacement does.
		if it.Err != nil && !errors.Is(it.Err, fs.ErrNotExist) {
			reasons = append(reasons, fmt.Sprintf("  %s: %s\n", it.Name, singleLine(it.Err.Error())))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range reasons {
		if _, err := io.WriteString(w, r); err != nil {
			return err
		}
	}
	return nil
}

func writeAuthFailure(w io.Writer, group string, err error) {
	fmt.Fprintf(w, "✗ %s  %s\n", group, singleLine(err.Error()))
}

// authGroupMarks are what certs errors mention for each group: the step
// that generates it or one of its file names.
var authGroupMarks = []struct {
	group string
	marks []string
}{
	{certs.GroupCA, []string{"generate CA", sep + certs.CACertFile, sep + certs.CAKeyFile}},
	{certs.GroupServer, []string{"issue server cert", sep + certs.ServerCertFile, sep + certs.ServerKeyFile}},
	{certs.GroupCLI, []string{"issue cli cert", sep + certs.CLICertFile, sep + certs.CLIKeyFile}},
	{certs.GroupSigning, []string{sep + certs.SigningKeyFile, sep + certs.SigningJWKSFile}},
}

const sep = string(filepath.Separator)

// failedGroup names the group an Ensure/Rotate error is about. certs does
// not report per-group failures (it stops at the first one), so this reads
// the message, which always names the step or the file; "auth" (the
// directory itself) when it names neither.
func failedGroup(err error) string {
	msg := err.Error()
	for _, g := range authGroupMarks {
		for _, m := range g.marks {
			if strings.Contains(msg, m) {
				return g.group
			}
		}
	}
	return "auth"
}

// readBundleDir reads the server bundle files present in dir; a missing
// directory or file simply yields fewer entries.
func readBundleDir(dir string) map[string][]byte {
	out := map[string][]byte{}
	for _, name := range []string{certs.CACertFile, certs.ServerCertFile, certs.ServerKeyFile, certs.SigningJWKSFile} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err == nil {
			out[name] = b
		}
	}
	return out
}

func sameBundle(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for name, x := range a {
		if y, ok := b[name]; !ok || !bytes.Equal(x, y) {
			return false
		}
	}
	return true
}

// singleLine keeps a multi-line error on its output line, unabridged (the
// paths in it are the useful part).
func singleLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }
