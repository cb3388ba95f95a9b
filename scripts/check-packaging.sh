#!/usr/bin/env bash
# Run the packaging checks: Helm lint/render of charts/wscluster, kubernetes-validate --strict
# on every rendered manifest and every file in deploy/, the CRD's structural schema and the
# examples against it, deploy/ up to date, and the chart's RBAC against `wscluster-operator rbac`.
#
#   scripts/check-packaging.sh [VENV] [pytest args...]
#
#   VENV                     Python venv with scripts/python-requirements.txt installed
#                            (arg, else $WSCLUSTER_VENV, else .venv). Nothing is installed here.
#   WSCLUSTER_OPERATOR_BIN   operator binary (default target/debug/wscluster-operator);
#                            the RBAC and CRD checks fail, never skip, when it is missing.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${WSCLUSTER_VENV:-.venv}"
if [[ $# -gt 0 && "$1" != -* ]]; then
  venv="$1"
  shift
fi
cd "$repo_root"
if [[ ! -x "$venv/bin/python" ]]; then
  echo "error: no Python venv at '$venv'; create it with:" >&2
  echo "  python3 -m venv $venv && $venv/bin/pip install -r scripts/python-requirements.txt" >&2
  exit 2
fi
export WSCLUSTER_OPERATOR_BIN="${WSCLUSTER_OPERATOR_BIN:-target/debug/wscluster-operator}"
if [[ ! -x "$WSCLUSTER_OPERATOR_BIN" ]]; then
  echo "warning: operator binary '$WSCLUSTER_OPERATOR_BIN' not found: the RBAC and CRD checks will fail" >&2
fi
# Keep Python from writing bytecode caches into the work tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest tests/packaging "$@"
