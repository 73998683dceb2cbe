package cpboot

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// BPFFSPath is where the host's bpffs must be mounted: the control plane
// pins its programs and maps there, and pins only outlive the CP container
// when they sit on the host's bpffs (one mounted inside the container's own
// mount namespace would vanish with it).
const BPFFSPath = "/sys/fs/bpf"

// isBPFFSMounted reports whether mountinfo (the format of
// /proc/self/mountinfo) shows a bpf file system on top of mountpoint.
func isBPFFSMounted(mountinfo io.Reader, mountpoint string) (bool, error) {
	mounted := false
	sc := bufio.NewScanner(mountinfo)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		// (fields 1-6, optional fields, "-", fstype, source, super options)
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f := strings.Fields(pre)
		g := strings.Fields(post)
		if len(f) < 5 || len(g) < 1 || unescapeMountinfo(f[4]) != mountpoint {
			continue
		}
		// A later line for the same mount point is mounted over an earlier
		// one: the last one is what a path lookup sees.
		mounted = g[0] == "bpf"
	}
	return mounted, sc.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) the kernel
// writes in mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			okOct := true
			for j := 1; j <= 3; j++ {
				c := s[i+j]
				if c < '0' || c > '7' {
					okOct = false
					break
				}
				v = v*8 + (c - '0')
			}
			if okOct {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// bpffsMissing is the error for a host without bpffs and a clawker that may
// not mount it.
func bpffsMissing(why string) error {
	return fmt.Errorf("%s is not a bpffs mount and %s; mount it (as root) with:\n  mount -t bpf bpf %s\nthen run the command again", BPFFSPath, why, BPFFSPath)
}
