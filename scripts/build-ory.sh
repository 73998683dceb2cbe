#!/usr/bin/env bash
# Builds the Ory servers into bin/ory/ as static linux binaries:
#
#   scripts/build-ory.sh                 # hydra, kratos and oathkeeper
#   scripts/build-ory.sh kratos          # only the ones named
#
# Each comes from the Go module proxy at the version pinned by its own module
# under scripts/ory/<name>/ (a `tool` line plus the `replace` directives of
# the project's go.mod); the control plane's go.mod never sees their
# dependency graphs. hydra and kratos need cgo (mattn/go-sqlite3, for
# DSN=memory / sqlite) and are linked fully static against glibc; oathkeeper
# builds with CGO_ENABLED=0. sqlite_unlock_notify: Hydra's DSN=memory is a
# shared-cache database, whose table locks fail at once (SQLITE_LOCKED)
# without it; a few agents fetching tokens together then got HTTP 500s and
# tokens that introspected as inactive (TestThousandSessions: 230 of 1000).
#
# A binary whose stamp (bin/ory/.<name>.stamp: version, Go version, flags,
# go.mod/go.sum hash) matches is not rebuilt, so a second run is instant.
# Missing build dependencies (gcc, libc6-dev's static libc, binutils'
# readelf) are installed from Debian.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/bin/ory"
export PATH="/usr/local/go/bin:$PATH"

die() { echo "build-ory: $*" >&2; exit 1; }

# --- build dependencies -----------------------------------------------------
missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
libc_a="$(gcc -print-file-name=libc.a 2>/dev/null || true)"
[ -f "$libc_a" ] || missing+=(libc6-dev)
command -v readelf >/dev/null 2>&1 || missing+=(binutils)
if [ "${#missing[@]}" -gt 0 ]; then
	echo "build-ory: installing ${missing[*]} via apt-get" >&2
	sudo=""
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install ${missing[*]}"
		sudo="sudo"
	fi
	$sudo apt-get update
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
	libc_a="$(gcc -print-file-name=libc.a)"
	[ -f "$libc_a" ] || die "no static libc (libc.a) after installing libc6-dev"
fi

# --- per binary ---------------------------------------------------------------
# name -> main package (a `tool` line of scripts/ory/<name>/go.mod), its module,
# and the variable its version is stamped into (as upstream's release builds do).
pkg_of() {
	case "$1" in
	hydra) echo "github.com/ory/hydra/v2 github.com/ory/hydra/v2 github.com/ory/hydra/v2/driver/config.Version" ;;
	kratos) echo "github.com/ory/kratos github.com/ory/kratos github.com/ory/kratos/driver/config.Version" ;;
	oathkeeper) echo "github.com/ory/oathkeeper github.com/ory/oathkeeper github.com/ory/oathkeeper/x.Version" ;;
	*) return 1 ;;
	esac
}

# Fails unless $1 is a statically linked ELF: no program interpreter
# (PT_INTERP) and no shared-library dependency (DT_NEEDED).
check_static() {
	local f="$1" hdr
	if ! hdr="$(readelf -lW "$f" 2>&1)"; then
		echo "build-ory: $2: readelf -l $f failed: $hdr" >&2
		return 1
	fi
	if grep -q 'INTERP' <<<"$hdr"; then
		echo "build-ory: $2: NOT STATIC, has a PT_INTERP ($(grep -o 'interpreter: [^]]*' <<<"$hdr"))" >&2
		return 1
	fi
	if readelf -dW "$f" 2>/dev/null | grep -q '(NEEDED)'; then
		echo "build-ory: $2: NOT STATIC, needs $(readelf -dW "$f" | grep '(NEEDED)' | grep -o '\[.*\]' | tr '\n' ' ')" >&2
		return 1
	fi
}

build_one() {
	local name="$1" pkg mod vervar moddir version cgo tags ldflags stamp want start tmp
	read -r pkg mod vervar <<<"$(pkg_of "$name")"
	moddir="$root/scripts/ory/$name"
	[ -f "$moddir/go.mod" ] || die "$name: $moddir/go.mod is missing"

	version="$(cd "$moddir" && go list -m -f '{{.Version}}' "$mod")" ||
		die "$name: cannot read the pinned version of $mod from $moddir/go.mod"
	if [ "$name" = oathkeeper ]; then
		cgo=0
		tags=""
		ldflags="-s -w -X $vervar=$version"
	else
		cgo=1
		tags="sqlite,sqlite_omit_load_extension,sqlite_unlock_notify,netgo,osusergo"
		ldflags="-s -w -X $vervar=$version -linkmode external -extldflags -static"
	fi

	stamp="$out/.$name.stamp"
	want="$(printf '%s\n' "name=$name" "module=$mod@$version" "go=$(go env GOVERSION)" \
		"cgo=$cgo" "tags=$tags" "ldflags=$ldflags" "trimpath=1" \
		"mod=$(cat "$moddir/go.mod" "$moddir/go.sum" | sha256sum | cut -d' ' -f1)")"
	if [ -x "$out/$name" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
		echo "build-ory: $name $version up to date"
		return 0
	fi

	echo "build-ory: building $name $version (CGO_ENABLED=$cgo${tags:+ -tags $tags})"
	start=$SECONDS
	tmp="$out/.$name.tmp.$$"
	rm -f "$tmp"
	if ! (cd "$moddir" && CGO_ENABLED=$cgo GOOS=linux \
		go build -trimpath ${tags:+-tags "$tags"} -ldflags "$ldflags" -o "$tmp" "$pkg"); then
		rm -f "$tmp"
		die "FAILED to build $name $version (module $moddir)"
	fi
	check_static "$tmp" "$name" || { rm -f "$tmp"; die "FAILED: $name is not statically linked"; }
	mv -f "$tmp" "$out/$name"
	printf '%s\n' "$want" >"$stamp"
	echo "build-ory: built $name $version in $((SECONDS - start))s, $(du -h "$out/$name" | cut -f1), static"
}

names=("$@")
[ "${#names[@]}" -gt 0 ] || names=(hydra kratos oathkeeper)
for n in "${names[@]}"; do
	pkg_of "$n" >/dev/null || die "unknown binary '$n' (want hydra, kratos or oathkeeper)"
done
mkdir -p "$out"
for n in "${names[@]}"; do
	build_one "$n"
done
