#!/usr/bin/env bash
# User-space instructions the node spends per server-API send to a connected user, in memory or
# with REDIS_URL against Redis, under valgrind's callgrind (the method of
# scripts/count-instructions.sh: counts repeat within a few per cent on the shared machine,
# where seconds do not).
#
#   scripts/bench-node/count-send.sh                 # builds release binaries first
#   SKIP_BUILD=1 KEEP=/tmp/cg scripts/bench-node/count-send.sh   # keep the profiles
#   REDIS_URL=redis://127.0.0.1:6379 SKIP_BUILD=1 scripts/bench-node/count-send.sh   # with Redis
#
# The node runs twice under callgrind with the same 10 receivers and 4 keep-alive HTTP clients,
# sending for SHORT and LONG seconds; the difference in instructions over the difference in
# sends is the cost of one send (start-up, connects and shutdown cancel out). Loopback only;
# every step bounded in time. `callgrind_annotate KEEP/cg-long.*` shows where they go.
# With REDIS_URL the node keeps its mailbox and presence there (what the node itself spends on
# Redis's behalf: keys, arguments, the client, the batching; not Redis's own CPU); the keys it
# made (prefix count-send-<pid>) are deleted on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BIN:-$CARGO_TARGET_DIR/release}
SHORT=${SHORT:-2}
LONG=${LONG:-6}
# The node command: a wscluster-node, or e.g. "/work/main/target/release/wscluster-operator node"
# to measure another build (a baseline) with the same driver.
NODE=${NODE:-$BIN/wscluster-node}
REDIS_URL=${REDIS_URL:-}
PREFIX=count-send-$$

log() { echo "[count-send $(date +%T)] $*" >&2; }

command -v valgrind >/dev/null || { log "valgrind is required (apt-get install valgrind)"; exit 1; }
if [ -z "${SKIP_BUILD:-}" ]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -q -p wscluster-node -p wscluster-tests \
    --bin wscluster-node --bin wscluster-sendload)
fi

WORK=${KEEP:-$(mktemp -d /tmp/wscluster-count-send.XXXXXX)}
mkdir -p "$WORK"
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
echo "count-send-key" >"$WORK/api-key"
STORE=(); WHERE="in memory"
if [ -n "$REDIS_URL" ]; then
  command -v redis-cli >/dev/null || { log "redis-cli is required with REDIS_URL"; exit 1; }
  STORE=(--redis-url "$REDIS_URL" --redis-prefix "$PREFIX"); WHERE="with Redis"
  flush_redis() {
    redis-cli -u "$REDIS_URL" --scan --pattern "$PREFIX*" | xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null
  }
  trap 'cleanup; flush_redis' EXIT
fi

# run TAG SECONDS: prints "instructions sends".
run() {
  local tag=$1 seconds=$2 pid addr out sends
  rm -f "$WORK/cg-$tag".*
  # shellcheck disable=SC2086 # NODE may carry a subcommand
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/cg-$tag.%p" \
    $NODE --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --id count-node \
    --api-keys-file "$WORK/api-key" "${STORE[@]}" >"$WORK/$tag.log" 2>"$WORK/$tag.err" &
  pid=$!; PIDS+=("$pid")
  addr=$(wait_announced "$WORK/$tag.log" 60)
  out=$(timeout 120 "$BIN/wscluster-sendload" --proto node --url "ws://$addr/connect/u{i}" \
    sends --api "$addr" --api-key-file "$WORK/api-key" --users 10 --clients 4 \
    --seconds "$seconds")
  sends=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sends"])')
  kill -TERM "$pid"
  timeout 60 tail --pid="$pid" -f /dev/null || { log "the node did not stop"; return 1; }
  echo "$(cat "$WORK/cg-$tag".* | awk '/^summary:/ {s += $2} END {print s + 0}') $sends"
}

read -r short_total short_sends < <(run short "$SHORT")
read -r long_total long_sends < <(run long "$LONG")
log "short: $short_total over $short_sends sends; long: $long_total over $long_sends sends"
python3 - "$short_total" "$short_sends" "$long_total" "$long_sends" "$WHERE" <<'PY'
import sys
st, ss, lt, ls = map(int, sys.argv[1:5])
print(f"user-space instructions per send ({sys.argv[5]}, connected user): {(lt - st) / max(ls - ss, 1):,.0f}")
PY
