package cp

import (
	"os"
	"path/filepath"

	"github.com/clawker/clawker-cp/pkg/ory"
)

// oryIdentity says who the Ory servers run as and where their files go.
// A root CP runs them as ory.DefaultUser with no capability, in a run dir
// of their own (ory.RunDirFor: under /run, which that user can reach,
// unlike the CP's 0700 data dir). Any other CP has no privilege to drop:
// they run as its user, in cpDir/ory as before.
func oryIdentity(cpDir string) (runDir string, user *ory.User) {
	if os.Geteuid() != 0 {
		return filepath.Join(cpDir, "ory"), nil
	}
	u := ory.DefaultUser
	return ory.RunDirFor(cpDir), &u
}

// OryRunDir is where a control plane on cpDir writes the Ory servers'
// configuration and rules (outside cpDir when it runs as root).
func OryRunDir(cpDir string) string {
	d, _ := oryIdentity(cpDir)
	return d
}
