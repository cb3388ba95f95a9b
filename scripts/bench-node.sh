#!/usr/bin/env bash
# The node's sends and memory against ws and Socket.IO (issue 17 §2), one driver for all:
# tests/src/bin/wscluster-sendload.rs speaks the node's server API
# (POST /api/v1/users/<user>/messages) to every target, and the peers in scripts/bench-node/
# expose the same endpoint. Each server runs pinned to core 0 (taskset), the driver to core 1.
#
#   scripts/bench-node.sh                          # npm ci, release build, 3 rounds, all targets
#   ROUNDS=1 SECONDS_PER_RUN=3 IDLE_COUNTS=1000 SKIP_BUILD=1 scripts/bench-node.sh
#   TARGETS="node-redis node-memory" scripts/bench-node.sh
#   NODE="/work/main/target/release/wscluster-operator node" TARGETS=node-memory scripts/bench-node.sh
#   REDIS_CORE=1 scripts/bench-node.sh             # the bench's own Redis, pinned to core 1
#
# Targets: node-redis (Redis mailbox and presence), node-memory, sio-redis (Socket.IO with the
# Redis Streams adapter and connection state recovery), sio-memory (Socket.IO, in-memory
# adapter, connection state recovery), ws. Rows, every target interleaved within each round:
#   * RSS per idle connection at each of IDLE_COUNTS (a fresh process per count and target;
#     /proc/<pid>/status before and after, after 100 warm-up connections);
#   * closed-loop sends/s, CLIENTS keep-alive HTTP clients to USERS connected users, for
#     SECONDS_PER_RUN s, with send → receipt p50/p99 from the same run, the server's CPU per
#     send and, for the Redis targets, Redis's;
#   * RECOVER messages sent while a receiver was away, recovered on reconnect.
# Redis is REDIS_URL's server, shared and not pinned (woken by the server, it mostly runs on the
# server's core); with REDIS_CORE set the script starts its own redis-server on a free loopback
# port pinned to that core instead (e.g. the driver's, so the server has its core to itself),
# used by both Redis targets and shut down on exit.
# It prints one table (the range over the rounds) and the ratios within each round. Redis keys
# it made (prefix bench-node-<pid>) are deleted on exit. Loopback only; every step bounded.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BIN:-$CARGO_TARGET_DIR/release}
PEERS=$ROOT/scripts/bench-node
ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
USERS=${USERS:-1000}
CLIENTS=${CLIENTS:-32}
RECOVER=${RECOVER:-100}
IDLE_COUNTS=${IDLE_COUNTS:-1000 9000}
TARGETS=${TARGETS:-node-redis node-memory sio-redis sio-memory ws}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
SERVER_CORE=${SERVER_CORE:-0}
DRIVER_CORE=${DRIVER_CORE:-1}
REDIS_CORE=${REDIS_CORE:-}
PREFIX=bench-node-$$
# The node command: a wscluster-node, or e.g. "/work/main/target/release/wscluster-operator node"
# to measure another build (a baseline) with the same driver.
NODE=${NODE:-$BIN/wscluster-node}

log() { echo "[bench-node $(date +%T)] $*" >&2; }

[[ $ROUNDS =~ ^[1-9][0-9]?$ ]] || { log "ROUNDS must be 1-99"; exit 2; }
[[ $SECONDS_PER_RUN =~ ^[1-9][0-9]?$ ]] || { log "SECONDS_PER_RUN must be 1-99"; exit 2; }
for t in $TARGETS; do
  case $t in node-redis|node-memory|sio-redis|sio-memory|ws) ;;
    *) log "unknown target $t"; exit 2 ;;
  esac
done
command -v node >/dev/null && command -v npm >/dev/null || { log "node and npm are required"; exit 1; }
command -v redis-cli >/dev/null || { log "redis-cli is required"; exit 1; }
for core in "$SERVER_CORE" "$DRIVER_CORE" ${REDIS_CORE:+"$REDIS_CORE"}; do
  [[ $core =~ ^[0-9]+$ ]] && [ "$core" -lt "$(nproc)" ] || { log "core $core: not a core of this machine"; exit 2; }
done

if [ -z "${SKIP_BUILD:-}" ]; then
  log "installing the peers (npm ci)"
  (cd "$PEERS" && timeout 300 npm ci --no-audit --no-fund --loglevel=error >&2)
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -q -p wscluster-node -p wscluster-tests \
    --bin wscluster-node --bin wscluster-sendload)
fi

