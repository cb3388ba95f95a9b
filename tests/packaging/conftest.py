"""Fixtures for the packaging checks: the chart loaded once through Helm's Go library,
its renders, the CRD, and the operator binary (whose absence fails loudly, never skips)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import packaging_lib as lib


@pytest.fixture(scope="session")
def chart() -> Any:
    loaded = lib.load_chart()
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def default_render(chart: Any) -> dict[str, str]:
    return lib.render(chart)


@pytest.fixture(scope="session")
def all_on_render(chart: Any) -> dict[str, str]:
    return lib.render(chart, lib.ALL_ON_VALUES, release="demo", namespace="demo")


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    if not lib.CRD_SOURCE.is_file():
        pytest.fail(
            f"{lib.CRD_SOURCE.relative_to(lib.REPO_ROOT)} is missing: generate it with "
            "`wscluster-operator crd > crds/wscluster.yaml`"
        )
    docs = lib.load_yaml_objects(lib.CRD_SOURCE)
    assert len(docs) == 1, f"crds/wscluster.yaml should hold exactly one CRD, found {len(docs)} documents"
    return docs[0]


@pytest.fixture(scope="session")
def operator_bin() -> Path:
    """The operator binary: env WSCLUSTER_OPERATOR_BIN, else target/debug/wscluster-operator."""
    raw = os.environ.get("WSCLUSTER_OPERATOR_BIN", "target/debug/wscluster-operator")
    path = Path(raw)
    if not path.is_absolute():
        path = lib.REPO_ROOT / path
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"operator binary not found at {path}: build it with `cargo build -p wscluster-operator` "
            "and/or set WSCLUSTER_OPERATOR_BIN (the RBAC and CRD checks need it)"
        )
    return path


def run_operator(operator_bin: Path, *args: str) -> str:
    """Run a print-only operator subcommand (crd, rbac) and return its stdout."""
    done = subprocess.run(
        [str(operator_bin), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (
        f"`wscluster-operator {' '.join(args)}` exited {done.returncode}:\n{done.stderr}"
    )
    return done.stdout


def parse_yaml(text: str) -> Any:
    return yaml.safe_load(text)
