#!/usr/bin/env bash
# Measures scale 3 -> 4 across real processes at 5,000 and 10,000 clients (local mode, 2 proxies,
# real Redis and RabbitMQ): fraction reset vs the ring's prediction, time until the last moved
# client is back on its new owner, messages lost (must be 0) and duplicated, and the time from
# publishing the ring to every proxy applying it. Output: one line per run on stdout and in
# artifacts/e2e-scale.txt. Figures go to docs/local.md.
#
# Usage: scripts/e2e-scale.sh [client counts...]   (default: 5000 10000)
# Env: WSCLUSTER_OPERATOR_BIN (default target/debug; it runs the nodes and proxies too),
#      WSCLUSTER_TEST_REDIS_URL / WSCLUSTER_TEST_AMQP_URL, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(5000 10000)
# 10,000 clients hold 10,000 sockets in the test process and 10,000 in each proxy.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
mkdir -p artifacts
out=artifacts/e2e-scale.txt
: > "$out"
status=0
cargo build -q -p wscluster-tests --test scale_up
for n in "${counts[@]}"; do
  echo "== $n clients" | tee -a "$out"
  WSCLUSTER_E2E_CLIENTS="$n" cargo test -q -p wscluster-tests --test scale_up -- --nocapture \
    > "artifacts/e2e-scale-$n.log" 2>&1 || status=1
  grep -E "^clients|test result|passed|Error" "artifacts/e2e-scale-$n.log" | tee -a "$out"
done
exit "$status"
