package clawkercli

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/moby/moby/client"
	"github.com/urfave/cli/v2"

	"github.com/clawker/clawker-cp/pkg/agentrun"
	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// Shell completion rides on urfave/cli's: the scripts below run the
// command line typed so far with --generate-bash-completion appended, and
// the CLI prints the candidates (subcommands, flags, and for --agent and
// --project the names Docker knows).

const completionUsage = "clawker completion bash|zsh"

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print the shell completion script for bash or zsh",
		ArgsUsage: "bash|zsh",
		Description: "bash: source <(clawker completion bash), e.g. from ~/.bashrc\n" +
			"zsh:  source <(clawker completion zsh) in ~/.zshrc, after compinit",
		BashComplete: func(c *cli.Context) {
			for _, s := range []string{"bash", "zsh"} {
				fmt.Fprintln(c.App.Writer, s)
			}
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("completion takes one argument, the shell, got %q (%s)", c.Args().Slice(), completionUsage)
			}
			script, ok := map[string]string{"bash": bashCompletion, "zsh": zshCompletion}[c.Args().First()]
			if !ok {
				return fmt.Errorf("completion: unknown shell %q: bash and zsh are supported (%s)", c.Args().First(), completionUsage)
			}
			_, err := fmt.Fprint(c.App.Writer, script)
			return err
		},
	}
}

// bashCompletion asks the CLI for the candidates of the word under the
// cursor; the words typed so far are passed as they are, not through eval.
const bashCompletion = `# bash completion for clawker: source <(clawker completion bash)
_clawker_complete() {
  local cur="${COMP_WORDS[COMP_CWORD]}"
  local -a words=("${COMP_WORDS[@]:0:COMP_CWORD}")
  local out
  if [[ "$cur" == -* ]]; then
    out=$("${words[@]}" "$cur" --generate-bash-completion 2>/dev/null)
  else
    out=$("${words[@]}" --generate-bash-completion 2>/dev/null)
  fi
  local IFS=$'\n'
  COMPREPLY=($(compgen -W "$out" -- "$cur"))
}
complete -o bashdefault -o default -F _clawker_complete clawker
`

const zshCompletion = `#compdef clawker
# zsh completion for clawker: source <(clawker completion zsh), after compinit
_clawker() {
  local cur=${words[CURRENT]}
  local -a opts
  if [[ "$cur" == -* ]]; then
    opts=("${(@f)$(${words[1,CURRENT-1]} "$cur" --generate-bash-completion 2>/dev/null)}")
  else
    opts=("${(@f)$(${words[1,CURRENT-1]} --generate-bash-completion 2>/dev/null)}")
  fi
  if [[ -n "${opts[1]}" ]]; then
    compadd -a opts
  else
    _files
  fi
}
compdef _clawker clawker
`

// completionTimeout bounds the Docker call of a completion: a TAB must
// not hang on a stuck daemon.
const completionTimeout = 2 * time.Second

// nameCompletion completes the values of --agent and --project of cmd from
// Docker's agent containers, and defers to urfave's completion otherwise.
func nameCompletion(env Env, cmd *cli.Command) cli.BashCompleteFunc {
	return func(c *cli.Context) {
		// The word before the cursor is read from os.Args, as urfave's own
		// completion does: its parsing drops a flag left without a value.
		args := os.Args
		prev := ""
		if len(args) >= 2 {
			// The last word is --generate-bash-completion.
			prev = args[len(args)-2]
		}
		switch prev {
		case "--agent", "-agent":
			project := projectArg(args)
			if project == "" {
				// As agentNames defaults it: --agent NAME means that
				// project's agent.
				if dir, err := os.Getwd(); err == nil {
					project, _ = agentrun.ProjectFromDir(dir)
				}
			}
			printNames(c, env, dockerx.LabelAgent, project)
		case "--project", "-project":
			printNames(c, env, dockerx.LabelProject, "")
		default:
			cli.DefaultCompleteWithFlags(cmd)(c)
		}
	}
}

// printNames prints the distinct values of label on the agent containers
// (of project, when given). A completion must stay quiet, so a Docker
// that does not answer yields nothing.
func printNames(c *cli.Context, env Env, label, project string) {
	d, release, err := env.docker()
	if err != nil {
		return
	}
	defer release()
	f := dockerx.AgentFilter()
	if project != "" {
		f = f.Add("label", dockerx.Label(dockerx.LabelProject, project))
	}
	ctx, cancel := context.WithTimeout(c.Context, completionTimeout)
	defer cancel()
	res, err := d.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return
	}
	seen := map[string]bool{}
	var names []string
	for _, it := range res.Items {
		if n := it.Labels[label]; n != "" && !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	sort.Strings(names)
	fmt.Fprint(c.App.Writer, strings.Join(append(names, ""), "\n"))
}

// withNameCompletion gives every command with an --agent flag the
// completion of its names, down the tree.
func withNameCompletion(env Env, cmds []*cli.Command) {
	for _, cmd := range cmds {
		if cmd.BashComplete == nil && lookupFlag(cmd.Flags, "agent") != nil {
			cmd.BashComplete = nameCompletion(env, cmd)
		}
		withNameCompletion(env, cmd.Subcommands)
	}
}

// projectArg is the --project typed so far, wherever it stands: urfave
// stops parsing flags at the first argument (`bypass 5m --project p`).
func projectArg(args []string) string {
	project := ""
	for i, a := range args {
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "project" {
			continue
		}
		if !hasValue && i+1 < len(args) {
			value = args[i+1]
		}
		project = value
	}
	return project
}
