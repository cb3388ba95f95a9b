"""The cert-manager example (deploy/examples/tls-certificate.yaml): the Certificate writes the
Secret the WsCluster's proxies mount, and the operator renders that mount and the wss port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

import packaging_lib as lib
from conftest import run_operator

EXAMPLE = lib.EXAMPLES_DIR / "tls-certificate.yaml"


def by_kind(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objs}


def test_the_certificate_writes_the_secret_the_wscluster_names() -> None:
    objs = by_kind(lib.load_yaml_objects(EXAMPLE))
    cert, cluster = objs["Certificate"], objs["WsCluster"]
    assert cert["apiVersion"] == "cert-manager.io/v1"
    spec = cert["spec"]
    # The fields cert-manager requires, and the ones the proxy's rotation relies on.
    assert spec["secretName"] == cluster["spec"]["proxy"]["tls"]["secretRef"]["name"]
    assert spec["dnsNames"] and spec["issuerRef"]["name"]
    assert spec["issuerRef"]["kind"] in ("Issuer", "ClusterIssuer")
    assert spec["privateKey"] == {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}
    assert cert["metadata"]["namespace"] == cluster["metadata"]["namespace"]


def test_the_operator_mounts_the_whole_tls_secret_and_opens_wss(operator_bin: Path, tmp_path: Path) -> None:
    cluster = by_kind(lib.load_yaml_objects(EXAMPLE))["WsCluster"]
    manifest = tmp_path / "wscluster.yaml"
    manifest.write_text(yaml.safe_dump(cluster))
    rendered = by_name(yaml.safe_load_all(run_operator(operator_bin, "render", "-f", str(manifest))))
    pod = rendered[("Deployment", "chat-proxy")]["spec"]["template"]["spec"]
    tls = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == "chat-tls" and "items" not in tls["secret"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "tls")
    assert mount["mountPath"] == "/etc/wscluster/tls" and "subPath" not in mount
    ports = rendered[("Service", "chat-proxy")]["spec"]["ports"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in ports] == [("ws", 80, "ws"), ("wss", 443, "wss")]


def test_no_rendered_mount_of_the_full_example_uses_sub_path(operator_bin: Path) -> None:
    docs = yaml.safe_load_all(run_operator(operator_bin, "render", "-f", str(lib.EXAMPLES_DIR / "wscluster-full.yaml")))
    for (kind, name), obj in by_name(docs).items():
        if kind not in ("Deployment", "StatefulSet"):
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            for m in container.get("volumeMounts", []):
                assert "subPath" not in m, f"{kind}/{name} mounts {m['name']} with subPath: rotation would not reach it"


def by_name(docs: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs if d}
