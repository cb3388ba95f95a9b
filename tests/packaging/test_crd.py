"""The WsCluster CRD: what the operator prints, a structural schema the apiserver accepts,
and the examples users copy validated against it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

import packaging_lib as lib
from conftest import run_operator

DATA = Path(__file__).parent / "data"


def test_checked_in_crd_is_what_the_operator_prints(operator_bin: Path, crd: dict[str, Any]) -> None:
    printed = yaml.safe_load(run_operator(operator_bin, "crd"))
    assert printed == crd, "crds/wscluster.yaml is stale: regenerate it with `wscluster-operator crd > crds/wscluster.yaml`"


def test_crd_is_a_valid_customresourcedefinition(crd: dict[str, Any]) -> None:
    assert [str(p) for p in lib.kube_validate(crd, "crds/wscluster.yaml")] == []


def test_crd_names_scale_subresource_and_short_name(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "wsclusters.wscluster.io"
    assert spec["group"] == "wscluster.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "WsCluster" and "wsc" in spec["names"]["shortNames"]
    served = [v for v in spec["versions"] if v["served"]]
    assert [v["name"] for v in served] == ["v1alpha1"] and served[0]["storage"] is True
    scale = served[0]["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.replicas"
    assert scale["statusReplicasPath"] == ".status.replicas"
    assert scale["labelSelectorPath"] == ".status.selector"
    assert "status" in served[0]["subresources"]


def test_crd_schema_is_structural(crd: dict[str, Any]) -> None:
    for version in crd["spec"]["versions"]:
        problems = lib.structural_schema_problems(version["schema"]["openAPIV3Schema"])
        assert problems == [], f"{version['name']}:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "object", "properties": {"a": {"description": "untyped"}}}, "<root>.a: no type"),
        ({"type": "object", "properties": {"a": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}}}},
         "<root>.a: 'properties' and 'additionalProperties' are mutually exclusive"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "oneOf": [{"properties": {"b": {"type": "string"}}}]},
         "<root>.oneOf[0]: property 'b' is only declared inside the junctor"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "anyOf": [{"type": "object"}]},
         "<root>.anyOf[0]: 'type' must not be set inside allOf/anyOf/oneOf/not"),
        ({"type": "object", "properties": {"a": {"$ref": "#/definitions/x"}}}, "<root>.a: '$ref' is not allowed"),
        ({"type": "object", "properties": {"a": {"type": "array"}}}, "<root>.a: an array must specify items"),
        ({"type": "object", "properties": {"metadata": {"type": "object", "properties": {"labels": {"type": "object"}}}}},
         "<root>.metadata: only restrictions on metadata.name"),
        ({"properties": {}}, "<root>: the root must have type: object"),
    ],
)
def test_structural_check_catches_each_rule_violation(schema: dict[str, Any], expected: str) -> None:
    problems = lib.structural_schema_problems(schema)
    assert any(p.startswith(expected) for p in problems), problems


def test_structural_check_allows_the_int_or_string_and_preserve_unknown_exceptions() -> None:
    schema = {
        "type": "object",
        "properties": {
            "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
            "raw": {"x-kubernetes-preserve-unknown-fields": True},
            "maybe": {"type": "string", "nullable": True},
        },
    }
    assert lib.structural_schema_problems(schema) == []


def example_files() -> list[Path]:
    return sorted(lib.EXAMPLES_DIR.glob("*.yaml"))


def example_wsclusters() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{i}", obj)
        for path in example_files()
        for i, obj in enumerate(lib.load_yaml_objects(path))
        if obj.get("kind") == "WsCluster"
    ]


def test_the_examples_include_a_minimal_and_a_full_wscluster() -> None:
    assert {name.split(":")[0] for name, _ in example_wsclusters()} >= {"wscluster.yaml", "wscluster-full.yaml"}


@pytest.mark.parametrize(("name", "obj"), example_wsclusters(), ids=[n for n, _ in example_wsclusters()])
def test_every_example_wscluster_validates_against_the_crd(crd: dict[str, Any], name: str, obj: dict[str, Any]) -> None:
    assert lib.custom_resource_problems(crd, obj) == []


def test_the_minimal_example_is_five_lines_or_so() -> None:
    lines = [line for line in (lib.EXAMPLES_DIR / "wscluster.yaml").read_text().splitlines() if line.strip()]
    assert len(lines) <= 6, lines


def test_the_charts_sample_wscluster_validates_against_the_crd(crd: dict[str, Any], all_on_render: dict[str, str]) -> None:
    samples = [o for o in lib.objects(all_on_render) if o["kind"] == "WsCluster"]
    assert len(samples) == 1
    assert lib.custom_resource_problems(crd, samples[0]) == []


def schema_paths(node: dict[str, Any], prefix: str = "") -> set[str]:
    """Every property path the CRD's spec declares, not descending into Kubernetes' own types
    (resources, env) whose fields the example need not enumerate."""
    paths = set()
    for name, child in (node.get("properties") or {}).items():
        path = f"{prefix}.{name}" if prefix else name
        paths.add(path)
        if name in ("resources", "env"):
            continue
        target = child.get("items", child) if child.get("type") == "array" else child
        paths |= schema_paths(target, path)
    return paths


def example_paths(value: Any, prefix: str = "") -> set[str]:
    paths = set()
    if isinstance(value, dict):
        for name, child in value.items():
            path = f"{prefix}.{name}" if prefix else name
            paths.add(path)
            paths |= example_paths(child, path)
    elif isinstance(value, list):
        for item in value:
            paths |= example_paths(item, prefix)
    return paths


def test_the_full_example_sets_every_field_of_the_spec(crd: dict[str, Any]) -> None:
    spec_schema = lib.crd_version_schema(crd, "wscluster.io/v1alpha1")["properties"]["spec"]
    full = lib.load_yaml_objects(lib.EXAMPLES_DIR / "wscluster-full.yaml")[0]
    missing = schema_paths(spec_schema) - example_paths(full["spec"])
    assert missing == set(), f"deploy/examples/wscluster-full.yaml does not show: {sorted(missing)}"


def test_an_invalid_wscluster_is_rejected_with_a_readable_message_per_mistake(crd: dict[str, Any]) -> None:
    bad = lib.load_yaml_objects(DATA / "invalid-wscluster.yaml")[0]
    problems = lib.custom_resource_problems(crd, bad)
    expected = [
        "spec.keySources.0: Additional properties are not allowed ('form' was unexpected)",
        "spec.proxy.serviceType: 'Ingress' is not one of ['ClusterIP', 'NodePort', 'LoadBalancer']",
        "spec.replicas: -1 is less than the minimum of 0",
        "spec.ring: Additional properties are not allowed ('slot' was unexpected)",
    ]
    assert problems == expected


def test_a_wscluster_of_another_kind_or_version_is_rejected(crd: dict[str, Any]) -> None:
    good = lib.load_yaml_objects(lib.EXAMPLES_DIR / "wscluster.yaml")[0]
    wrong_version = copy.deepcopy(good)
    wrong_version["apiVersion"] = "wscluster.io/v1"
    assert lib.custom_resource_problems(crd, wrong_version) == ["apiVersion: the CRD has no version 'v1'"]
    bad_name = copy.deepcopy(good)
    bad_name["metadata"]["name"] = "Chat_1"
    assert lib.custom_resource_problems(crd, bad_name) == ["metadata.name: 'Chat_1' is not a DNS label"]
