// Package bpf holds clawker's BPF C sources and their bpf2go output. The
// generated egress_bpfel.go and egress_bpfel.o are committed; regenerate them
// with scripts/gen-bpf.sh (which installs clang and the libbpf headers when
// they are missing) after editing egress.c.
package bpf

//go:generate go tool bpf2go -go-package bpf -output-stem egress -target bpfel Egress egress.c -- -I/usr/include/x86_64-linux-gnu -Wall -Werror
