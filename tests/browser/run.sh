#!/usr/bin/env bash
# Runs the browser tests: the local demo page, and wss:// through the proxy's TLS listener. Installs Debian's Chromium and the npm
# dependencies (playwright-core only; no browser download) when missing.
#
# Env: WSCLUSTER_OPERATOR_BIN (default $CARGO_TARGET_DIR or target/, then debug/wscluster-operator;
# local mode runs the nodes and proxies from that same executable).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium from Debian" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d node_modules/playwright-core ]; then
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent
fi
node demo.test.js
exec node wss.test.js
