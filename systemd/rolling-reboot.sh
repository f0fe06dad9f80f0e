#!/bin/sh
# Reboot Nakama nodes one at a time, without players noticing:
# drain, wait until the node has no request or WebSocket left, restart it, wait until the
# edge sees it healthy, undrain, next.
#
#   RESTART='ssh %s sudo systemctl restart nakama' systemd/rolling-reboot.sh nakama-1 nakama-2 nakama-3
#
# RESTART  command to restart one node; %s is the node's name (required)
# ADMIN    the edge's admin API (default 127.0.0.1:9180)
# WAIT     how long to wait for a node to empty, and then to become healthy (default 10m)
# NAKAMA_EDGE  the nakama-edge binary (default: nakama-edge on PATH)
#
# WebSockets still open on a drained node are closed by the edge (with a close frame) after
# routing.drain_timeout; their players reconnect to the other nodes at once.
set -eu
: "${RESTART:?set RESTART to the command that restarts a node (%s: its name)}"
admin="${ADMIN:-127.0.0.1:9180}"
wait="${WAIT:-10m}"
edge="${NAKAMA_EDGE:-nakama-edge}"

healthy() {
  curl -fsS "http://$admin/nodes" | tr '}' '\n' | grep "\"name\":\"$1\"" | grep -q '"health":"healthy"'
}

for node in "$@"; do
  echo "== $node: draining"
  "$edge" drain "$node" --admin "$admin" --wait --timeout "$wait"
  echo "== $node: restarting"
  # shellcheck disable=SC2059
  sh -c "$(printf "$RESTART" "$node")"
  echo "== $node: waiting until it is healthy"
  tries=0
  until healthy "$node"; do
    tries=$((tries + 1))
    if [ "$tries" -gt 6000 ]; then
      echo "== $node: not healthy; left drained" >&2
      exit 1
    fi
    sleep 0.1
  done
  "$edge" undrain "$node" --admin "$admin"
  echo "== $node: back in rotation"
done
echo "== all nodes rebooted"
