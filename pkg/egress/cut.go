package egress

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/clawker/clawker-cp/bpf"
)

// The cut: when a bypass or disable ends, what the agent connected while
// unfiltered must not outlive it. The backstop already drops every packet
// such a socket sends; the cut destroys the sockets themselves, so the
// application sees ECONNABORTED instead of a connection that hangs until
// its timeouts.
//
// It runs the iter/tcp and iter/udp programs of egress.c, which call
// bpf_sock_destroy (Linux 6.5+) on every socket of the agent's cgroup (or
// one below it) connected to a destination the enforced policy would refuse
// or rewrite. Socket iterators see only the network namespace they are
// created in, so Cut enters each namespace the cgroup's tasks are in. It
// finds them by the cgroup's pids when this process's pid namespace holds
// them (a CP on the host); a control plane in a container of its own sees
// none, and enters instead through the agent's init process as the host
// numbers it (Docker's State.Pid) in the host's /proc, bind-mounted
// read-only at Options.HostProc. With neither, Cut reports ErrNoNetns (the
// backstop still holds).

// ErrNoNetns is returned by Cut when no task of the cgroup is visible.
var ErrNoNetns = errors.New("no task of the cgroup is visible: cannot enter its network namespace")

// CutResult says what one Cut did.
type CutResult struct {
	Netns     int // network namespaces searched
	Seen      int // connected sockets of the cgroup looked at
	Destroyed int // of which destroyed
	Took      time.Duration
}

type cutPrograms struct {
	TCP *ebpf.Program `ebpf:"cut_tcp"`
	UDP *ebpf.Program `ebpf:"cut_udp"`
}

func (c *cutPrograms) close() error {
	return errors.Join(c.TCP.Close(), c.UDP.Close())
}

func (m *Manager) loadCut() error {
	if m.cut != nil {
		return nil
	}
	repl := map[string]*ebpf.Map{}
	for name := range m.spec.Maps {
		if mp := m.mapByName(name); mp != nil {
			repl[name] = mp
		}
	}
	repl[bpf.EgressMapCutTarget] = m.objs.CutTarget
	var c cutPrograms
	if err := m.spec.LoadAndAssign(&c, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		return fmt.Errorf("load the cut iterators (bpf_sock_destroy needs Linux 6.5+): %w", loadError(err))
	}
	m.cut = &c
	return nil
}

// Cut destroys the sockets of the cgroup at path (enrolled with id cgid),
// and of cgroups below it, connected to where its enforced policy would not
// let them: call it when a bypass or disable ends. A cgroup that is
// bypassed or disabled right now keeps everything. initPid is the
// container's init process in the host's pid namespace (0 if unknown),
// used with Options.HostProc when no task of the cgroup is visible here.
func (m *Manager) Cut(cgid uint64, path string, initPid int) (CutResult, error) {
	start := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return CutResult{}, ErrClosed
	}
	if err := m.loadCut(); err != nil {
		return CutResult{}, err
	}
	nsFiles, err := netnsOf(path)
	if err != nil {
		return CutResult{}, err
	}
	var hostErr error
	if len(nsFiles) == 0 && m.hostProc != "" && initPid > 0 {
		var f *os.File
		if f, hostErr = hostNetns(m.hostProc, initPid, path); hostErr == nil {
			nsFiles = append(nsFiles, f)
		}
	}
	defer func() {
		for _, f := range nsFiles {
			f.Close()
		}
	}()
	var res CutResult
	if len(nsFiles) == 0 {
		res.Took = time.Since(start)
		if hostErr != nil {
			return res, fmt.Errorf("cgroup %s: %w (through the host's pid %d: %v)", path, ErrNoNetns, initPid, hostErr)
		}
		return res, fmt.Errorf("cgroup %s: %w", path, ErrNoNetns)
	}
	if err := m.objs.CutTarget.Put(uint32(0), bpf.EgressCutTarget{CgroupId: cgid}); err != nil {
		return res, fmt.Errorf("cut target: %w", err)
	}
	var errs []error
	for _, f := range nsFiles {
		if err := m.iterateIn(f); err != nil {
			errs = append(errs, err)
			continue
		}
		res.Netns++
	}
	var t bpf.EgressCutTarget
	if err := m.objs.CutTarget.Lookup(uint32(0), &t); err != nil {
		errs = append(errs, err)
	}
	_ = m.objs.CutTarget.Put(uint32(0), bpf.EgressCutTarget{})
	res.Seen, res.Destroyed = int(t.Seen), int(t.Destroyed)
	res.Took = time.Since(start)
	return res, errors.Join(errs...)
}

