# Shared by the scripts that run the edge, stand-in nodes and load tools on loopback
# (benches/side-by-side.sh, deploy/pgo-build.sh): sourced, not run.
#
#   apt_install PACKAGE...            apt-get install (with sudo when not root)
#   install_missing COMMAND:PACKAGE...  install the packages whose command is missing
#   $work, cleanup                    a scratch directory; on exit every process `start`ed is
#                                     stopped and the directory removed
#   start NAME CPU COMMAND...         run in the background, its output in $work/NAME.log,
#                                     pinned to CPU (`any`: not pinned); its pid is in $started
#   stop PID                          stop one, and wait for it
#   wait_ok URL                       wait (up to 30 s) until URL answers 2xx
#   self_signed                       $work/cert.pem and $work/key.pem: ECDSA P-256, localhost
#   edge_config HTTPS HTTP ADMIN NODE_A NODE_B LEVEL ACCESS_LOG [SECTIONS]
#                                     $work/edge.toml: one worker, the listeners and two nodes
#                                     on 127.0.0.1 at those ports, $work's certificate, no
#                                     limit a load reaches; SECTIONS appended

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_missing() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi
}

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start() {
  local name=$1 cpu=$2
  shift 2
  if [ "$cpu" = any ]; then
    "$@" >"$work/$name.log" 2>&1 &
  else
    taskset -c "$cpu" "$@" >"$work/$name.log" 2>&1 &
  fi
  started=$!
  pids+=("$started")
}

stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

wait_ok() {
  for _ in $(seq 150); do
    curl -skf -o /dev/null "$1" && return 0
    sleep 0.2
  done
  echo "no answer from $1; the logs end:" >&2
  tail -n 5 "$work"/*.log >&2
  return 1
}

self_signed() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
}

edge_config() {
  cat >"$work/edge.toml" <<EOF
[server]
threads = 1
grace_period = "1s"
[listeners]
https = "127.0.0.1:$1"
http = "127.0.0.1:$2"
admin = "127.0.0.1:$3"
http_redirect = false
[tls]
cert = "$work/cert.pem"
key = "$work/key.pem"
[[nodes]]
name = "a"
address = "127.0.0.1:$4"
[[nodes]]
name = "b"
address = "127.0.0.1:$5"
[rate_limit]
requests_per_second = 10000000
burst = 10000000
auth_requests_per_minute = 10000000
connections_per_ip = 10000000
new_connections_per_second = 10000000
[timeouts]
websocket_idle = "1h"
[log]
level = "$6"
access_log = $7
EOF
  printf '%s\n' "${8:-}" >>"$work/edge.toml"
}
