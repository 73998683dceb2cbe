//go:build !linux

package cpboot

// ensureBPFFS has nothing to check off Linux: the Docker daemon runs in a
// Linux VM whose /sys/fs/bpf is not the host's.
func ensureBPFFS() (mounted bool, err error) { return false, nil }
