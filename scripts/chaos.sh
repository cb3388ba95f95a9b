#!/usr/bin/env bash
# The chaos suite (tests/tests/chaos_*.rs, docs/reliability.md) at a chosen size.
#
#   scripts/chaos.sh [--clients N] [--rate SENDS_PER_S] [--only NAME]... [--include-ignored]
#
# Each scenario starts local mode (real processes), breaks something under load (Redis, the
# broker, the ring authority, a proxy, a node), and prints one figures line:
#   chaos <scenario>: clients N, acknowledged A, promised P, delivered D, lost L (silently S),
#   duplicated X, reordered R, wrong-user W, refused-503 F, failed E, unrecovered-users U,
#   longest recovery T s
# and asserts what the contract promises. The lines are collected at the end.
#
# Defaults: 1,000 clients (what CI runs through `cargo test`), 300 sends/s, every scenario
# that is not #[ignore]d. `--clients 10000` is the large run; it raises the open-file limit
# (each client holds a socket here and two in the proxies). Needs the shared Redis and
# RabbitMQ of scripts/test.sh (WSCLUSTER_TEST_*), redis-server and rabbitmq-server binaries;
# the Redis and RabbitMQ a scenario kills are its own, on private ports.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
CLIENTS=1000
RATE=300
ONLY=()
IGNORED=()
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) CLIENTS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --only) ONLY+=("$2"); shift 2 ;;
    --include-ignored) IGNORED=(--include-ignored); shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$CLIENTS" in ''|*[!0-9]*) echo "--clients needs a number" >&2; exit 2 ;; esac
case "$RATE" in ''|*[!0-9]*) echo "--rate needs a number" >&2; exit 2 ;; esac

export WSCLUSTER_TEST_REDIS_URL=${WSCLUSTER_TEST_REDIS_URL:-redis://127.0.0.1:6379}
export WSCLUSTER_TEST_AMQP_URL=${WSCLUSTER_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export WSCLUSTER_CHAOS_CLIENTS=$CLIENTS
export WSCLUSTER_CHAOS_RATE=$RATE
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

# Sockets: CLIENTS here, and in every proxy and node; leave room.
WANT=$((CLIENTS * 2 + 4096))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$WANT" ]; then
  ulimit -n "$WANT" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
echo "clients $CLIENTS, rate $RATE sends/s, open files $(ulimit -n)"

cargo build -p wscluster-operator --bin wscluster-operator
export WSCLUSTER_OPERATOR_BIN=${WSCLUSTER_OPERATOR_BIN:-$ROOT/target/debug/wscluster-operator}

if [ ${#ONLY[@]} -eq 0 ]; then
  for f in tests/tests/chaos_*.rs; do ONLY+=("$(basename "$f" .rs)"); done
fi
LOG=$(mktemp /tmp/wscluster-chaos-XXXXXX.log)
status=0
for name in "${ONLY[@]}"; do
  name=${name#chaos_}
  echo "==> chaos_$name"
  if ! cargo test -p wscluster-tests --test "chaos_$name" -- --nocapture --test-threads 1 \
      ${IGNORED[@]+"${IGNORED[@]}"} 2>&1 | tee -a "$LOG"; then
    status=1
  fi
done
echo
echo "==> figures (clients $CLIENTS, rate $RATE; log $LOG)"
grep -o 'chaos [^ ]*: .*' "$LOG" || echo "no scenario printed figures"
exit $status
