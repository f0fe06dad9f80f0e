#!/usr/bin/env bash
# The release binary laid out by profile (PGO): built once instrumented, run for a minute
# behind loads like benches/side-by-side.sh's (HTTP/1.1 over TCP and TLS, with and without a
# session token, HTTP/2, WebSocket echo, full TLS handshakes) in front of two stand-in nodes,
# then built again with what that run measured. The hot path's code then spans a third of
# the instruction-cache lines, and a request costs about a tenth less CPU than with `cargo
# build --release` (BENCHMARKS.md, "A build laid out by profile").
#
#   deploy/pgo-build.sh                 # about 30 minutes here; prints the binary's path
#   PGO=1 deploy/container/build.sh     # the image from it (runs this script)
#   CARGO_TARGET_DIR=target/pgo cargo deb -p nakama-edge --no-build   # the package from it
#
# PGO_DIR (default target/pgo): where the builds and profiles go; the binary is
# $PGO_DIR/release/nakama-edge. LLVM_PROFDATA: the llvm-profdata to merge with; else rustup's
# llvm-tools, else the newest llvm-profdata-NN here (Debian 12's llvm-19 reads the profiles of
# rustc 1.95), installed with apt-get when there is none, as are wrk, h2load and openssl.
# Loopback only (ports 17450, 17460, 18280, 18643, 19380); every process it starts is stopped
# on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
workspace=$PWD
PGO_DIR=$(realpath -m "${PGO_DIR:-target/pgo}")
profiles=$PGO_DIR/profiles
SECONDS_EACH=${SECONDS_EACH:-10}

. benches/harness.sh
install_missing wrk:wrk h2load:nghttp2-client openssl:openssl curl:curl

# llvm-profdata: one that reads the raw profiles this rustc writes (checked by the merge).
find_profdata() {
  if [ -n "${LLVM_PROFDATA:-}" ]; then echo "$LLVM_PROFDATA"; return; fi
  local host tools
  host=$(rustc -vV | awk '/^host:/ {print $2}')
  tools=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
  if [ -x "$tools" ]; then echo "$tools"; return; fi
  { compgen -c llvm-profdata- || true; } | sort -u -t- -k3 -n | tail -n 1
}
profdata=$(find_profdata)
if [ -z "$profdata" ]; then
  apt_install llvm-19
  profdata=llvm-profdata-19
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

token=$("$BIN/edge-load" token)
d=$SECONDS_EACH
wrk -t1 -c32 -d"${d}s" http://127.0.0.1:18280/healthcheck >/dev/null
wrk -t1 -c32 -d"${d}s" https://127.0.0.1:18643/healthcheck >/dev/null
wrk -t1 -c32 -d"${d}s" -H "Authorization: Bearer $token" https://127.0.0.1:18643/v2/rpc/whoami >/dev/null
h2load -c64 -m4 -t1 -D "$d" https://127.0.0.1:18643/healthcheck >/dev/null
printf '{"payload":"x"}' >"$work/rpc.json"
h2load -c16 -m4 -t1 -D "$d" -H "authorization: Bearer $token" -d "$work/rpc.json" \
  https://127.0.0.1:18643/v2/rpc/whoami >/dev/null
printf '{"id":"pgo-training-device"}' >"$work/login.json"
h2load -c8 -m1 -t1 -D "$d" -H "authorization: Basic ZGVmYXVsdGtleTo=" -d "$work/login.json" \
  https://127.0.0.1:18643/v2/account/authenticate/device >/dev/null
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

# 3. The binary, laid out by the profile.
CARGO_TARGET_DIR=$PGO_DIR RUSTFLAGS="-Cprofile-use=$PGO_DIR/edge.profdata" \
  cargo build --release --locked -q -p nakama-edge
rm -rf "$PGO_DIR/generate"
echo "$PGO_DIR/release/nakama-edge"
