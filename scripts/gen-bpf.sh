#!/usr/bin/env bash
# Regenerates the bpf2go output for the BPF C sources under bpf/.
#
# bpf/egress_bpfel.go and bpf/egress_bpfel.o are committed; run this after
# editing bpf/egress.c:
#
#   scripts/gen-bpf.sh
#
# clang, llvm (llvm-strip) and the libbpf headers come from Debian (installed
# on demand). bpf2go is pinned as a Go tool in go.mod (`go get -tool`), so the
# generator is the version of github.com/cilium/ebpf the module records.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

missing=()
command -v clang >/dev/null 2>&1 || missing+=(clang)
command -v llvm-strip >/dev/null 2>&1 || missing+=(llvm)
[ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
# asm/types.h for <linux/bpf.h>, found via -I/usr/include/x86_64-linux-gnu.
[ -f /usr/include/linux/bpf.h ] || missing+=(linux-libc-dev)

if [ "${#missing[@]}" -gt 0 ]; then
	echo "gen-bpf: installing ${missing[*]} via apt-get" >&2
	sudo=""
	if [ "$(id -u)" -ne 0 ]; then
		if command -v sudo >/dev/null 2>&1; then
			sudo="sudo"
		else
			echo "gen-bpf: need root (or sudo) to apt-get install ${missing[*]}" >&2
			exit 1
		fi
	fi
	$sudo apt-get update
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

go generate ./bpf/...
echo "gen-bpf: regenerated $(ls bpf/*_bpfel.go bpf/*_bpfel.o | tr '\n' ' ')" >&2
