#!/usr/bin/env bash
# The release binary laid out by profile (PGO): built once instrumented, run for a minute
# behind loads like benches/side-by-side.sh's (HTTP/1.1 over TCP and TLS, with and without a
# session token, HTTP/2, WebSocket echo, full TLS handshakes) in front of two stand-in nodes,
# then built again with what that run measured. The hot path's code then spans a third of
# the instruction-cache lines, and a request costs about a tenth less CPU than with `cargo
# build --release` (BENCHMARKS.md, "A build laid out by profile").
#
#   deploy/pgo-build.sh                 # 11 to 30 minutes on 2 cores; prints the binary's path
#                                       # (at once when it is built from these sources already)
#   deploy/container/build.sh           # the image from it (runs this script)
#   CARGO_TARGET_DIR=target/pgo cargo deb -p nakama-edge --no-build   # the package from it
#   benches/side-by-side.sh             # its figures beside HAProxy's and nginx's (runs this script)
#
# PGO_DIR (default target/pgo): where the builds and profiles go; the binary is
# $PGO_DIR/release/nakama-edge. LLVM_PROFDATA: the llvm-profdata to merge with; else rustup's
# llvm-tools, else the newest llvm-profdata-NN here that reads this rustc's profiles, else
# apt-get's llvm-19 (Debian 12's, which reads rustc 1.95's); wrk, h2load and openssl are
# installed with apt-get too when missing.
# Loopback only (ports 17450, 17460, 18280, 18643, 19380); every process it starts is stopped
# on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
workspace=$PWD
PGO_DIR=$(realpath -m "${PGO_DIR:-target/pgo}")
profiles=$PGO_DIR/profiles
SECONDS_EACH=${SECONDS_EACH:-10}

# The same sources (what the binary and its training are built from: tracked files, committed
# or not) and the same rustc as the last build: that binary is still the one (PGO_REBUILD=1
# builds again anyway). Outside a git checkout it always builds.
source_id() {
  local changes
  changes=$(git stash create 2>/dev/null) || return 0
  git ls-tree -r "${changes:-HEAD}" -- Cargo.toml Cargo.lock vendor proxy/Cargo.toml proxy/src \
    config certs cluster standin benches/Cargo.toml benches/src benches/harness.sh \
    deploy/pgo-build.sh | sha256sum | awk '{printf "%s ", $1}'
  echo "$(rustc -V) $SECONDS_EACH"
}
id=$(source_id)
if [ -n "$id" ] && [ "${PGO_REBUILD:-0}" != 1 ] && [ -x "$PGO_DIR/release/nakama-edge" ] &&
  [ "$(cat "$PGO_DIR/source-id" 2>/dev/null)" = "$id" ]; then
  echo "pgo-build: $PGO_DIR/release/nakama-edge is built from these sources already" >&2
  echo "$PGO_DIR/release/nakama-edge"
  exit 0
fi
rm -f "$PGO_DIR/source-id"

. benches/harness.sh
install_missing cmake:cmake wrk:wrk h2load:nghttp2-client openssl:openssl curl:curl

