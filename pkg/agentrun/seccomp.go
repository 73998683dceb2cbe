package agentrun

import (
	"encoding/json"
	"runtime"
	"sync"
)

// The agent's seccomp profile.
//
// Docker applies its default profile only when a container names none, and
// one container gets one profile: adding the socket-family rule means
// writing the whole profile. Docker's default is a deny-by-default
// allow-list of some 350 syscalls, maintained with Docker; a copy here
// would rot, and a deny-by-default list of our own would break arbitrary
// agent images on the first syscall it forgot. So the profile allows by
// default and refuses (EPERM) what matters for an escape or for bypassing
// the egress programs:
//
//   - socket(2) for any family but AF_UNIX, AF_INET, AF_INET6 and
//     AF_NETLINK (AF_PACKET, AF_ALG, AF_RXRPC, AF_VSOCK, ... have had
//     kernel bugs an unprivileged agent could reach, and the egress
//     programs see only inet sockets); socketcall (32-bit), whose
//     arguments seccomp cannot read; io_uring, whose IORING_OP_SOCKET and
//     other operations never pass through the syscall filter;
//   - new namespaces: unshare, setns, clone with a CLONE_NEW* flag, and
//     clone3 (ENOSYS, so libc falls back to clone, whose flags can be
//     read), as a user namespace is where an agent without capabilities
//     gets them back;
//   - the kernel's keyrings, bpf, perf_event_open, userfaultfd, mounts
//     and the new mount API, pivot_root, open_by_handle_at (the classic
//     container escape), modules, kexec, swap, reboot, setting clocks,
//     acct, quotactl, iopl/ioperm, syslog, personality changes,
//     lookup_dcookie, and the obsolete ones Docker refuses too.
//
// Most of these need a capability the agent does not have; the profile is
// the second wall, for the kernel bug that forgets to check. ptrace stays
// allowed (debuggers in agent images; since 4.8 it cannot bypass seccomp),
// as in Docker's default on current kernels.

// Families socket(2) may create (everything else is EPERM).
const (
	afUnix    = 1
	afInet    = 2
	afInet6   = 10
	afNetlink = 16
)

const (
	errnoEPERM  = 1
	errnoENOSYS = 38
)

// deniedSyscalls are refused with EPERM. Names unknown on an architecture
// are skipped by the daemon.
var deniedSyscalls = []string{
	"add_key", "keyctl", "request_key",
	"bpf", "perf_event_open", "userfaultfd", "lookup_dcookie", "fanotify_init",
	"mount", "umount", "umount2", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
	"pivot_root", "unshare", "setns",
	"open_by_handle_at", "name_to_handle_at",
	"init_module", "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms",
	"kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff",
	"settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64",
	"acct", "quotactl", "quotactl_fd", "iopl", "ioperm", "syslog", "vhangup", "nfsservctl", "uselib", "ustat", "sysfs", "_sysctl",
	"vm86", "vm86old",
	"io_uring_setup", "io_uring_enter", "io_uring_register",
	"socketcall",
}

// cloneNewFlags are the CLONE_NEW* flags clone(2) may not carry.
var cloneNewFlags = []uint64{
	0x00020000, // CLONE_NEWNS
	0x02000000, // CLONE_NEWCGROUP
	0x04000000, // CLONE_NEWUTS
	0x08000000, // CLONE_NEWIPC
	0x10000000, // CLONE_NEWUSER
	0x20000000, // CLONE_NEWPID
	0x40000000, // CLONE_NEWNET
	0x00000080, // CLONE_NEWTIME
}

// The profile's JSON, in Docker's format (github.com/moby/moby/profiles/seccomp's
// Seccomp type, written out here so only what is used is spelled).
type seccompProfile struct {
	DefaultAction string           `json:"defaultAction"`
	Architectures []string         `json:"architectures,omitempty"`
	Syscalls      []seccompSyscall `json:"syscalls"`
}

type seccompSyscall struct {
	Names    []string     `json:"names"`
	Action   string       `json:"action"`
	ErrnoRet *uint        `json:"errnoRet,omitempty"`
	Args     []seccompArg `json:"args,omitempty"`
	Comment  string       `json:"comment,omitempty"`
}

type seccompArg struct {
	Index    uint   `json:"index"`
	Value    uint64 `json:"value"`
	ValueTwo uint64 `json:"valueTwo"`
	Op       string `json:"op"`
}

// architectures lists the native ABI and its compat ones: a 32-bit
// syscall must meet the same rules, not a filter that does not know it.
func architectures() []string {
	switch runtime.GOARCH {
	case "amd64":
		return []string{"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"}
	case "arm64":
		return []string{"SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"}
	}
	return nil // the daemon's native architecture
}

func buildSeccompProfile() seccompProfile {
	eperm, enosys := uint(errnoEPERM), uint(errnoENOSYS)
	p := seccompProfile{DefaultAction: "SCMP_ACT_ALLOW", Architectures: architectures()}
	p.Syscalls = append(p.Syscalls, seccompSyscall{Names: deniedSyscalls, Action: "SCMP_ACT_ERRNO", ErrnoRet: &eperm})
	// One comparison per rule: libseccomp of some daemons refuses two
	// comparisons of the same argument in one rule. Every family but the
	// four allowed is matched: 0, 3-9, 11-15 by value, 17 and up by GT.
	// The comparison is on all 64 bits, so garbage in the upper half
	// of the register is refused too.
	for fam := uint64(0); fam <= afNetlink; fam++ {
		switch fam {
		case afUnix, afInet, afInet6, afNetlink:
			continue
		}
		p.Syscalls = append(p.Syscalls, seccompSyscall{Names: []string{"socket"}, Action: "SCMP_ACT_ERRNO", ErrnoRet: &eperm,
			Args: []seccompArg{{Index: 0, Value: fam, Op: "SCMP_CMP_EQ"}}})
	}
	p.Syscalls = append(p.Syscalls, seccompSyscall{Names: []string{"socket"}, Action: "SCMP_ACT_ERRNO", ErrnoRet: &eperm,
		Args: []seccompArg{{Index: 0, Value: afNetlink, Op: "SCMP_CMP_GT"}}, Comment: "families above AF_NETLINK"})
	for _, f := range cloneNewFlags {
		p.Syscalls = append(p.Syscalls, seccompSyscall{Names: []string{"clone"}, Action: "SCMP_ACT_ERRNO", ErrnoRet: &eperm,
			Args: []seccompArg{{Index: 0, Value: f, ValueTwo: f, Op: "SCMP_CMP_MASKED_EQ"}}})
	}
	p.Syscalls = append(p.Syscalls, seccompSyscall{Names: []string{"clone3"}, Action: "SCMP_ACT_ERRNO", ErrnoRet: &enosys,
		Comment: "its flags are in memory: ENOSYS makes libc fall back to clone"})
	return p
}

var seccompJSON = sync.OnceValue(func() string {
	b, err := json.Marshal(buildSeccompProfile())
	if err != nil {
		panic(err) // plain structs: cannot fail
	}
	return string(b)
})

// SeccompProfile is the agent containers' seccomp profile, as JSON in
// Docker's format (see the comment above).
func SeccompProfile() string { return seccompJSON() }
