package clawkercli_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/moby/api/types/container"

	"github.com/clawker/clawker-cp/pkg/clawkercli"
	"github.com/clawker/clawker-cp/pkg/cpboot"
)

func TestCompletionScripts(t *testing.T) {
	for _, shell := range []string{"bash", "zsh"} {
		env, stdout, stderr := cliEnv(t, deadPort(t))
		if code := run(t, env, "completion", shell); code != 0 || stderr.Len() != 0 {
			t.Fatalf("%s: exit %d, stderr %q", shell, code, stderr.String())
		}
		checkGoldenFile(t, "completion_"+shell+".golden", stdout.String())
		if path, err := exec.LookPath(shell); err == nil {
			if out, err := exec.Command(path, "-n", "-c", stdout.String()).CombinedOutput(); err != nil {
				t.Errorf("%s -n: %v\n%s", shell, err, out)
			}
		}
	}
	for _, args := range [][]string{{"completion"}, {"completion", "fish"}, {"completion", "bash", "zsh"}} {
		env, _, stderr := cliEnv(t, deadPort(t))
		if code := run(t, env, args...); code != 1 || !strings.Contains(stderr.String(), "clawker completion bash|zsh") {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr.String())
		}
	}
}

// complete runs the CLI as the scripts do: the words typed, then
// --generate-bash-completion (os.Args too, which urfave's completion reads).
func complete(t *testing.T, d *psDocker, words ...string) string {
	t.Helper()
	env, stdout, stderr := cliEnv(t, deadPort(t))
	env.Docker = func() (cpboot.Docker, error) { return d, nil }
	args := append(append([]string{"clawker"}, words...), "--generate-bash-completion")
	old := os.Args
	os.Args = args
	defer func() { os.Args = old }()
	if code := clawkercli.Run(env, args); code != 0 || stderr.Len() != 0 {
		t.Fatalf("%q: exit %d, stderr %q", words, code, stderr.String())
	}
	return stdout.String()
}

func TestCompletionNames(t *testing.T) {
	d := psHost()
	d.add("shop", "api", webID+"1", container.StateExited)
	for _, c := range []struct {
		words []string
		want  string
	}{
		// --agent: the agents of the project given (or the directory's).
		{[]string{"firewall", "enable", "--project", "myapp", "--agent"}, "dev\nnew\nold\nreview\n"},
		{[]string{"firewall", "bypass", "5m", "--project", "shop", "--agent"}, "api\nweb\n"},
		{[]string{"rm", "--project", "shop", "--agent"}, "api\nweb\n"},
		{[]string{"run", "--project", "nothere", "--agent"}, ""},
		// --project: every project with an agent container.
		{[]string{"firewall", "disable", "--project"}, "myapp\nshop\n"},
		// Elsewhere, urfave's own: subcommands and flags.
		{[]string{"firewall", "enable", "--ag"}, "--agent\n"},
		{[]string{"completion"}, "bash\nzsh\n"},
	} {
		if got := complete(t, d, c.words...); got != c.want {
			t.Errorf("%q: %q, want %q", c.words, got, c.want)
		}
	}
	if got := complete(t, d, "firewall"); !strings.Contains(got, "presets\n") || !strings.Contains(got, "bypass\n") {
		t.Errorf("firewall: %q", got)
	}
	if got := complete(t, d); !strings.Contains(got, "ps\n") || !strings.Contains(got, "completion\n") {
		t.Errorf("root: %q", got)
	}
}

// The bash script passes the words typed to the CLI as they are, and
// offers what it prints that matches the word under the cursor. A shim
// stands in for clawker and answers one command line.
func TestCompletionBashScript(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	env, stdout, _ := cliEnv(t, deadPort(t))
	if code := run(t, env, "completion", "bash"); code != 0 {
		t.Fatal(code)
	}
	dir := t.TempDir()
	shim := "#!/bin/sh\n[ \"$*\" = 'firewall enable --agent --generate-bash-completion' ] && printf 'dev\\nreview\\nrelease\\n'\n" +
		"[ \"$*\" = 'firewall enable --ag --generate-bash-completion' ] && printf -- '--agent\\n'\nexit 0\n"
	if err := os.WriteFile(filepath.Join(dir, "clawker"), []byte(shim), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ words, cword, want string }{
		{"clawker firewall enable --agent ''", "4", "dev review release"},
		{"clawker firewall enable --agent re", "4", "review release"},
		{"clawker firewall enable --ag", "3", "--agent"},
	} {
		script := stdout.String() + "COMP_WORDS=(" + c.words + "); COMP_CWORD=" + c.cword + "; _clawker_complete; echo \"${COMPREPLY[*]}\"\n"
		cmd := exec.Command(bash, "--norc", "-c", script)
		cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != c.want {
			t.Errorf("%s: %q (%v), want %q", c.words, out, err, c.want)
		}
	}
}
