#!/usr/bin/env bash
# Memory after bursts of slow clients: the edge's resident memory before, during and for a
# minute after each of $BURSTS bursts of $COUNT connections from 20 addresses that each send
# a request head announcing a 100,000-byte body, then a byte every 2 s ($HOLD seconds, or until
# the edge answers 408 at timeouts.request_body).
#
#   benches/memory-burst.sh                 # 3 bursts of 2,000 (about 5 minutes)
#   BURSTS=1 COUNT=500 benches/memory-burst.sh
#
# Prints one line per sample (`burst phase seconds rss_kib`) and a table to stdout and
# target/memory-burst.md. Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

BURSTS=${BURSTS:-3}
COUNT=${COUNT:-2000}
HOLD=${HOLD:-20}
AFTER=${AFTER:-60}

cargo build --release -q -p nakama-edge -p nakama-standin -p nakama-edge-benches --bins
BIN=$PWD/target/release
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
pids=()
cleanup() {
  # The edge first (under WRAP, the wrapper then writes its report and exits by itself).
  if [ -n "${EDGE:-}" ]; then
    kill "$EDGE" 2>/dev/null || true
    while kill -0 "$EDGE" 2>/dev/null; do sleep 0.2; done
  fi
  [ -n "${WRAP:-}" ] && wait "${pids[-1]}" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # KEEP=1 keeps the edge's log (and config) for a look afterwards.
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTPS=$(port); HTTP=$(port); ADMIN=$(port)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/key.pem" \
  -out "$work/cert.pem" -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null

"$BIN/nakama-standin" --name a --listen 127.0.0.1:0 --grpc 127.0.0.1:0 > "$work/node" &
pids+=($!)
for _ in $(seq 100); do grep -q LISTENING "$work/node" 2>/dev/null && break; sleep 0.05; done
NODE=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$work/node")

cat > "$work/edge.toml" <<EOT
[server]
upgrade_socket = "$work/upgrade.sock"
grace_period = "${GRACE:-30s}"
[listeners]
https = "127.0.0.1:$HTTPS"
http = "127.0.0.1:$HTTP"
admin = "127.0.0.1:$ADMIN"
[tls]
cert = "$work/cert.pem"
key = "$work/key.pem"
[log]
access_log = false
# The burst is the subject: limits that would turn it away are lifted.
[rate_limit]
requests_per_second = 100000
burst = 100000
connections_per_ip = 100000
new_connections_per_second = 100000
[[nodes]]
name = "a"
address = "$NODE"
EOT
# WRAP: a command to run the edge under (a profiler), e.g. WRAP="heaptrack -o /tmp/edge".
${WRAP:-} "$BIN/nakama-edge" run -c "$work/edge.toml" > "$work/edge.log" 2>&1 &
EDGE=$!
pids+=($EDGE)
for _ in $(seq 200); do curl -sf "127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break; sleep 0.05; done

# Under a wrapper, the edge is the wrapper's child.
[ -n "${WRAP:-}" ] && for _ in $(seq 100); do c=$(pgrep -P "$EDGE" -f nakama-edge | head -1); [ -n "$c" ] && EDGE=$c && break; sleep 0.1; done
rss() { awk '/^VmRSS/ {print $2}' "/proc/$EDGE/status"; }
sources=$(seq -s, -f '127.0.0.%g' 1 20)
# Warm up: some ordinary requests, so the baseline includes a working process.
for _ in $(seq 200); do curl -sk -o /dev/null --resolve "localhost:$HTTPS:127.0.0.1" \
  "https://localhost:$HTTPS/v2/rpc/whoami?http_key=defaulthttpkey"; done
baseline=$(rss)
echo "baseline 0 0 $baseline"
# MAPS=1: the edge's resident memory by mapping, before the first burst and after the last.
maps() {
  awk '/^[0-9a-f]+-[0-9a-f]+ / {name=$6; if (name=="") name="[anon " $1 "]"} /^Rss:/ {rss[name]+=$2} END {for (n in rss) if (rss[n] > 200) print rss[n], n}' \
    "/proc/$EDGE/smaps" | sort -rn | head -25
  echo "threads $(ls /proc/$EDGE/task | wc -l)"
}
[ "${MAPS:-0}" = 1 ] && { echo "-- mappings before"; maps; }
table="| burst | before (KiB) | peak (KiB) | +10 s | +30 s | +60 s | after ÷ before |\n| --- | --- | --- | --- | --- | --- | --- |"
for burst in $(seq "$BURSTS"); do
  before=$(rss)
  "$BIN/edge-load" slow-bodies --addr "127.0.0.1:$HTTPS" --count "$COUNT" --seconds "$HOLD" \
    --sources "$sources" > "$work/burst" &
  load=$!
  peak=$before
  while kill -0 "$load" 2>/dev/null; do
    now=$(rss); [ "$now" -gt "$peak" ] && peak=$now
    sleep 1
  done
  wait "$load" || true
  sed 's/^/  edge-load: /' "$work/burst"
  echo "$burst peak $HOLD $peak"
  declare -A at=([10]=- [30]=- [$AFTER]=-)
  for s in $(seq 5 5 "$AFTER"); do
    sleep 5
    at[$s]=$(rss)
    echo "$burst after $s ${at[$s]}"
  done
  last=${at[$AFTER]}
  ratio=$(python3 -c "print(f'{$last/$before:.2f}')")
  table="$table\n| $burst | $before | $peak | ${at[10]} | ${at[30]} | $last | $ratio |"
done
[ "${MAPS:-0}" = 1 ] && { echo "-- mappings after"; maps; }
mkdir -p target
printf "%b\n" "$table" | tee target/memory-burst.md