// iterateIn runs both iterators with a thread inside the network namespace
// ns. The thread is discarded if it cannot return to its own namespace.
func (m *Manager) iterateIn(ns *os.File) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer own.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter the network namespace: %w", err)
			return
		}
		err = errors.Join(runIter(m.cut.TCP), runIter(m.cut.UDP))
		if serr := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); serr != nil {
			errc <- errors.Join(err, fmt.Errorf("return to own network namespace: %w", serr))
			return // still locked: the runtime ends the thread with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

func runIter(p *ebpf.Program) error {
	l, err := link.AttachIter(link.IterOptions{Program: p})
	if err != nil {
		return fmt.Errorf("attach %s: %w", p, err)
	}
	defer l.Close()
	rd, err := l.Open() // binds the namespace of the calling thread
	if err != nil {
		return fmt.Errorf("open %s: %w", p, err)
	}
	defer rd.Close()
	_, err = io.Copy(io.Discard, rd)
	return err
}

// netnsOf opens the network namespace of every task in the cgroup at path
// and below, one file per namespace.
func netnsOf(path string) ([]*os.File, error) {
	seen := map[uint64]bool{}
	var out []*os.File
	err := filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if p == path {
				return err
			}
			return nil // a cgroup that went away
		}
		if !d.IsDir() {
			return nil
		}
		f, err := os.Open(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			return nil
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			pid, err := strconv.Atoi(sc.Text())
			if err != nil || pid <= 0 {
				continue
			}
			ns, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/net")
			if err != nil {
				continue // exited, or not in our pid namespace
			}
			var st unix.Stat_t
			if unix.Fstat(int(ns.Fd()), &st) != nil || seen[st.Ino] {
				ns.Close()
				continue
			}
			seen[st.Ino] = true
			out = append(out, ns)
		}
		return nil
	})
	if err != nil {
		for _, f := range out {
			f.Close()
		}
		return nil, err
	}
	return out, nil
}

// hostNetns opens the network namespace of the host's task pid through
// hostProc (the host's /proc), provided the task is in the cgroup at
// cgroupDir or below it. Both reads go through one handle on
// hostProc/<pid>: if the pid was reused they fail with ESRCH, or describe
// the new task, whose cgroup then does not match.
func hostNetns(hostProc string, pid int, cgroupDir string) (*os.File, error) {
	dir, err := os.Open(filepath.Join(hostProc, strconv.Itoa(pid)))
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	cg, err := readAt(dir, "cgroup")
	if err != nil {
		return nil, err
	}
	if !inCgroup(cg, filepath.Base(cgroupDir)) {
		return nil, fmt.Errorf("pid %d is not in cgroup %s", pid, cgroupDir)
	}
	fd, err := unix.Openat(int(dir.Fd()), "ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open the network namespace of pid %d: %w", pid, err)
	}
	return os.NewFile(uintptr(fd), filepath.Join(dir.Name(), "ns/net")), nil
}

func readAt(dir *os.File, name string) (string, error) {
	fd, err := unix.Openat(int(dir.Fd()), name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("open %s/%s: %w", dir.Name(), name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	return string(b), err
}

// inCgroup says whether a /proc/<pid>/cgroup text puts the task in a
// cgroup v2 directory named base or below one. The path it shows is
// relative to the reader's cgroup namespace (a containerized CP sees
// "/../../system.slice/docker-<id>.scope"), so the directory is matched by
// its name, which holds the container id.
func inCgroup(procCgroup, base string) bool {
	for _, line := range strings.Split(procCgroup, "\n") {
		p, ok := strings.CutPrefix(line, "0::")
		if !ok {
			continue
		}
		for _, seg := range strings.Split(p, "/") {
			if seg == base {
				return true
			}
		}
	}
	return false
}
