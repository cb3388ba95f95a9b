"""Refresh the generated packaging files from their sources (run by scripts/render-deploy.sh).

- charts/wscluster/crds/wscluster.yaml  <- crds/wscluster.yaml (byte-identical copy)
- deploy/00-namespace.yaml, 01-crd.yaml, 02-operator.yaml <- the chart rendered with
  default values as release "wscluster" in namespace "wscluster-system"

Generated files in deploy/ that are no longer produced are removed; hand-written files
(deploy/examples/, deploy/README.md) are never touched. With --check nothing is written and
the exit status says whether everything is up to date.
"""

from __future__ import annotations

import argparse
import sys

import packaging_lib as lib


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args()

    if not lib.CRD_SOURCE.is_file():
        print(f"error: {lib.CRD_SOURCE} is missing; generate it with `wscluster-operator crd > crds/wscluster.yaml`", file=sys.stderr)
        return 2

    wanted = {lib.CHART_CRD: lib.CRD_SOURCE.read_text(encoding="utf-8")}
    # The chart must carry the fresh CRD before it is loaded for rendering.
    stale = [path for path, text in wanted.items() if not path.is_file() or path.read_text(encoding="utf-8") != text]
    if not args.check:
        for path in stale:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(wanted[path], encoding="utf-8")

    with lib.load_chart() as chart:
        files = {lib.DEPLOY_DIR / name: text for name, text in lib.deploy_files(chart).items()}
    for path, text in files.items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(path)
    leftovers = [
        path
        for path in lib.DEPLOY_DIR.glob("*.yaml")
        if path not in files and path.read_text(encoding="utf-8").startswith(lib.GENERATED_HEADER)
    ]

    if args.check:
        for path in stale + leftovers:
            print(f"out of date: {path.relative_to(lib.REPO_ROOT)}")
        return 1 if stale or leftovers else 0
    for path in stale:
        if path in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(files[path], encoding="utf-8")
        print(f"wrote {path.relative_to(lib.REPO_ROOT)}")
    for path in leftovers:
        path.unlink()
        print(f"removed {path.relative_to(lib.REPO_ROOT)}")
    if not stale and not leftovers:
        print("deploy/ and the chart's CRD are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
