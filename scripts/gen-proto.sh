#!/usr/bin/env bash
# Regenerates the Go code for every .proto file under proto/.
#
# The generated *.pb.go and *_grpc.pb.go files are committed and sit next to
# their .proto files (paths=source_relative). Run this after editing a .proto:
#
#   scripts/gen-proto.sh
#
# protoc comes from Debian's protobuf-compiler package (installed on demand).
# The two protoc plugins are pinned as Go tools in go.mod (`go get -tool`), so
# the generator versions are exactly the ones the module records.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! command -v protoc >/dev/null 2>&1; then
	echo "gen-proto: protoc not found; installing protobuf-compiler via apt-get" >&2
	sudo=""
	if [ "$(id -u)" -ne 0 ]; then
		if command -v sudo >/dev/null 2>&1; then
			sudo="sudo"
		else
			echo "gen-proto: need root (or sudo) to apt-get install protobuf-compiler" >&2
			exit 1
		fi
	fi
	$sudo apt-get update
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y protobuf-compiler
fi

# Well-known types (google/protobuf/*.proto) ship with protobuf-compiler under
# /usr/include; add that path explicitly in case protoc was found elsewhere.
wkt_include=""
for dir in /usr/include /usr/local/include; do
	if [ -f "$dir/google/protobuf/timestamp.proto" ]; then
		wkt_include="$dir"
		break
	fi
done

# `go tool -n` builds the tool if needed and prints the cached binary's path.
# Copy both into a private directory under the names protoc expects, so a
# build-cache trim during the run cannot pull them away.
plugins="$(mktemp -d)"
trap 'rm -rf "$plugins"' EXIT
for tool in protoc-gen-go protoc-gen-go-grpc; do
	path="$(go tool -n "$tool")"
	cp "$path" "$plugins/$tool"
	chmod +x "$plugins/$tool"
done

mapfile -t protos < <(find proto -name '*.proto' | LC_ALL=C sort)
if [ "${#protos[@]}" -eq 0 ]; then
	echo "gen-proto: no .proto files under proto/" >&2
	exit 1
fi

include_args=(-I proto)
if [ -n "$wkt_include" ]; then
	include_args+=(-I "$wkt_include")
fi

# Drop stale outputs first so a removed .proto leaves nothing behind.
find proto \( -name '*.pb.go' -o -name '*_grpc.pb.go' \) -delete

# Paths are given relative to the -I proto root so paths=source_relative puts
# each output next to its .proto.
rel=()
for p in "${protos[@]}"; do
	rel+=("${p#proto/}")
done

protoc "${include_args[@]}" \
	--plugin=protoc-gen-go="$plugins/protoc-gen-go" \
	--plugin=protoc-gen-go-grpc="$plugins/protoc-gen-go-grpc" \
	--go_out=proto --go_opt=paths=source_relative \
	--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
	"${rel[@]}"

echo "gen-proto: generated $(find proto -name '*.pb.go' | wc -l) files from ${#protos[@]} protos with $(protoc --version)" >&2