# llvm-profdata: one that reads the raw profiles this rustc writes. Each candidate merges the
# profile of a one-line program built here with -Cprofile-generate, so a wrong one is found in
# seconds, not after the training run (Debian's default llvm-profdata-14 cannot read rustc
# 1.95's profiles; llvm-19 can).
probe=$work/probe
mkdir -p "$probe"
printf 'fn main() {}\n' >"$probe/main.rs"
rustc -O -Cprofile-generate="$probe/raw" -o "$probe/main" "$probe/main.rs"
"$probe/main"
reads_profiles() {
  command -v "$1" >/dev/null 2>&1 &&
    "$1" merge -o "$probe/merged.profdata" "$probe"/raw/*.profraw >/dev/null 2>&1
}
candidates() {
  local host
  host=$(rustc -vV | awk '/^host:/ {print $2}')
  echo "$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
  { compgen -c llvm-profdata- || true; } | sort -u -t- -k3 -n -r
  echo llvm-profdata
}
find_profdata() {
  local candidate
  for candidate in $(candidates); do
    if reads_profiles "$candidate"; then echo "$candidate"; return; fi
  done
}
if [ -n "${LLVM_PROFDATA:-}" ]; then
  reads_profiles "$LLVM_PROFDATA" ||
    { echo "pgo-build: $LLVM_PROFDATA cannot read this rustc's profiles" >&2; exit 1; }
  profdata=$LLVM_PROFDATA
else
  profdata=$(find_profdata)
  if [ -z "$profdata" ]; then
    apt_install llvm-19
    profdata=$(find_profdata)
  fi
  [ -n "$profdata" ] || {
    echo "pgo-build: no llvm-profdata here reads the profiles of $(rustc -V) (LLVM" \
      "$(rustc -vV | awk '/^LLVM version/ {print $NF}')); rustup component add" \
      "llvm-tools, or set LLVM_PROFDATA" >&2
    exit 1
  }
fi
echo "merging with $profdata ($("$profdata" --version 2>/dev/null | awk '/LLVM version/ {print $NF}'))" >&2

# 1. The nodes and the load tools, as they are; the edge instrumented.
cargo build --release --locked -q -p nakama-standin -p nakama-edge-benches --bins
BIN=$workspace/target/release
CARGO_TARGET_DIR=$PGO_DIR/generate RUSTFLAGS="-Cprofile-generate=$profiles" \
  cargo build --release --locked -q -p nakama-edge
# The build's own scripts ran instrumented too: only the edge's run is the profile.
rm -rf "$profiles"
mkdir -p "$profiles"

# 2. The run that is measured.
self_signed
edge_config 18643 18280 19380 17450 17460 error false \
  "$(printf '[nakama]\nsession_key = "defaultencryptionkey"')"
start node-a any "$BIN/nakama-standin" --name a --listen 127.0.0.1:17450 --ping-interval 3600
start node-b any "$BIN/nakama-standin" --name b --listen 127.0.0.1:17460 --ping-interval 3600
wait_ok http://127.0.0.1:17450/healthcheck
wait_ok http://127.0.0.1:17460/healthcheck
start edge any "$PGO_DIR/generate/release/nakama-edge" run -c "$work/edge.toml"
edge=$started
wait_ok https://127.0.0.1:18643/healthcheck

# answered LOAD...: run a wrk or h2load load; every answer must be a 2xx, or the profile
# would be of an error path.
answered() {
  local out
  out=$("$@")
  if grep -qE 'Non-2xx|[1-9][0-9]* [45]xx' <<<"$out"; then
    echo "pgo-build: a training load got answers other than 2xx: $*" >&2
    grep -E 'Non-2xx|status codes' <<<"$out" >&2
    exit 1
  fi
}
token=$("$BIN/edge-load" token)
d=$SECONDS_EACH
answered wrk -t1 -c32 -d"${d}s" http://127.0.0.1:18280/healthcheck
answered wrk -t1 -c32 -d"${d}s" https://127.0.0.1:18643/healthcheck
answered wrk -t1 -c32 -d"${d}s" -H "Authorization: Bearer $token" https://127.0.0.1:18643/v2/rpc/whoami
answered h2load -c64 -m4 -t1 -D "$d" https://127.0.0.1:18643/healthcheck
printf '{"payload":"x"}' >"$work/rpc.json"
answered h2load -c16 -m4 -t1 -D "$d" -H "authorization: Bearer $token" -d "$work/rpc.json" \
  https://127.0.0.1:18643/v2/rpc/whoami
printf '{"id":"pgo-training-device"}' >"$work/login.json"
answered h2load -c8 -m1 -t1 -D "$d" -H "authorization: Basic ZGVmYXVsdGtleTo=" -d "$work/login.json" \
  https://127.0.0.1:18643/v2/account/authenticate/device
"$BIN/edge-load" handshakes --addr 127.0.0.1:18643 --seconds "$d" --concurrency 32 >/dev/null
coproc ECHO { "$BIN/edge-load" ws-echo --url wss://127.0.0.1:18643/ws --count 200 --rate 20 \
  --bytes 64 --seconds "$d"; }
echo_pid=$ECHO_PID
read -r _ <&"${ECHO[0]}"
echo >&"${ECHO[1]}"
read -r _ <&"${ECHO[0]}"
wait "$echo_pid" 2>/dev/null || true

# The profile is written as the process exits.
stop "$edge"
ls "$profiles"/*.profraw >/dev/null 2>&1 || { echo "the instrumented edge wrote no profile" >&2; exit 1; }
"$profdata" merge -o "$PGO_DIR/edge.profdata" "$profiles"/*.profraw
rm -rf "$profiles"

# 3. The binary, laid out by the profile.
CARGO_TARGET_DIR=$PGO_DIR RUSTFLAGS="-Cprofile-use=$PGO_DIR/edge.profdata" \
  cargo build --release --locked -q -p nakama-edge
rm -rf "$PGO_DIR/generate"
[ -z "$id" ] || echo "$id" >"$PGO_DIR/source-id"
echo "$PGO_DIR/release/nakama-edge"
