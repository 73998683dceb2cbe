package cpboot

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ensureBPFFS makes sure the host's /sys/fs/bpf is a bpffs mount, mounting
// it when running as root. mounted reports that this call mounted it.
func ensureBPFFS() (mounted bool, err error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("checking %s: %w", BPFFSPath, err)
	}
	ok, err := isBPFFSMounted(f, BPFFSPath)
	f.Close()
	if err != nil {
		return false, fmt.Errorf("checking %s: reading /proc/self/mountinfo: %w", BPFFSPath, err)
	}
	if ok {
		return false, nil
	}
	if os.Geteuid() != 0 {
		return false, bpffsMissing("this clawker does not run as root")
	}
	if err := unix.Mount("bpf", BPFFSPath, "bpf", 0, ""); err != nil {
		return false, bpffsMissing(fmt.Sprintf("mounting it failed (%v)", err))
	}
	return true, nil
}
