"""The chart grants the operator exactly the API access `wscluster-operator rbac` reports:
a test that fails both when the operator starts using something the chart does not grant
and when the chart grants something the operator no longer uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pytest

import packaging_lib as lib
from conftest import run_operator

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


def expand(rules: Iterable[dict[str, Any]]) -> set[Grant]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def chart_rules(rendered: dict[str, str]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Rules of every Role/ClusterRole, by (kind, name)."""
    return {
        (o["kind"], o["metadata"]["name"]): o.get("rules", [])
        for o in lib.objects(rendered)
        if o["kind"] in ("Role", "ClusterRole")
    }


@pytest.fixture(scope="module")
def operator_rules(operator_bin: Path) -> list[dict[str, Any]]:
    rules = json.loads(run_operator(operator_bin, "rbac"))
    assert isinstance(rules, list) and rules, "`wscluster-operator rbac` printed no rules"
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
    return rules


def describe(grants: set[Grant]) -> str:
    return ", ".join(f"{verb} {group or 'core'}/{resource}" for group, resource, verb in sorted(grants))


@pytest.mark.parametrize("values", [{}, {"operator": {"watchNamespace": "apps"}}], ids=["cluster-wide", "one-namespace"])
def test_chart_grants_exactly_what_the_operator_uses(chart: Any, operator_rules: list[dict[str, Any]], values: dict[str, Any]) -> None:
    needed = expand(operator_rules)
    granted = expand(r for rules in chart_rules(lib.render(chart, values)).values() for r in rules)
    assert not needed - granted, f"the chart does not grant: {describe(needed - granted)} (charts/wscluster/templates/rbac.yaml)"
    assert not granted - needed, f"the chart grants more than the operator uses: {describe(granted - needed)}"


def test_no_rule_uses_wildcards_or_resource_names(default_render: dict[str, str]) -> None:
    for (kind, name), rules in chart_rules(default_render).items():
        for rule in rules:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{kind}/{name}: wildcard in {field}"


def test_leader_election_leases_are_granted_only_in_the_release_namespace(default_render: dict[str, str]) -> None:
    objs = {(o["kind"], o["metadata"]["name"]): o for o in lib.objects(default_render)}
    for (kind, name), rules in chart_rules(default_render).items():
        has_leases = any("coordination.k8s.io" in r["apiGroups"] for r in rules)
        if kind == "ClusterRole":
            assert not has_leases, f"{kind}/{name} grants leases cluster-wide"
        elif has_leases:
            assert objs[(kind, name)]["metadata"]["namespace"] == lib.DEPLOY_NAMESPACE
            assert {r["resources"][0] for r in rules} == {"leases"}, f"{kind}/{name} should hold leases only"


def test_every_role_is_bound_to_the_operator_service_account(default_render: dict[str, str]) -> None:
    objs = lib.objects(default_render)
    roles = {(o["kind"], o["metadata"]["name"]) for o in objs if o["kind"] in ("Role", "ClusterRole")}
    bound = set()
    for binding in (o for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "wscluster-operator", "namespace": lib.DEPLOY_NAMESPACE}
        ]
        bound.add((binding["roleRef"]["kind"], binding["roleRef"]["name"]))
    assert roles == bound
