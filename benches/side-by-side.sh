#!/usr/bin/env bash
# The side-by-side harness: nakama-edge, HAProxy and nginx in turn in front of the same two
# stand-in Nakama nodes, and a direct connection to a node (the limit), measured in one run.
#
#   benches/side-by-side.sh            # everything, 3 rounds (10 to 25 minutes here), of the
#                                      # binary that ships: the profile-guided build, made
#                                      # first by deploy/pgo-build.sh (11 to 30 minutes more)
#   EDGE_BUILD=release benches/side-by-side.sh   # the edge from `cargo build --release` instead
#   ROUNDS=1 DURATION=5 WS_COUNTS=500,1000 benches/side-by-side.sh      # a quick look
#   PROXIES="nakama-edge direct" benches/side-by-side.sh          # some of them
#   PROXIES="edge-cluster edge-shards" benches/side-by-side.sh    # routing modes, token-bearing requests
#   FIGURES=keepalive ROUNDS=5 PROXIES="nakama-edge haproxy" benches/side-by-side.sh
#                      # only the keep-alive figures (TCP, TLS, h2), about 2 minutes a round
#   EDGE_BIN=/path/to/nakama-edge benches/side-by-side.sh
#                      # the edge rows from that binary (an older build, say)
#
# Each proxy runs one worker pinned to CPU 0 (`taskset -c 0`); the load generators and the
# nodes share CPU 1. For every proxy it reports:
#   - HTTP/1.1 keep-alive requests: wrk, $CONNS connections, $DURATION seconds, over plain TCP
#     and over TLS: requests per second, p50 and p99 latency, and the proxy's CPU time per
#     request (from /proc/PID/stat, so the figure does not depend on the load core keeping up);
#   - HTTP/2 over TLS (browsers' nakama-js): h2load, $H2_CONNS connections with $H2_STREAMS
#     streams each, $DURATION seconds: requests per second and the proxy's CPU time per request;
#   - full TLS handshakes (ECDSA P-256 certificate, X25519, no resumption, `edge-load
#     handshakes`): per second, and the proxy's CPU time per handshake;
#   - WSS echo (`edge-load ws-echo`): $ECHO_SOCKETS sockets each sending a 64-byte realtime
#     message $ECHO_RATE times a second and waiting for the node's answer, $DURATION seconds:
#     round-trip p50 and p99, and the proxy's CPU time per relayed message (two per round trip:
#     one each way), counted from the first message to the last, not the sockets' opening;
#   - memory per idle proxied WebSocket over TLS (`edge-load hold-ws`): the growth of the
#     proxy's resident memory divided by the sockets, at each total in $WS_COUNTS, measured
#     first, on the freshly started proxy.
# Every proxy is measured once per round, in turn, $ROUNDS rounds; the table shows each figure's
# median over the rounds, and its ratios are of those medians. It goes to stdout and to
# target/side-by-side.md.
#
# Needs: haproxy, nginx, wrk, openssl, taskset, curl (installed with apt-get when missing), and
# the Rust toolchain. Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
H2_CONNS=${H2_CONNS:-64}
H2_STREAMS=${H2_STREAMS:-4}
# The hard limit on open files here is 20,000; the proxy holds two per proxied WebSocket.
WS_COUNTS=${WS_COUNTS:-2000,9800}
ECHO_SOCKETS=${ECHO_SOCKETS:-1000}
ECHO_RATE=${ECHO_RATE:-20}
# Which to measure, in this order.
PROXIES=${PROXIES:-"nakama-edge edge+log haproxy nginx direct"}
# Which figures: all, or keepalive (TCP and TLS keep-alive and h2 only: a quick A/B of the
# request path, with more rounds in the same time).
FIGURES=${FIGURES:-all}
case "$FIGURES" in all | keepalive) ;; *) echo "FIGURES is all or keepalive" >&2; exit 2 ;; esac
PROXY_CPU=0
LOAD_CPU=1

. benches/harness.sh
install_missing cmake:cmake haproxy:haproxy nginx:nginx wrk:wrk h2load:nghttp2-client openssl:openssl \
  taskset:util-linux curl:curl
# Debian starts the packaged services; this harness runs its own copies.
for unit in haproxy nginx; do
  systemctl stop "$unit" >/dev/null 2>&1 || true
done

