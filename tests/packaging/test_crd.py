"""The WsCluster CRD: what the operator prints, a structural schema the apiserver accepts,
and the examples users copy validated against it."""

from __future__ import annotations

import copy
import json
import re
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


def test_every_default_in_the_crd_is_valid_for_its_field(crd: dict[str, Any]) -> None:
    for version in crd["spec"]["versions"]:
        assert lib.default_problems(version["schema"]["openAPIV3Schema"]) == []


def test_a_default_that_breaks_its_own_field_is_caught() -> None:
    schema = {"type": "object", "properties": {"replicas": {"type": "integer", "minimum": 0, "default": -1}}}
    assert lib.default_problems(schema) == ["<root>.replicas: default: -1 is less than the minimum of 0"]


def test_printer_columns_and_scale_paths_name_real_fields(crd: dict[str, Any]) -> None:
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        paths = [c["jsonPath"] for c in version.get("additionalPrinterColumns", []) if not c["jsonPath"].startswith(".metadata")]
        scale = version.get("subresources", {}).get("scale", {})
        paths += [scale[k] for k in ("specReplicasPath", "statusReplicasPath", "labelSelectorPath") if k in scale]
        missing = [p for p in paths if not lib.json_path_exists(schema, p)]
        assert missing == [], f"{version['name']}: no such field for {missing}"


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


#: Fields of Kubernetes' own types (ResourceRequirements, EnvVar, the pod template's Affinity,
#: Volume, ...) the example need not enumerate.
FOREIGN_FIELDS = (
    "resources",
    "env",
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
    "imagePullSecrets",
    "envFrom",
    "volumes",
    "volumeMounts",
)


def schema_fields(node: dict[str, Any], prefix: str = "") -> list[tuple[str, tuple[str, str]]]:
    """Every property path the CRD's spec declares, each with a key that identifies the field
    by its type: (the declaring object's properties, field name). Two paths of the same type
    (spec.redis.url and spec.rabbitmq.url) share a key, so an example that must choose one
    alternative per object (url or secretRef) can still show every field once."""
    props = node.get("properties") or {}
    owner = json.dumps(props, sort_keys=True)
    found = []
    for name, child in props.items():
        path = f"{prefix}.{name}" if prefix else name
        found.append((path, (owner, name)))
        if name in FOREIGN_FIELDS:
            continue
        target = child.get("items", child) if child.get("type") == "array" else child
        found += schema_fields(target, path)
    return found


def covered_fields(node: dict[str, Any], value: Any) -> set[tuple[str, str]]:
    """The field keys (see schema_fields) an example value sets."""
    keys: set[tuple[str, str]] = set()
    if isinstance(value, dict):
        props = node.get("properties") or {}
        owner = json.dumps(props, sort_keys=True)
        for name, child_value in value.items():
            if name in props:
                keys.add((owner, name))
                if name not in FOREIGN_FIELDS:
                    keys |= covered_fields(props[name], child_value)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            keys |= covered_fields(node["items"], item)
    return keys


def test_the_full_example_sets_every_field_of_the_spec(crd: dict[str, Any]) -> None:
    spec_schema = lib.crd_version_schema(crd, "wscluster.io/v1alpha1")["properties"]["spec"]
    full = lib.load_yaml_objects(lib.EXAMPLES_DIR / "wscluster-full.yaml")[0]
    shown = covered_fields(spec_schema, full["spec"])
    missing = [path for path, key in schema_fields(spec_schema) if key not in shown]
    assert missing == [], f"deploy/examples/wscluster-full.yaml does not show: {missing}"


def test_an_invalid_wscluster_is_rejected_with_a_readable_message_per_mistake(crd: dict[str, Any]) -> None:
    bad = lib.load_yaml_objects(DATA / "invalid-wscluster.yaml")[0]
    problems = lib.custom_resource_problems(crd, bad)
    expected = [
        "spec.keySources.0: Additional properties are not allowed ('form' was unexpected)",
        "spec.proxy.limits: Additional properties are not allowed ('maxConection' was unexpected)",
        r"spec.proxy.limits.maxHeaderBytes: 100 is less than the minimum of 8192(\.0)?",
        "spec.proxy.serviceType: 'Ingress' is not one of ['ClusterIP', 'NodePort', 'LoadBalancer']",
        r"spec.replicas: -1 is less than the minimum of 0(\.0)?",  # schemars writes 0.0
        r"spec.resets.ratePerSecond: 0 is less than the minimum of 1(\.0)?",
        "spec.ring: Additional properties are not allowed ('slot' was unexpected)",
    ]
    assert len(problems) == len(expected), problems
    for problem, pattern in zip(problems, expected):
        assert problem == pattern or re.fullmatch(pattern, problem), problems


