#!/usr/bin/env bash
# Fails listing the Go files gofmt would change (generated bpf2go output aside).
set -euo pipefail
cd "$(dirname "$0")/.."
files=$(git ls-files '*.go' | grep -v '_bpfel.go$' || true)
[ -z "$files" ] && exit 0
bad=$(gofmt -l $files)
if [ -n "$bad" ]; then
  echo "gofmt would change:"; echo "$bad"; exit 1
fi