WORK=$(mktemp -d /tmp/wscluster-bench-node.XXXXXX)
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
flush_redis() {
  [ -n "$REDIS_CORE" ] && return 0 # its own Redis: shut down with everything else
  redis-cli -u "$REDIS_URL" --scan --pattern "$PREFIX*" | xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null
}
trap 'cleanup; flush_redis; rm -rf "$WORK"' EXIT
if [ -n "$REDIS_CORE" ]; then
  command -v redis-server >/dev/null || { log "REDIS_CORE needs redis-server"; exit 1; }
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  taskset -c "$REDIS_CORE" redis-server --bind 127.0.0.1 --port "$port" --save "" \
    --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
  PIDS+=("$!")
  wait_port "$port" 10
  REDIS_URL=redis://127.0.0.1:$port
  log "own Redis at $REDIS_URL, pinned to core $REDIS_CORE"
fi
# The Redis server's process id, for its CPU time.
redis_pid() {
  redis-cli -u "$REDIS_URL" info server | tr -d '\r' | awk -F: '$1 == "process_id" {print $2}'
}
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/api-key"
echo >>"$WORK/api-key"

SERVER_PID=
SERVER_ADDR=
# start TARGET TAG: a fresh server on core $SERVER_CORE; sets SERVER_PID and SERVER_ADDR.
start() {
  local target=$1 tag=$2 out=$WORK/$2.log
  case $target in
    node-*)
      local extra=()
      [ "$target" = node-redis ] && extra=(--redis-url "$REDIS_URL" --redis-prefix "$PREFIX-$tag")
      # shellcheck disable=SC2086 # NODE may carry a subcommand
      RUST_LOG=warn taskset -c "$SERVER_CORE" $NODE --listen 127.0.0.1:0 \
        --admin-listen 127.0.0.1:0 --id bench-node --api-keys-file "$WORK/api-key" \
        "${extra[@]}" >"$out" 2>&1 &
      ;;
    sio-redis|sio-memory|ws)
      local mode=${target%-memory}
      (cd "$PEERS" && API_KEY=$(head -n 1 "$WORK/api-key") PORT=0 REDIS_URL=$REDIS_URL \
        PREFIX="$PREFIX-$tag" exec taskset -c "$SERVER_CORE" node server.js "$mode") >"$out" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  SERVER_ADDR=$(wait_announced "$out" 20)
}

stop() {
  kill "$SERVER_PID" 2>/dev/null || true
  timeout 30 tail --pid="$SERVER_PID" -f /dev/null || kill -9 "$SERVER_PID" 2>/dev/null || true
}

# drive TARGET ARGS...: the driver on core $DRIVER_CORE against $SERVER_ADDR.
drive() {
  local target=$1 proto url
  shift
  case $target in
    node-*) proto=node; url="ws://$SERVER_ADDR/connect/u{i}" ;;
    ws) proto=ws; url="ws://$SERVER_ADDR/connect/u{i}" ;;
    sio-*) proto=sio; url="ws://$SERVER_ADDR/socket.io/?EIO=4&transport=websocket&userId=u{i}" ;;
  esac
  timeout 200 taskset -c "$DRIVER_CORE" "$BIN/wscluster-sendload" --proto "$proto" --url "$url" "$@"
}

RESULTS=$WORK/results.jsonl
# row ROUND TARGET ROW JSON: one result line.
row() { echo "{\"round\":$1,\"target\":\"$2\",\"row\":\"$3\",\"result\":$4}" >>"$RESULTS"; }

for round in $(seq 1 "$ROUNDS"); do
  for target in $TARGETS; do
    for n in $IDLE_COUNTS; do
      start "$target" "$target-r$round-idle$n"
      row "$round" "$target" "idle$n" "$(drive "$target" idle --pid "$SERVER_PID" --connections "$n")"
      stop
    done
    start "$target" "$target-r$round-sends"
    api=(--api "$SERVER_ADDR" --api-key-file "$WORK/api-key")
    store=()
    case $target in *-redis) store=(--store-pid "$(redis_pid)") ;; esac
    row "$round" "$target" sends "$(drive "$target" sends "${api[@]}" --pid "$SERVER_PID" "${store[@]}" \
      --users "$USERS" --clients "$CLIENTS" --seconds "$SECONDS_PER_RUN")"
    row "$round" "$target" recover "$(drive "$target" recover "${api[@]}" --messages "$RECOVER" \
      --user $((USERS + 1)))"
    stop
    log "round $round: $target done"
  done
done

REDIS_CORE=$REDIS_CORE python3 "$PEERS/report.py" "$RESULTS" "$IDLE_COUNTS" "$USERS" "$CLIENTS" "$RECOVER"