def test_a_wscluster_of_another_kind_or_version_is_rejected(crd: dict[str, Any]) -> None:
    good = lib.load_yaml_objects(lib.EXAMPLES_DIR / "wscluster.yaml")[0]
    wrong_version = copy.deepcopy(good)
    wrong_version["apiVersion"] = "wscluster.io/v1"
    assert lib.custom_resource_problems(crd, wrong_version) == ["apiVersion: the CRD has no version 'v1'"]
    bad_name = copy.deepcopy(good)
    bad_name["metadata"]["name"] = "Chat_1"
    assert lib.custom_resource_problems(crd, bad_name) == ["metadata.name: 'Chat_1' is not a DNS label"]


def test_a_wscluster_breaking_the_crds_cel_rules_is_rejected_with_each_rules_message(crd: dict[str, Any]) -> None:
    bad = lib.load_yaml_objects(DATA / "invalid-wscluster-rules.yaml")[0]
    problems = lib.custom_resource_problems(crd, bad)
    assert sorted(problems) == sorted([
        "spec: redis.url must start with redis:// or rediss://",
        "spec.proxy: nodePort needs serviceType NodePort or LoadBalancer",
        "spec.keySources.0: path must start with / and contain {key} exactly once, as a whole segment",
        "spec.keySources.1: path must start with / and contain {key} exactly once, as a whole segment",
        "spec.keySources.2: a keySource sets exactly one of path, query, header, cookie, jwt",
        "spec.rabbitmq: set exactly one of url or secretRef",
        "spec.redis: caSecretRef needs a TLS url (rediss:// or amqps://)",
        "spec.proxy: loadBalancerSourceRanges needs serviceType LoadBalancer",
        "spec.proxy: externalTrafficPolicy needs serviceType NodePort or LoadBalancer",
        "spec.proxy: two ipFamilies must differ and need ipFamilyPolicy PreferDualStack or RequireDualStack",
        "spec.proxy: tls.port must differ from servicePort",
        "spec.proxy.pod: pod.labels must not set an app.kubernetes.io label the operator sets (name, instance, component, part-of, managed-by)",
        "spec.proxy.pod: pod.annotations must not set wscluster.io/config-hash",
        "spec.proxy.pod: pod.volumes must not use a volume name the operator uses (ring-token, proxy-secret, api-keys, config, jwt-key, tls, tls-sni, redis-ca, amqp-ca, ring)",
        "spec.proxy.pod: pod.volumeMounts must not mount inside /etc/wscluster or /var/run/wscluster",
        "spec.node.pod: every pod.volumeMounts[].name must name an entry of pod.volumes",
    ])


def test_cel_rules_see_schema_defaults_like_the_apiserver(crd: dict[str, Any]) -> None:
    good = lib.load_yaml_objects(lib.EXAMPLES_DIR / "wscluster.yaml")[0]
    with_node_port = copy.deepcopy(good)
    with_node_port["spec"]["proxy"] = {"serviceType": "NodePort", "nodePort": 30080}
    assert lib.custom_resource_problems(crd, with_node_port) == []
    defaulted = copy.deepcopy(with_node_port)
    del defaulted["spec"]["proxy"]["serviceType"]  # the default, ClusterIP, has no node port
    assert lib.custom_resource_problems(crd, defaulted) == ["spec.proxy: nodePort needs serviceType NodePort or LoadBalancer"]


def test_every_cel_rule_of_the_crd_compiles() -> None:
    import celpy

    crd_doc = lib.load_yaml_objects(lib.CRD_SOURCE)[0]
    rules: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            rules.extend(r["rule"] for r in node.get("x-kubernetes-validations") or [])
            for child in node.values():
                collect(child)
        elif isinstance(node, list):
            for child in node:
                collect(child)

    collect(crd_doc)
    assert rules, "the CRD has no CEL rules to check"
    for rule in rules:
        celpy.Environment().compile(rule)
