"""The operator Deployment's command line matches the operator binary it runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import packaging_lib as lib
from conftest import run_operator


@pytest.mark.parametrize("values", [{}, {"operator": {"watchNamespace": "apps"}}], ids=["defaults", "watch-namespace"])
def test_every_flag_the_chart_passes_is_one_the_operator_accepts(chart: Any, operator_bin: Path, values: dict[str, Any]) -> None:
    deployment = next(o for o in lib.objects(lib.render(chart, values)) if o["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    subcommand, flags = args[0], [a for a in args[1:] if a.startswith("--")]
    help_text = run_operator(operator_bin, subcommand, "--help")
    accepted = set(re.findall(r"(--[a-z][a-z0-9-]*)", help_text))
    unknown = [f for f in flags if f not in accepted]
    assert unknown == [], f"`wscluster-operator {subcommand}` does not accept {unknown}"


def test_the_probed_paths_are_served_on_the_admin_port(default_render: dict[str, str], operator_bin: Path) -> None:
    help_text = run_operator(operator_bin, "run", "--help")
    container = next(o for o in lib.objects(default_render) if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] in help_text, f"{probe} path is not mentioned by `run --help`"
