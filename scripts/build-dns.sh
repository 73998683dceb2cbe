#!/usr/bin/env bash
# Builds the DNS sibling, CoreDNS with clawker's plugin (scripts/dns, its own
# Go module so CoreDNS's dependency graph stays out of the control plane's
# go.mod), into a static linux binary:
#
#   scripts/build-dns.sh                 # bin/stack/clawker-dns
#   OUT=/tmp/clawker-dns scripts/build-dns.sh
#
# CGO_ENABLED=0, -trimpath, -ldflags '-s -w'. A binary whose stamp (the
# .clawker-dns.stamp beside it: Go version, flags, the hash of the module's
# go.mod/go.sum and sources, and of pkg/egressrules, which the plugin
# imports through `replace => ../..`) matches is not rebuilt, so a second run
# is instant.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
moddir="$root/scripts/dns"
out="${OUT:-$root/bin/stack/clawker-dns}"
export PATH="/usr/local/go/bin:$PATH"

die() { echo "build-dns: $*" >&2; exit 1; }

[ -f "$moddir/go.mod" ] || die "$moddir/go.mod is missing"
command -v go >/dev/null 2>&1 || die "no go in PATH"

ldflags="-s -w"
# Every input of the build: the module's own files and the packages of the
# main module it imports: egressrules, stackapi, atomicfile (tests excluded:
# they do not change the binary).
srchash() {
	(
		cd "$root"
		{
			printf '%s\n' scripts/dns/go.mod scripts/dns/go.sum go.mod
			find scripts/dns pkg/egressrules pkg/naming pkg/stackapi pkg/atomicfile -name '*.go' ! -name '*_test.go' -type f
		} | LC_ALL=C sort | xargs sha256sum
	) | sha256sum | cut -d' ' -f1
}

stamp="$(dirname "$out")/.$(basename "$out").stamp"
coredns="$(cd "$moddir" && go list -m -f '{{.Version}}' github.com/coredns/coredns)" ||
	die "cannot read the pinned CoreDNS version from $moddir/go.mod"
want="$(printf '%s\n' "coredns=$coredns" "go=$(go env GOVERSION)" "cgo=0" \
	"ldflags=$ldflags" "trimpath=1" "src=$(srchash)")"
if [ -x "$out" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
	echo "build-dns: clawker-dns (CoreDNS $coredns) up to date"
	exit 0
fi

echo "build-dns: building clawker-dns (CoreDNS $coredns)"
start=$SECONDS
mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
rm -f "$tmp"
if ! (cd "$moddir" && CGO_ENABLED=0 GOOS=linux \
	go build -trimpath -ldflags "$ldflags" -o "$tmp" .); then
	rm -f "$tmp"
	die "FAILED to build clawker-dns (module $moddir)"
fi
# CGO_ENABLED=0 links statically; say so if that ever stops being true.
if command -v readelf >/dev/null 2>&1 && readelf -lW "$tmp" | grep -q INTERP; then
	rm -f "$tmp"
	die "FAILED: clawker-dns is not statically linked"
fi
mv -f "$tmp" "$out"
printf '%s\n' "$want" >"$stamp"
echo "build-dns: built $out in $((SECONDS - start))s, $(du -h "$out" | cut -f1), static"
