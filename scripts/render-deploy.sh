#!/usr/bin/env bash
# Regenerate deploy/ (plain manifests for `kubectl apply -f deploy/`) and the chart's copy of
# the CRD from their sources: charts/wscluster and crds/wscluster.yaml.
#
#   scripts/render-deploy.sh [VENV]     # VENV: arg, else $WSCLUSTER_VENV, else .venv
#   scripts/render-deploy.sh --check    # report stale files, write nothing
#
# The venv needs scripts/python-requirements.txt (Helm itself comes embedded in the
# helm-python-sdk wheel). tests/packaging/test_deploy.py fails when deploy/ is stale.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${WSCLUSTER_VENV:-.venv}"
extra=()
for arg in "$@"; do
  case "$arg" in
    --check) extra+=("--check") ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) venv="$arg" ;;
  esac
done
cd "$repo_root"
python="$venv/bin/python"
if [[ ! -x "$python" ]]; then
  echo "error: no Python venv at '$venv' (create it: python3 -m venv $venv && $venv/bin/pip install -r scripts/python-requirements.txt)" >&2
  exit 2
fi
exec "$python" tests/packaging/render_deploy.py "${extra[@]}"
