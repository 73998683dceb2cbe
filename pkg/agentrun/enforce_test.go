package agentrun

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/clawker/clawker-cp/pkg/agentd"
)

// With RequireEnforced the container tells clawkerd to wait for the
// firewall; clawkerd reads that environment as meant.
func TestCreateRequireEnforced(t *testing.T) {
	for _, require := range []bool{false, true} {
		d := newFake()
		d.images["agent:1"] = fakeImage{Entrypoint: []string{"/agent"}}
		s := testSpec(t, "agent:1")
		s.RequireEnforced = require
		res, err := Create(context.Background(), d, s)
		if err != nil {
			t.Fatal(err)
		}
		env := d.containers[res.ID].Opts.Config.Env
		n := 0
		for _, kv := range env {
			if strings.HasPrefix(kv, EnvRequireEnforced+"=") {
				n++
			}
		}
		if want := map[bool]int{false: 0, true: 1}[require]; n != want || require && !slices.Contains(env, "CLAWKERD_REQUIRE_ENFORCED=1") {
			t.Errorf("RequireEnforced=%v: env %q", require, env)
		}

		vars := map[string]string{}
		for _, kv := range env {
			k, v, _ := strings.Cut(kv, "=")
			vars[k] = v
		}
		cfg, _, err := agentd.ParseArgs(nil, func(k string) string { return vars[k] })
		if err != nil {
			t.Fatalf("clawkerd rejects the container's environment: %v", err)
		}
		if cfg.RequireEnforced != require {
			t.Errorf("RequireEnforced=%v: clawkerd reads %v", require, cfg.RequireEnforced)
		}
	}
}