# The edge measured: EDGE_BIN; else the binary that ships (deploy/pgo-build.sh's, built unless
# it is built from these sources already); else, with EDGE_BUILD=release, `cargo build --release`.
EDGE_BUILD=${EDGE_BUILD:-pgo}
case "$EDGE_BUILD" in pgo | release) ;; *) echo "EDGE_BUILD is pgo or release" >&2; exit 2 ;; esac
built=(-p nakama-standin -p nakama-edge-benches)
[ -n "${EDGE_BIN:-}" ] || [ "$EDGE_BUILD" = pgo ] || built+=(-p nakama-edge)
cargo build --release -q "${built[@]}" --bins
BIN=$PWD/target/release
if [ -n "${EDGE_BIN:-}" ]; then
  EDGE=$(realpath "$EDGE_BIN")
  edge_build="$EDGE"
elif [ "$EDGE_BUILD" = pgo ]; then
  EDGE=$(deploy/pgo-build.sh | tail -n 1)
  edge_build="the profile-guided release build (deploy/pgo-build.sh)"
else
  EDGE=$BIN/nakama-edge
  edge_build="cargo build --release (no profile)"
fi
ulimit -n "$(ulimit -Hn)"

self_signed
cat "$work/cert.pem" "$work/key.pem" >"$work/haproxy.pem"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)

results="$work/results.tsv"
: >"$results"
row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$results"; }

