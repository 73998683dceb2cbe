package cp

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"

	"github.com/clawker/clawker-cp/pkg/ory"
)

// oryRunBase holds the Ory servers' run dirs when they run as their own
// user: the CP's data dir is 0700 (the host's, bind-mounted), which that
// user cannot traverse, and their files need not outlive the process
// anyway. /run is created 0755 in the FROM-scratch container.
const oryRunBase = "/run/clawker-cp"

// oryIdentity says who the Ory servers run as and where their files go.
// A root CP runs them as ory.DefaultUser with no capability, in a run dir
// of their own under oryRunBase named after cpDir (one per CP home, so
// test CPs on one host do not share one). Any other CP has no privilege
// to drop: they run as its user, in cpDir/ory as before.
func oryIdentity(cpDir string) (runDir string, user *ory.User) {
	if os.Geteuid() != 0 {
		return filepath.Join(cpDir, "ory"), nil
	}
	h := sha256.Sum256([]byte(cpDir))
	u := ory.DefaultUser
	return filepath.Join(oryRunBase, "ory-"+hex.EncodeToString(h[:6])), &u
}
