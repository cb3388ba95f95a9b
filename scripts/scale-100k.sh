#!/usr/bin/env bash
# Scale-out with every client connected, at up to 100,000 clients on one machine (issue 17 §3):
# local mode (release build) with real Redis and RabbitMQ, its own cluster id and Redis prefix,
# N nodes and P proxies, the clients spread over several `wscluster-clients hold` processes.
# For each plan: connect every client (bounded), send a round through the proxies' server API,
# scale NODES -> SCALE_TO, wait until every client sits on its new owner (bounded), send another
# round, and report the reset fraction against the ring's diff, messages lost (must be 0) and
# repeated, the time until the last moved client was back, ring publish -> every proxy applied,
# and the peak RSS (VmHWM) of the operator, every node, every proxy and every client process.
# The driver is `wscluster-clients drive` (tests/src/bin/wscluster-clients.rs).
#
# Usage: scripts/scale-100k.sh [CLIENTS:NODES:SCALE_TO:PROXIES ...]
#        (default: 20000:3:4:4 100000:6:7:12 76000:4:5:10)
# Env: WSCLUSTER_CLIENTS_PER_PROCESS (default 16000), WSCLUSTER_CONNECT_RATE (connections a
#      second over all client processes, default 2000), WSCLUSTER_PROFILE (release, or debug for
#      a quick check), WSCLUSTER_TEST_REDIS_URL / _AMQP_URL, CARGO_TARGET_DIR.
# Output: one summary line per plan on stdout and in artifacts/scale-100k.txt (with details);
# the driver's log in artifacts/scale-100k-<plan>.log. Figures go to docs/local.md.
#
# Limits (checked before anything is built; the driver checks again against the real ring):
# every process has the same open-file limit (`ulimit -Hn`, raised to it here). A proxy holds 2
# descriptors per client (client side and upstream), a node 1 per session, a client process 1
# per client, each with a reserve. One source address reaches one destination through at most
# `ip_local_port_range` ports: every proxy dials a node from 127.0.0.1, so that bounds a node's
# sessions too.
set -euo pipefail
cd "$(dirname "$0")/.."
plans=("$@")
[ ${#plans[@]} -gt 0 ] || plans=(20000:3:4:4 100000:6:7:12 76000:4:5:10)
per_process=${WSCLUSTER_CLIENTS_PER_PROCESS:-16000}
connect_rate=${WSCLUSTER_CONNECT_RATE:-2000}
ulimit -n "$(ulimit -Hn)"
limit=$(ulimit -n)
read -r port_low port_high < /proc/sys/net/ipv4/ip_local_port_range
ports=$(( port_high - port_low + 1 ))
# Reserves beside the per-client descriptors; the same as the driver's.
proxy_reserve=400 node_reserve=300 hold_reserve=200

log() { echo "$*" >&2; }
refuse() { log "refused plan $1: $2"; exit 2; }
ceil() { echo $(( ($1 + $2 - 1) / $2 )); }

# check_plan CLIENTS NODES SCALE_TO PROXIES: exits naming the limit a plan breaks.
check_plan() {
  local c=$1 n=$2 to=$3 p=$4 plan="$1:$2:$3:$4" per_proxy per_node
  [ "$c" -ge 1 ] && [ "$n" -ge 1 ] && [ "$to" -gt "$n" ] && [ "$to" -le 16 ] && [ "$p" -ge 1 ] && [ "$p" -le 16 ] \
    || refuse "$plan" "need CLIENTS >= 1, 1 <= NODES < SCALE_TO <= 16, 1 <= PROXIES <= 16"
  per_proxy=$(ceil "$c" "$p")
  [ $(( 2 * per_proxy + proxy_reserve )) -le "$limit" ] || refuse "$plan" \
    "$per_proxy clients per proxy need $(( 2 * per_proxy + proxy_reserve )) descriptors (2 each + $proxy_reserve): over the open-file limit $limit; use at least $(ceil "$c" $(( (limit - proxy_reserve) / 2 ))) proxies"
  [ "$per_proxy" -le "$ports" ] || refuse "$plan" "$per_proxy clients per proxy exceed the $ports ephemeral ports to one proxy"
  per_node=$(ceil "$c" "$n")
  [ $(( per_node + node_reserve )) -le "$limit" ] || refuse "$plan" \
    "$per_node sessions per node (of $n) need $(( per_node + node_reserve )) descriptors: over the open-file limit $limit; start with at least $(ceil "$c" $(( limit - node_reserve ))) nodes"
  [ "$per_node" -le "$ports" ] || refuse "$plan" "$per_node sessions per node exceed the $ports ephemeral ports from 127.0.0.1 to one node"
  [ $(( per_process + hold_reserve )) -le "$limit" ] || refuse "$plan" \
    "$per_process clients per client process need $(( per_process + hold_reserve )) descriptors: over the open-file limit $limit"
}

for plan in "${plans[@]}"; do
  IFS=: read -r c n to p <<< "$plan"
  [[ "$c$n$to$p" =~ ^[0-9]+$ ]] || refuse "$plan" "not CLIENTS:NODES:SCALE_TO:PROXIES"
  check_plan "$c" "$n" "$to" "$p"
done

export CARGO_INCREMENTAL=0
profile=${WSCLUSTER_PROFILE:-release}
case $profile in
  release) cargo build -q --release -p wscluster-operator --bin wscluster-operator -p wscluster-tests --bin wscluster-clients ;;
  debug) cargo build -q -p wscluster-operator --bin wscluster-operator -p wscluster-tests --bin wscluster-clients ;;
  *) log "WSCLUSTER_PROFILE must be release or debug"; exit 2 ;;
esac
target=${CARGO_TARGET_DIR:-target}/$profile
export WSCLUSTER_OPERATOR_BIN=$target/wscluster-operator

driver=
stop_driver() {
  [ -n "$driver" ] || return 0
  # SIGTERM: the driver stops local mode (which stops its nodes and proxies), deletes its Redis
  # keys and kills its client processes. Its whole session goes after 60 s regardless.
  kill -TERM "$driver" 2>/dev/null || true
  for _ in $(seq 1 600); do kill -0 "$driver" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$driver" 2>/dev/null || true
  driver=
}
trap stop_driver EXIT INT TERM

mkdir -p artifacts
out=artifacts/scale-100k.txt
: > "$out"
status=0
for plan in "${plans[@]}"; do
  IFS=: read -r c n to p <<< "$plan"
  echo "== $plan, $profile build (load average $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$out"
  # Its own session, so the trap can end every process it started.
  setsid "$target/wscluster-clients" drive --clients "$c" --nodes "$n" --scale-to "$to" \
    --proxies "$p" --per-process "$per_process" --connect-rate "$connect_rate" --out "$out" \
    > "artifacts/scale-100k-$c.summary" 2> "artifacts/scale-100k-$c.log" &
  driver=$!
  if wait "$driver"; then :; else status=1; echo "plan $plan failed: see artifacts/scale-100k-$c.log" | tee -a "$out"; tail -n 5 "artifacts/scale-100k-$c.log" >&2; fi
  driver=
  cat "artifacts/scale-100k-$c.summary"
done
exit "$status"