# keepalive NAME PID URL LABEL [HEADER]
keepalive() {
  local name=$1 pid=$2 url=$3 label=$4 header=(${5:+-H "$5"}) t0 t1 out reqs
  t0=$(ticks "$pid")
  out=$(taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${header[@]}" "$url")
  t1=$(ticks "$pid")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  row "$name" "$label req/s" "$(awk '/^Requests\/sec/ {printf "%d", $2}' <<<"$out")"
  row "$name" "$label p50" "$(awk '$1 == "50%" {print $2}' <<<"$out")"
  row "$name" "$label p99" "$(awk '$1 == "99%" {print $2}' <<<"$out")"
  row "$name" "$label CPU/request" "$(awk -v d=$((t1 - t0)) -v n="$reqs" -v hz="$HZ" \
    'BEGIN {printf "%.1f µs", d * 1e6 / hz / n}')"
  errors=$(awk '/Non-2xx|Socket errors/' <<<"$out")
  [ -z "$errors" ] || echo "$name $label: $errors" >&2
}

# h2 NAME PID URL [HEADER]: HTTP/2 requests over TLS (h2load), and the proxy's CPU time per
# request.
h2() {
  local name=$1 pid=$2 url=$3 header=(${4:+-H "$4"}) t0 t1 out reqs failed
  t0=$(ticks "$pid")
  out=$(taskset -c $LOAD_CPU h2load -c"$H2_CONNS" -m"$H2_STREAMS" -t1 -D "$DURATION" "${header[@]}" "$url")
  t1=$(ticks "$pid")
  reqs=$(awk '/^requests:/ {print $8}' <<<"$out")
  failed=$(awk '/^requests:/ {print $10}' <<<"$out")
  row "$name" "h2 req/s" "$(awk '/^finished in/ {printf "%d", $4}' <<<"$out")"
  row "$name" "h2 CPU/request" "$(awk -v d=$((t1 - t0)) -v n="$reqs" -v hz="$HZ" \
    'BEGIN {printf "%.1f µs", d * 1e6 / hz / n}')"
  [ "$failed" = 0 ] || echo "$name h2: $failed requests failed" >&2
}

# handshakes NAME PID ADDR
handshakes() {
  local name=$1 pid=$2 addr=$3 t0 t1 out
  t0=$(ticks "$pid")
  out=$(taskset -c $LOAD_CPU "$BIN/edge-load" handshakes --addr "$addr" \
    --seconds "$DURATION" --concurrency "$CONNS")
  t1=$(ticks "$pid")
  read -r _ count _ secs _ failed <<<"$out"
  row "$name" "TLS handshakes/s" "$(awk -v c="$count" -v s="$secs" 'BEGIN {printf "%d", c / s}')"
  row "$name" "CPU/handshake" "$(awk -v d=$((t1 - t0)) -v n="$count" -v hz="$HZ" \
    'BEGIN {printf "%.0f µs", d * 1e6 / hz / n}')"
  [ "$failed" = 0 ] || echo "$name: $failed handshakes failed" >&2
}

# wsecho NAME PID URL: WSS echo round trips and CPU per relayed message.
wsecho() {
  local name=$1 pid=$2 url=$3 line t0 t1 open failed trips secs p50 p99 late
  coproc ECHO { taskset -c $LOAD_CPU "$BIN/edge-load" ws-echo --url "$url" \
    --count "$ECHO_SOCKETS" --rate "$ECHO_RATE" --bytes 64 --seconds "$DURATION" \
    --sources 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4; }
  local echo_pid=$ECHO_PID
  read -r line <&"${ECHO[0]}"
  read -r _ open _ failed <<<"$line"
  t0=$(ticks "$pid")
  echo >&"${ECHO[1]}"
  read -r line <&"${ECHO[0]}"
  t1=$(ticks "$pid")
  wait "$echo_pid" 2>/dev/null || true
  read -r _ trips _ secs _ p50 _ p99 _ late <<<"$line"
  row "$name" "WSS echo round trips/s" "$(awk -v n="$trips" -v s="$secs" 'BEGIN {printf "%d", n / s}')"
  row "$name" "WSS echo p50" "${p50}ms"
  row "$name" "WSS echo p99" "${p99}ms"
  row "$name" "WSS echo CPU/message" "$(awk -v d=$((t1 - t0)) -v n="$trips" -v hz="$HZ" \
    'BEGIN {printf "%.1f µs", d * 1e6 / hz / (2 * n)}')"
  [ "$failed" = 0 ] || echo "$name: $failed of $ECHO_SOCKETS echo sockets failed to open" >&2
  [ "$late" = 0 ] || echo "$name: $late echo messages went out late (the load core is saturated?)" >&2
}

# wsmem NAME PID URL: memory per idle WebSocket at each total in WS_COUNTS.
wsmem() {
  local name=$1 pid=$2 url=$3 before after line open failed
  before=$(rss_kib "$pid")
  coproc HOLD { taskset -c $LOAD_CPU "$BIN/edge-load" hold-ws --url "$url" \
    --count "$WS_COUNTS" --sources 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4; }
  local hold_pid=$HOLD_PID
  IFS=, read -r -a totals <<<"$WS_COUNTS"
  for total in "${totals[@]}"; do
    read -r line <&"${HOLD[0]}"
    read -r _ open _ failed <<<"$line"
    # Let the sockets settle: every upgrade answered, nothing in flight.
    sleep 2
    after=$(rss_kib "$pid")
    row "$name" "memory/idle WSS at $total" "$(awk -v a="$after" -v b="$before" -v n="$open" \
      'BEGIN {printf "%.1f KiB", (a - b) / n}')"
    [ "$failed" = 0 ] || echo "$name: $failed of $total WebSockets failed to open" >&2
    echo >&"${HOLD[1]}"
  done
  exec {HOLD[1]}>&-
  wait "$hold_pid" 2>/dev/null || true
}

# measure NAME PID HTTP_PORT HTTPS_PORT: every figure of one proxy, then stop it.
measure() {
  local name=$1 pid=$2 http=$3 https=$4
  wait_ok "https://127.0.0.1:$https/healthcheck"
  # Memory first, while the process is fresh: after the other loads its allocator holds
  # freed memory that new sockets reuse unseen, and the figure would flatter every proxy.
  [ "$FIGURES" = keepalive ] || wsmem "$name" "$pid" "wss://127.0.0.1:$https/ws"
  keepalive "$name" "$pid" "http://127.0.0.1:$http/healthcheck" "TCP"
  keepalive "$name" "$pid" "https://127.0.0.1:$https/healthcheck" "TLS"
  h2 "$name" "$pid" "https://127.0.0.1:$https/healthcheck"
  if [ "$FIGURES" = all ]; then
    handshakes "$name" "$pid" "127.0.0.1:$https"
    wsecho "$name" "$pid" "wss://127.0.0.1:$https/ws"
  fi
  stop "$pid"
}

# The nodes: two for the proxies, on the load core; one alone on the proxy core for the
# direct figures. No Nakama-style pings while idle (--ping-interval), so idle means idle.
# Every listening port here is below the ephemeral range (32768 and up), where one of the
# load's or a proxy's own connections could be holding it when the next proxy starts.
start node-a $LOAD_CPU "$BIN/nakama-standin" --name a --listen 127.0.0.1:17350 --ping-interval 3600
start node-b $LOAD_CPU "$BIN/nakama-standin" --name b --listen 127.0.0.1:17360 --ping-interval 3600
wait_ok http://127.0.0.1:17350/healthcheck
wait_ok http://127.0.0.1:17360/healthcheck

wanted() { [[ " $PROXIES " == *" $1 "* ]]; }

for round in $(seq "$ROUNDS"); do
echo "round $round of $ROUNDS" >&2

# --- nakama-edge ------------------------------------------------------------------------
# edge_toml LEVEL ACCESS_LOG [SECTIONS]: the edge's config, SECTIONS appended.
edge_toml() { edge_config 18443 18080 19180 17350 17360 "$1" "$2" "${3:-}"; }

# edge NAME BINARY ACCESS_LOG FIGURES: one edge, its access log on (at info, to a file, as
# journald would take it) or off; FIGURES is "all", or "http" for the keep-alive figures only.
edge() {
local name=$1 bin=$2 access_log=$3 figures=$4 level=error
[ "$access_log" = true ] && level=info
edge_toml "$level" "$access_log"
start "$name" $PROXY_CPU "$bin" run -c "$work/edge.toml"
if [ "$figures" = all ]; then
  measure "$name" "$started" 18080 18443
else
  wait_ok "https://127.0.0.1:18443/healthcheck"
  keepalive "$name" "$started" "http://127.0.0.1:18080/healthcheck" "TCP"
  keepalive "$name" "$started" "https://127.0.0.1:18443/healthcheck" "TLS"
  h2 "$name" "$started" "https://127.0.0.1:18443/healthcheck"
  stop "$started"
fi
}
if wanted nakama-edge; then edge nakama-edge "$EDGE" false all; fi
if wanted edge+log; then edge edge+log "$EDGE" true http; fi
# Routing modes, compared on requests that carry a verified session token (with a shard var):
# cluster mode (round-robin; the token verified for the rate limits) and shard mode (the token
# verified, its var read, the request sent to its shard's node).
# edge_routing NAME MODE
edge_routing() {
local name=$1 mode=$2 token sections
token=$("$BIN/edge-load" token --var shard=s1)
sections=$(printf '[nakama]\nsession_key = "defaultencryptionkey"\n[routing]\nmode = "%s"\n' "$mode")
if [ "$mode" = shards ]; then
  sections+=$(printf '\n[[shards]]\nname = "s1"\nnode = "a"\nstandby = "b"\n[[shards]]\nname = "s2"\nnode = "b"\n')
fi
edge_toml error false "$sections"
start "$name" $PROXY_CPU "$EDGE" run -c "$work/edge.toml"
wait_ok "https://127.0.0.1:18443/healthcheck"
keepalive "$name" "$started" "http://127.0.0.1:18080/healthcheck" "TCP" "Authorization: Bearer $token"
keepalive "$name" "$started" "https://127.0.0.1:18443/healthcheck" "TLS" "Authorization: Bearer $token"
h2 "$name" "$started" "https://127.0.0.1:18443/healthcheck" "authorization: Bearer $token"
stop "$started"
}
if wanted edge-cluster; then edge_routing edge-cluster cluster; fi
if wanted edge-shards; then edge_routing edge-shards shards; fi
# EDGE_BEFORE=path/to/an/older/nakama-edge: the same figures for it, in the same rounds.
if [ -n "${EDGE_BEFORE:-}" ]; then edge edge-before "$EDGE_BEFORE" false all; fi

# --- HAProxy ----------------------------------------------------------------------------
if wanted haproxy; then
cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 9950
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  timeout tunnel 1h
frontend players
  bind 127.0.0.1:28080
  bind 127.0.0.1:28443 ssl crt $work/haproxy.pem alpn h2,http/1.1
  option forwardfor
  default_backend nodes
backend nodes
  balance roundrobin
  server a 127.0.0.1:17350
  server b 127.0.0.1:17360
EOF
start haproxy $PROXY_CPU haproxy -db -f "$work/haproxy.cfg"
measure haproxy "$started" 28080 28443
fi

# --- nginx ------------------------------------------------------------------------------
if wanted nginx; then
mkdir -p "$work/nginx/logs"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $work/nginx/nginx.pid;
error_log stderr error;
worker_rlimit_nofile 20000;
events { worker_connections 19900; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  upstream nodes {
    server 127.0.0.1:17350;
    server 127.0.0.1:17360;
    keepalive 64;
  }
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  server {
    listen 127.0.0.1:29080;
    listen 127.0.0.1:29443 ssl http2;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    location / {
      proxy_pass http://nodes;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_read_timeout 1h;
    }
  }
}
EOF
start nginx $PROXY_CPU nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e stderr
measure nginx "$started" 29080 29443
fi

# --- direct to a node (plain: Nakama nodes behind an edge do not terminate TLS) ----------
if wanted direct; then
start node-direct $PROXY_CPU "$BIN/nakama-standin" --name direct --listen 127.0.0.1:17370 \
  --ping-interval 3600
direct=$started
wait_ok http://127.0.0.1:17370/healthcheck
keepalive direct "$direct" http://127.0.0.1:17370/healthcheck "TCP"
[ "$FIGURES" = keepalive ] || wsmem direct "$direct" ws://127.0.0.1:17370/ws
stop "$direct"
fi

done

# --- the table --------------------------------------------------------------------------
{
  echo "Side-by-side, $(date -u +%Y-%m-%d), $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)),"
  echo "proxy pinned to CPU $PROXY_CPU, wrk/edge-load and nodes on CPU $LOAD_CPU; ${DURATION}s per load, $CONNS connections;"
  echo "median of $ROUNDS round(s). nakama-edge $("$EDGE" --version | awk '{print $2}'): $edge_build."
  echo "haproxy $(haproxy -v | awk 'NR==1 {print $3}'), $(nginx -v 2>&1 | awk '{print $3}'), $(wrk -v 2>&1 | awk 'NR==1 {print $1, $2}')"
  echo
  python3 - "$results" <<'PY'
import sys, collections
cols = ["nakama-edge", "edge+log", "edge-cluster", "edge-shards", "edge-before", "haproxy", "nginx", "direct"]
samples = collections.OrderedDict()
for line in open(sys.argv[1]):
    name, metric, value = line.rstrip("\n").split("\t")
    samples.setdefault(metric, {}).setdefault(name, []).append(value)
def number(v):
    try:
        return float(v.split()[0].rstrip("msuµ")) * (1000 if v.endswith("ms") else 1) \
            / (1000 if v.endswith("us") and not v.endswith("µs") else 1)
    except (ValueError, IndexError):
        return None

# wrk prints latency as 812.00us, 1.20ms or 2.00s: compare in one unit.
def latency(v):
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * scale
    return None

def median(metric, values):
    """The median sample (the lower middle one of an even count), as printed."""
    key = latency if metric.endswith(("p50", "p99")) else number
    ordered = sorted(values, key=lambda v: (key(v) is None, key(v) or 0))
    return ordered[(len(ordered) - 1) // 2]

table = collections.OrderedDict(
    (metric, {name: median(metric, vs) for name, vs in by_name.items()})
    for metric, by_name in samples.items()
)

def ratio(metric, edge, other):
    a = latency(edge) if metric.endswith(("p50", "p99")) else number(edge)
    b = latency(other) if metric.endswith(("p50", "p99")) else number(other)
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"

# Only the proxies measured, and ratios to those of them that are compared against.
measured = {name for by_name in samples.values() for name in by_name}
cols = [c for c in cols if c in measured]
others = [o for o in ("haproxy", "nginx") if o in measured]
shown = {"haproxy": "HAProxy", "nginx": "nginx"}
print("| figure | " + " | ".join(cols) + "".join(f" | edge ÷ {shown[o]}" for o in others) + " |")
print("| --- " * (len(cols) + len(others) + 1) + "|")
for metric, values in table.items():
    cells = [values.get(c, "n/a") for c in cols]
    edge = values.get("nakama-edge", "n/a")
    cells += [ratio(metric, edge, values.get(o, "n/a")) for o in others]
    print(f"| {metric} | " + " | ".join(cells) + " |")

# This machine's noise, seen in the CPU figures: each round's edge ÷ HAProxy (the two are
# measured minutes apart in the same round).
cpu = [(m, by) for m, by in samples.items()
       if "CPU/" in m and "nakama-edge" in by and "haproxy" in by]
if cpu and max(len(by["nakama-edge"]) for _, by in cpu) > 1:
    print()
    print("edge ÷ HAProxy, round by round:")
    print()
    for metric, by in cpu:
        rounds = [f"{number(a) / number(b):.2f}" for a, b in zip(by["nakama-edge"], by["haproxy"])
                  if number(a) and number(b)]
        print(f"- {metric}: " + ", ".join(rounds))
PY
} | tee target/side-by-side.md
