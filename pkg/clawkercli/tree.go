package clawkercli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/clawker/clawker-cp/pkg/cpapi"
)

func tree(c *cli.Context, env Env) error {
	v, err := prologue(c, env, needs{format: true, cp: true})
	if err != nil {
		return err
	}
	defer v.release()
	if err := v.ensureCP(c.Context); err != nil {
		return err
	}
	var root cpapi.ActorNode
	if _, err := getDebug(c.Context, v.paths, v.s, "/debug/actors", &root); err != nil {
		return err
	}
	if v.asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(root)
	}
	return writeTree(env.Stdout, root)
}

// writeTree renders the actor tree with box-drawing branches and aligned
// columns.
func writeTree(w io.Writer, root cpapi.ActorNode) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ACTOR\tSTATE\tRESTARTS\tMAILBOX\tUPTIME\tLAST ERROR")
	var walk func(n cpapi.ActorNode, prefix, branch string)
	walk = func(n cpapi.ActorNode, prefix, branch string) {
		lastErr := n.LastError
		if lastErr == "" {
			lastErr = "-"
		}
		fmt.Fprintf(tw, "%s%s%s\t%s\t%d\t%d\t%s\t%s\n", prefix, branch, n.Name, n.State, n.Restarts, n.MailboxDepth,
			(time.Duration(n.UptimeSec * float64(time.Second))).Round(time.Second), oneLine(lastErr))
		childPrefix := prefix
		switch branch {
		case "├── ":
			childPrefix += "│   "
		case "└── ":
			childPrefix += "    "
		}
		for i, c := range n.Children {
			b := "├── "
			if i == len(n.Children)-1 {
				b = "└── "
			}
			walk(c, childPrefix, b)
		}
	}
	walk(root, "", "")
	return tw.Flush()
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if r := []rune(s); len(r) > 80 {
		s = string(r[:77]) + "..."
	}
	return s
}
