"""Pod templates and rollouts as the operator renders them: the install guide's "your own server
image" walk-through is a valid WsCluster whose template reaches the pods, and every example's
proxies get a grace period longer than their drain."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import packaging_lib as lib
from conftest import run_operator

INSTALL_GUIDE = lib.REPO_ROOT / "docs" / "install.md"


def walkthrough_wscluster() -> dict[str, Any]:
    section = INSTALL_GUIDE.read_text(encoding="utf-8").split("## Your own server image", 1)[1]
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    return next(d for b in blocks for d in yaml.safe_load_all(b) if d and d.get("kind") == "WsCluster")


def render(operator_bin: Path, obj: dict[str, Any], tmp_path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    manifest = tmp_path / "wscluster.yaml"
    manifest.write_text(yaml.safe_dump(obj))
    docs = yaml.safe_load_all(run_operator(operator_bin, "render", "-f", str(manifest)))
    return {(d["kind"], d["metadata"]["name"]): d for d in docs if d}


def test_the_walkthrough_validates_against_the_crd(crd: dict[str, Any]) -> None:
    assert lib.custom_resource_problems(crd, walkthrough_wscluster()) == []


def test_the_walkthrough_template_reaches_the_node_pods(operator_bin: Path, tmp_path: Path) -> None:
    rendered = render(operator_bin, walkthrough_wscluster(), tmp_path)
    template = rendered[("StatefulSet", "chat-node")]["spec"]["template"]
    pod = template["spec"]
    container = pod["containers"][0]
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert pod["serviceAccountName"] == "chat-server"
    assert container["command"] == ["/app/server"] and container["args"] == ["--profile", "prod"]
    assert container["envFrom"] == [{"configMapRef": {"name": "chat-app-settings"}}]
    assert {"name": "scratch", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["startupProbe"]["failureThreshold"] == 30
    assert template["metadata"]["labels"]["team"] == "chat"
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "node"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    problems = [str(p) for obj in rendered.values() for p in lib.kube_validate(obj, "render (walk-through)")]
    assert problems == []


def example_clusters() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, obj)
        for path in sorted(lib.EXAMPLES_DIR.glob("*.yaml"))
        for obj in lib.load_yaml_objects(path)
        if obj.get("kind") == "WsCluster"
    ]


@pytest.mark.parametrize(("name", "obj"), example_clusters(), ids=[n for n, _ in example_clusters()])
def test_every_examples_proxies_outlive_their_drain(operator_bin: Path, tmp_path: Path, name: str, obj: dict[str, Any]) -> None:
    rendered = render(operator_bin, obj, tmp_path)
    pod = rendered[("Deployment", "chat-proxy")]["spec"]["template"]["spec"]
    drain = obj["spec"].get("drainTimeoutSeconds", 30)
    sleep = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > sleep + drain, name
    assert ("PodDisruptionBudget", "chat-proxy") in rendered
    spread = pod["topologySpreadConstraints"]
    assert all(s["whenUnsatisfiable"] in ("ScheduleAnyway", "DoNotSchedule") for s in spread)


#: The chart's sample WsCluster with every option of this round set.
SAMPLE_VALUES: dict[str, Any] = {
    "examples": {
        "wscluster": {
            "enabled": True,
            "logFormat": "text",
            "tls": {"secretName": "chat-tls", "port": 443},
            "nodePod": {
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "volumes": [{"name": "scratch", "emptyDir": {}}],
                "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
            },
            "proxyPod": {"priorityClassName": "edge", "readinessProbe": {"periodSeconds": 5}},
        }
    }
}


def test_the_charts_sample_takes_every_option_and_stays_valid(chart: Any, crd: dict[str, Any]) -> None:
    rendered = lib.render(chart, SAMPLE_VALUES)
    samples = [o for o in lib.objects(rendered) if o["kind"] == "WsCluster"]
    assert len(samples) == 1
    spec = samples[0]["spec"]
    assert spec["logFormat"] == "text"
    assert spec["proxy"]["tls"] == {"secretRef": {"name": "chat-tls"}, "port": 443}
    assert spec["node"]["pod"]["volumeMounts"] == [{"name": "scratch", "mountPath": "/tmp"}]
    assert spec["proxy"]["pod"]["priorityClassName"] == "edge"
    assert lib.custom_resource_problems(crd, samples[0]) == []
    assert [str(p) for o in lib.objects(rendered) for p in lib.kube_validate(o, "helm render (sample options)")] == []


@pytest.mark.parametrize(
    ("values", "path", "words"),
    [
        ({"examples": {"wscluster": {"tls": {"port": 0}}}}, "/examples/wscluster/tls/port", "minimum"),
        ({"examples": {"wscluster": {"tls": {"secret": "x"}}}}, "/examples/wscluster/tls", "'secret' not allowed"),
        ({"examples": {"wscluster": {"logFormat": "xml"}}}, "/examples/wscluster/logFormat", "json"),
        ({"examples": {"wscluster": {"nodePod": []}}}, "/examples/wscluster/nodePod", "object"),
    ],
)
def test_sample_values_that_break_the_schema_are_refused_naming_the_key(
    chart: Any, values: dict[str, Any], path: str, words: str
) -> None:
    lib.assert_values_refused(chart, values, path, words)
