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
// created in, so Cut enters each namespace the cgroup's tasks are in. That
// needs their pids in this process's pid namespace: a control plane in a
// container of its own sees none, and Cut then reports ErrNoNetns (the
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
// bypassed or disabled right now keeps everything.
func (m *Manager) Cut(cgid uint64, path string) (CutResult, error) {
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
	defer func() {
		for _, f := range nsFiles {
			f.Close()
		}
	}()
	var res CutResult
	if len(nsFiles) == 0 {
		res.Took = time.Since(start)
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
