"""Every manifest a user can apply, validated with kubernetes-validate --strict (Kubernetes'
own OpenAPI schemas, unknown fields rejected) for the oldest and newest supported versions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import packaging_lib as lib


def problems_of(objs: list[dict[str, Any]], source: str) -> list[str]:
    return [str(p) for obj in objs for p in lib.kube_validate(obj, source)]


def test_default_render_is_valid_for_every_supported_kubernetes(default_render: dict[str, str]) -> None:
    assert problems_of(lib.objects(default_render), "helm render (defaults)") == []


def test_render_with_every_optional_part_on_is_valid(all_on_render: dict[str, str]) -> None:
    assert problems_of(lib.objects(all_on_render), "helm render (all on)") == []


def test_render_with_a_watch_namespace_is_valid(chart: Any) -> None:
    rendered = lib.render(chart, {"operator": {"watchNamespace": "apps", "replicas": 2}})
    assert problems_of(lib.objects(rendered), "helm render (watchNamespace)") == []


def test_render_with_every_knob_turned_is_valid(chart: Any) -> None:
    rendered = lib.render(chart, lib.EVERY_KNOB_VALUES)
    assert problems_of(lib.objects(rendered), "helm render (every knob)") == []


def deploy_yaml_files() -> list[Path]:
    return sorted(p for p in lib.DEPLOY_DIR.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_deploy_holds_manifests() -> None:
    names = {p.relative_to(lib.DEPLOY_DIR).as_posix() for p in deploy_yaml_files()}
    assert {"00-namespace.yaml", "01-crd.yaml", "02-operator.yaml"} <= names
    assert {"examples/wscluster.yaml", "examples/wscluster-full.yaml"} <= names


@pytest.mark.parametrize("path", deploy_yaml_files(), ids=lambda p: p.relative_to(lib.DEPLOY_DIR).as_posix())
def test_every_file_in_deploy_is_valid(path: Path) -> None:
    objs = lib.load_yaml_objects(path)
    assert objs, f"{path} holds no object"
    assert problems_of(objs, str(path.relative_to(lib.REPO_ROOT))) == []


def test_an_unknown_field_is_caught_with_its_path() -> None:
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "replica": 2,
                 "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}},
    }
    problems = problems_of([bad], "inline")
    assert problems and all("spec: Additional properties are not allowed ('replica' was unexpected)" in p for p in problems), problems


def test_a_kind_without_a_schema_is_a_problem_not_a_silent_pass() -> None:
    typo = {"apiVersion": "app/v1", "kind": "Deployment", "metadata": {"name": "x"}}
    problems = problems_of([typo], "inline")
    assert problems and "Couldn't find schema for kind Deployment" in problems[0], problems


@pytest.mark.parametrize("version", lib.KUBE_VERSIONS)
def test_the_kubernetes_validate_cli_passes_deploy_strictly(version: str) -> None:
    # The same check through the command users would run, so the CLI's own reading of the
    # files (multi-document YAML, empty documents) is covered too.
    import subprocess
    import sys

    cli = Path(sys.executable).parent / "kubernetes-validate"
    files = sorted(str(p) for p in lib.DEPLOY_DIR.glob("*.yaml"))
    done = subprocess.run(
        [str(cli), "--strict", "-k", version, *files], capture_output=True, text=True, timeout=120, check=False
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert lines and all(line.startswith("INFO ") and " passed for resource " in line for line in lines), done.stdout
