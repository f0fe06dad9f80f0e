#!/usr/bin/env bash
# Build the container image nakama-edge:<version> and nakama-edge:latest from the binary that
# ships, with podman or docker (whichever is installed; CONTAINER_ENGINE=docker to choose).
#
#   deploy/container/build.sh           # the profile-guided release build (deploy/pgo-build.sh:
#                                       # 11 to 30 minutes on 2 cores, at once when it is built
#                                       # from these sources already), then the image
#   PGO=0 deploy/container/build.sh     # `cargo build --release` instead: minutes, and about a
#                                       # tenth more CPU per request (BENCHMARKS.md)
#   NAKAMA_EDGE_BINARY=path deploy/container/build.sh   # an already built binary instead
#
# Nothing is pulled from a registry: the image is the binary, the libraries it links, the
# build host's CA certificates and a user, on `scratch` (see Containerfile).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
workspace=$(cd "$here/../.." && pwd)

engine=${CONTAINER_ENGINE:-}
if [ -z "$engine" ]; then
  if command -v podman >/dev/null 2>&1; then
    engine=podman
  elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    engine=docker
  else
    echo "build.sh: neither podman nor a running docker is here (apt-get install podman)" >&2
    exit 1
  fi
fi

binary=${NAKAMA_EDGE_BINARY:-}
case "${PGO:-1}" in 0 | 1) ;; *) echo "build.sh: PGO is 1 (the default) or 0" >&2; exit 2 ;; esac
if [ -z "$binary" ] && [ "${PGO:-1}" = 1 ]; then
  binary=$("$workspace/deploy/pgo-build.sh" | tail -n 1)
fi
if [ -z "$binary" ]; then
  command -v cmake >/dev/null 2>&1 ||
    { echo "build.sh: building the edge needs cmake (pingora's zlib-ng): apt-get install cmake" >&2; exit 1; }
  (cd "$workspace" && cargo build --release --locked -p nakama-edge)
  binary=${CARGO_TARGET_DIR:-$workspace/target}/release/nakama-edge
fi
[ -x "$binary" ] || { echo "build.sh: no binary at $binary" >&2; exit 1; }
version=$("$binary" --version | awk '{ print $2 }')

ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || { echo "build.sh: no CA bundle at $ca (apt-get install ca-certificates)" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$binary" "$stage/nakama-edge"
# Symbols are for profiling on the build host; the image does without them.
if command -v strip >/dev/null 2>&1; then strip "$stage/nakama-edge"; fi
# The dynamic loader and each library the binary links, at the path the binary names.
mkdir "$stage/libs"
# (A static binary has none: ldd says so and fails, which is no error here.)
{ ldd "$binary" || true; } | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
  while read -r lib; do
    cp --parents -L "$lib" "$stage/libs/"
  done
cp "$ca" "$stage/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnakama-edge:x:65532:65532:nakama-edge:/var/lib/nakama-edge:/sbin/nologin\n' >"$stage/passwd"
printf 'root:x:0:\nnakama-edge:x:65532:\n' >"$stage/group"
printf 'hosts: files dns\n' >"$stage/nsswitch.conf"
cp "$here/edge.toml" "$here/Containerfile" "$stage/"
mkdir "$stage/state"

format=()
[ "$engine" = podman ] && format=(--format docker)
"$engine" build "${format[@]}" --quiet -f "$stage/Containerfile" \
  -t "nakama-edge:$version" -t nakama-edge:latest "$stage" >/dev/null
echo "built nakama-edge:$version and nakama-edge:latest ($engine)"
