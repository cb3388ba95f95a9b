"""Every pod a user can end up running meets the Restricted Pod Security Standard.

Sources, all real: the Helm chart rendered by Helm's own Go library (defaults and every
optional part on), the plain manifests in deploy/, and the children the operator creates for
each example WsCluster, printed by `wscluster-operator render -f` from the same functions
reconcile applies. The checks follow the "restricted" profile of
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (Kubernetes 1.30+),
plus a read-only root filesystem for the wscluster binaries (operator, node, proxy), which
write nothing to disk.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

import packaging_lib as lib
from conftest import run_operator

#: Volume types the restricted profile allows.
ALLOWED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}
#: Kinds that carry a pod template, and where.
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
#: Images whose root filesystem must be read-only: ours.
OWN_IMAGE_MARKERS = ("wscluster-operator", "wscluster-node", "wscluster-proxy", "wscluster/")


def pod_specs(objs: list[dict[str, Any]], source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objs:
        kind = obj.get("kind")
        name = f"{source}: {kind}/{obj.get('metadata', {}).get('name')}"
        if kind == "Pod":
            yield name, obj["spec"]
        elif kind == "CronJob":
            yield name, obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif kind in POD_KINDS:
            yield name, obj["spec"]["template"]["spec"]


def restricted_problems(pod: dict[str, Any]) -> list[str]:
    """What in a pod spec breaks the restricted profile (empty when it meets it)."""
    problems = []
    psc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{field} is set")
    for volume in pod.get("volumes") or []:
        types = set(volume) - {"name"}
        if not types <= ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']} is of type {sorted(types)}")
    if psc.get("runAsUser") == 0:
        problems.append("pod runs as uid 0")
    containers = (pod.get("initContainers") or []) + pod["containers"]
    for c in containers:
        sc = c.get("securityContext") or {}
        who = f"container {c['name']}"
        if sc.get("privileged"):
            problems.append(f"{who} is privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{who} does not set allowPrivilegeEscalation: false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{who} does not drop ALL capabilities")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{who} adds capabilities {caps['add']}")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{who} may run as root (runAsNonRoot is not true)")
        if sc.get("runAsUser") == 0:
            problems.append(f"{who} runs as uid 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{who} has seccomp profile {seccomp!r}, not RuntimeDefault")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{who} uses hostPort {port['hostPort']}")
        image = c.get("image", "")
        if any(m in image for m in OWN_IMAGE_MARKERS) and sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{who} ({image}) has a writable root filesystem")
    return problems


def operator_children(operator_bin: Path, wscluster: dict[str, Any], source: str) -> list[dict[str, Any]]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(wscluster, handle)
        path = handle.name
    try:
        out = run_operator(operator_bin, "render", "-f", path)
    finally:
        Path(path).unlink()
    objs = [doc for doc in yaml.safe_load_all(out) if doc]
    assert objs, f"`wscluster-operator render` printed nothing for {source}"
    return objs


def example_wsclusters(all_on_render: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(lib.EXAMPLES_DIR.glob("*.yaml")):
        for obj in lib.load_yaml_objects(path):
            if obj.get("kind") == "WsCluster":
                found.append((f"deploy/examples/{path.name}", obj))
    for obj in lib.objects(all_on_render):
        if obj.get("kind") == "WsCluster":
            found.append(("helm render (all on) example WsCluster", obj))
    return found


def all_pods(operator_bin: Path, default_render: dict[str, str], all_on_render: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    pods = list(pod_specs(lib.objects(default_render), "helm render (defaults)"))
    pods += pod_specs(lib.objects(all_on_render), "helm render (all on)")
    for path in sorted(lib.DEPLOY_DIR.glob("*.yaml")):
        pods += pod_specs(lib.load_yaml_objects(path), f"deploy/{path.name}")
    for source, wscluster in example_wsclusters(all_on_render):
        pods += pod_specs(operator_children(operator_bin, wscluster, source), f"operator render of {source}")
    return pods


def test_every_pod_meets_the_restricted_pod_security_standard(
    operator_bin: Path, default_render: dict[str, str], all_on_render: dict[str, str]
) -> None:
    pods = all_pods(operator_bin, default_render, all_on_render)
    names = [name for name, _ in pods]
    # Each source contributed: the operator pod (chart and deploy/), and a node StatefulSet and
    # a proxy Deployment per example WsCluster.
    assert any(n.startswith("deploy/02-operator.yaml: Deployment/") for n in names), names
    assert any(n.startswith("helm render (defaults): Deployment/") for n in names), names
    node_pods = [n for n in names if n.startswith("operator render") and "StatefulSet/" in n]
    proxy_pods = [n for n in names if n.startswith("operator render") and "Deployment/" in n]
    assert len(node_pods) >= 2 and len(proxy_pods) == len(node_pods), names
    problems = {name: restricted_problems(pod) for name, pod in pods}
    assert {name: p for name, p in problems.items() if p} == {}


def test_the_operator_render_of_every_example_is_valid_kubernetes(
    operator_bin: Path, all_on_render: dict[str, str]
) -> None:
    found = []
    for source, wscluster in example_wsclusters(all_on_render):
        for obj in operator_children(operator_bin, wscluster, source):
            found += [str(p) for p in lib.kube_validate(obj, f"operator render of {source}")]
    assert found == []


def test_operator_created_pods_mount_credentials_read_only_and_keep_admin_off_the_client_service(
    operator_bin: Path,
) -> None:
    wscluster = lib.load_yaml_objects(lib.EXAMPLES_DIR / "wscluster.yaml")[0]
    objs = {(o["kind"], o["metadata"]["name"]): o for o in operator_children(operator_bin, wscluster, "example")}
    name = wscluster["metadata"]["name"]
    client = objs[("Service", f"{name}-proxy")]
    assert [p["name"] for p in client["spec"]["ports"]] == ["ws"]
    assert objs[("Service", f"{name}-api")]["spec"]["type"] == "ClusterIP"
    for kind, child in (("StatefulSet", f"{name}-node"), ("Deployment", f"{name}-proxy")):
        container = objs[(kind, child)]["spec"]["template"]["spec"]["containers"][0]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        for path in ("/var/run/wscluster/ring", "/var/run/wscluster/proxy-secret", "/var/run/wscluster/api-keys"):
            assert mounts[path]["readOnly"] is True, (child, path)
    policy = objs[("NetworkPolicy", f"{name}-node")]
    assert policy["spec"]["policyTypes"] == ["Ingress"]


@pytest.mark.parametrize(
    "pod, problem",
    [
        ({"containers": [{"name": "c", "securityContext": {}}]}, "allowPrivilegeEscalation"),
        ({"hostNetwork": True, "containers": []}, "hostNetwork"),
        ({"volumes": [{"name": "h", "hostPath": {"path": "/"}}], "containers": []}, "hostPath"),
        (
            {
                "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "c", "image": "ghcr.io/wscluster/wscluster-node:1",
                                "securityContext": {"allowPrivilegeEscalation": False,
                                                    "capabilities": {"drop": ["ALL"]}}}],
            },
            "writable root filesystem",
        ),
    ],
)
def test_the_checker_catches_what_the_standard_forbids(pod: dict[str, Any], problem: str) -> None:
    assert any(problem in p for p in restricted_problems(pod)), restricted_problems(pod)
