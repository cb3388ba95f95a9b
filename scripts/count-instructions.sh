#!/usr/bin/env bash
# Counts the user-space instructions wscluster-proxy and NGINX spend per echoed message and per
# upgrade, under valgrind's callgrind. Unlike seconds, instruction counts repeat within a few
# per cent from run to run on the shared machine, so small changes to the proxy show up here
# when scripts/bench-proxy.sh cannot resolve them. (They still move a little with how many
# events each wake-up finds, which depends on the machine's load: compare counts taken under
# the same conditions. Kernel work, most of a proxy's CPU per message, is not counted: see
# docs/benchmarks.md.)
#
#   scripts/count-instructions.sh                # builds release binaries, both workloads
#   SKIP_BUILD=1 TARGETS=wscluster scripts/count-instructions.sh
#
# Method, the same for both proxies: each runs under callgrind twice, once with the load and
# once without (start-up and shutdown only); the difference over the messages (upgrades) the
# load tool completed is the cost per unit. Loopback only; every step bounded in time.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
TARGETS=${TARGETS:-wscluster nginx}
BASE_PORT=${BASE_PORT:-19600}
BACKEND_PORT=$((BASE_PORT + 1))
WSC_PORT=$((BASE_PORT + 101))
WSC_ADMIN=$((BASE_PORT + 102))
NGINX_PORT=$((BASE_PORT + 201))

log() { echo "[count $(date +%T)] $*" >&2; }

command -v valgrind >/dev/null || {
  log "installing valgrind from Debian"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null
}
if [[ " $TARGETS " == *" nginx "* ]] && ! command -v nginx >/dev/null; then
  log "nginx missing: run scripts/bench-proxy.sh once (it installs nginx-light), or TARGETS=wscluster"
  exit 1
fi
if [ -z "${SKIP_BUILD:-}" ]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -q -p wscluster-proxy -p wscluster-tests \
    --bin wscluster-proxy --bin wscluster-load)
fi

WORK=$(mktemp -d /tmp/wscluster-count.XXXXXX)
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
write_bench_configs "$WORK" "$BACKEND_PORT" "$NGINX_PORT" 0
# Under valgrind NGINX's worker must be able to write its profile where the master does.
sed -i '1i user root;' "$WORK/nginx/nginx.conf"
sed -i '/worker_rlimit_nofile/d' "$WORK/nginx/nginx.conf"

"$BIN/wscluster-load" --threads 1 serve --listen "127.0.0.1:$BACKEND_PORT" --seconds 3600 \
  >"$WORK/backend.log" 2>&1 &
PIDS+=("$!")

wait_port "$BACKEND_PORT"

# run TARGET WORKLOAD TAG: one run under callgrind; prints "instructions units".
run() {
  local target=$1 workload=$2 tag=$3 port pid out units=0
  rm -f "$WORK/cg-$tag".*
  case $target in
    wscluster)
      port=$WSC_PORT
      RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/cg-$tag.%p" \
        "$BIN/wscluster-proxy" --worker-threads 1 --listen "127.0.0.1:$WSC_PORT" \
        --admin-listen "127.0.0.1:$WSC_ADMIN" --cluster-id bench/echo --id count \
        --config "$WORK/proxy.yaml" --ring-file "$WORK/ring.json" >"$WORK/$tag.log" 2>&1 &
      ;;
    nginx)
      port=$NGINX_PORT
      valgrind --tool=callgrind --callgrind-out-file="$WORK/cg-$tag.%p" \
        nginx -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" \
        >"$WORK/$tag.log" 2>&1 &
      ;;
  esac
  pid=$!; PIDS+=("$pid")
  wait_port "$port" 30 # valgrind starts slowly
  local url="ws://127.0.0.1:$port/ws?userId=u{i}"
  case $workload in
    echo)
      out=$(timeout 120 "$BIN/wscluster-load" --threads 1 echo --connections 100 \
        --seconds "$SECONDS_PER_RUN" --url "$url" | tail -1)
      units=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"])') ;;
    upgrades)
      out=$(timeout 120 "$BIN/wscluster-load" --threads 1 upgrades --concurrency 4 \
        --seconds "$SECONDS_PER_RUN" --url "$url" | tail -1)
      units=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["upgrades"])') ;;
    idle) ;;
  esac
  # A graceful stop writes the profiles: SIGTERM for the proxy, SIGQUIT for NGINX's master.
  if [ "$target" = nginx ]; then kill -QUIT "$pid"; else kill -TERM "$pid"; fi
  timeout 60 tail --pid="$pid" -f /dev/null || { log "$target did not stop"; return 1; }
  local total
  total=$(cat "$WORK/cg-$tag".* | awk '/^summary:/ {s += $2} END {print s + 0}')
  echo "$total $units"
}

printf '| proxy | user-space instructions per echoed message (100 conns) | per upgrade (4 at a time) |\n'
printf '|---|---|---|\n'
for t in $TARGETS; do
  read -r idle _ < <(run "$t" idle "$t-idle")
  read -r echo_total msgs < <(run "$t" echo "$t-echo")
  read -r up_total ups < <(run "$t" upgrades "$t-upgrades")
  log "$t: idle $idle, echo $echo_total over $msgs messages, upgrades $up_total over $ups"
  python3 - "$t" "$idle" "$echo_total" "$msgs" "$up_total" "$ups" <<'PY'
import sys
t, idle, et, m, ut, u = sys.argv[1], *map(int, sys.argv[2:])
print(f"| {t} | {(et - idle) / max(m, 1):,.0f} | {(ut - idle) / max(u, 1):,.0f} |")
PY
done
