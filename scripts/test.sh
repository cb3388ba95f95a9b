#!/usr/bin/env bash
# The whole wscluster test suite, from a fresh Debian machine with Rust.
#
# Installs and starts what is missing (Redis, RabbitMQ, a Python virtualenv with the packaging
# tools, Chromium and Node.js for the browser test), then runs, in order: rustfmt, clippy, the
# workspace build, every Rust test (unit, property, golden, real Redis/RabbitMQ, cross-process),
# the packaging checks (real Helm and Kubernetes schemas), the JavaScript client library's tests
# and the browser test of the demo page.
# Exits non-zero on the first failure. `.ci/run` calls exactly this.
#
# Environment:
#   WSCLUSTER_TEST_REDIS_URL   Redis for tests      (default redis://127.0.0.1:6379)
#   WSCLUSTER_TEST_AMQP_URL    RabbitMQ for tests   (default amqp://guest:guest@127.0.0.1:5672/%2f)
#   WSCLUSTER_VENV             Python virtualenv    (default .venv in the repository)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
export WSCLUSTER_TEST_REDIS_URL=${WSCLUSTER_TEST_REDIS_URL:-redis://127.0.0.1:6379}
export WSCLUSTER_TEST_AMQP_URL=${WSCLUSTER_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export WSCLUSTER_VENV=${WSCLUSTER_VENV:-$ROOT/.venv}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export DEBIAN_FRONTEND=noninteractive

step() { printf '\n==> %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
APT_UPDATED=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $APT_UPDATED -eq 0 ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for $what" >&2; return 1; fi
    sleep 0.5
  done
}

step "system packages: Redis, RabbitMQ, Python venv, Chromium, Node.js, the openssl CLI (wss tests)"
apt_install redis-server rabbitmq-server python3-venv chromium openssl
command -v npm >/dev/null 2>&1 || apt_install nodejs npm

step "services: Redis and RabbitMQ"
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting redis-server"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --logfile /tmp/wscluster-redis.log
  wait_for 30 "Redis" redis-cli -h 127.0.0.1 -p 6379 ping
fi
if ! timeout 20 rabbitmqctl -q status >/dev/null 2>&1; then
  echo "starting rabbitmq-server"
  $SUDO rabbitmq-server -detached
  timeout 180 rabbitmqctl -q await_startup --timeout 170
fi
wait_for 60 "RabbitMQ on 127.0.0.1:5672" bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672'

step "Python virtualenv ($WSCLUSTER_VENV)"
if [ ! -x "$WSCLUSTER_VENV/bin/python" ]; then python3 -m venv "$WSCLUSTER_VENV"; fi
if [ -f scripts/python-requirements.txt ]; then
  "$WSCLUSTER_VENV/bin/pip" install -q --disable-pip-version-check -r scripts/python-requirements.txt
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build (binaries used by cross-process tests)"
cargo build --workspace --bins --locked
export WSCLUSTER_OPERATOR_BIN=$ROOT/target/debug/wscluster-operator

step "cargo test"
cargo test --workspace --locked

if [ -x scripts/check-packaging.sh ]; then
  step "packaging: Helm lint/render, kubernetes-validate, CRD and RBAC checks"
  scripts/check-packaging.sh
fi

step "JavaScript client library (clients/js: node --test, fake server and a real local cluster)"
# Node >= 22 has a global WebSocket; Node 20 and 21 need the flag.
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
NODE_WS_FLAG=""
if [ "$NODE_MAJOR" -lt 22 ]; then NODE_WS_FLAG="--experimental-websocket"; fi
node $NODE_WS_FLAG --test --test-timeout=180000 clients/js/test/*.test.js

if [ -x tests/browser/run.sh ]; then
  step "browser test of the local demo page (headless Chromium, Playwright)"
  tests/browser/run.sh
fi

step "all checks passed"
