"""deploy/ and the chart's CRD are generated: these tests fail when they are stale
(fix: scripts/render-deploy.sh)."""

from __future__ import annotations

from typing import Any

import packaging_lib as lib

FIX = "run scripts/render-deploy.sh to regenerate it"


def test_the_charts_crd_is_an_identical_copy_of_crds_wscluster_yaml() -> None:
    assert lib.CRD_SOURCE.is_file(), f"{lib.CRD_SOURCE} is missing"
    assert lib.CHART_CRD.is_file(), f"{lib.CHART_CRD} is missing: {FIX}"
    assert lib.CHART_CRD.read_bytes() == lib.CRD_SOURCE.read_bytes(), (
        f"charts/wscluster/crds/wscluster.yaml differs from crds/wscluster.yaml: {FIX}"
    )


def test_the_chart_ships_exactly_that_crd(chart: Any) -> None:
    crds = chart.crds
    assert [c["filename"] for c in crds] == ["wscluster/crds/wscluster.yaml"]


def test_deploy_is_rendered_from_the_current_chart(chart: Any) -> None:
    stale = []
    for name, text in lib.deploy_files(chart).items():
        path = lib.DEPLOY_DIR / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    assert stale == [], f"deploy/{', deploy/'.join(stale)} out of date: {FIX}"


def test_deploy_has_no_leftover_generated_files(chart: Any) -> None:
    wanted = set(lib.deploy_files(chart))
    generated = {
        p.name for p in lib.DEPLOY_DIR.glob("*.yaml") if p.read_text(encoding="utf-8").startswith(lib.GENERATED_HEADER)
    }
    assert generated - wanted == set(), f"no longer generated: {sorted(generated - wanted)}: {FIX}"


def test_deploy_installs_into_the_namespace_the_operator_defaults_name() -> None:
    objs = [o for p in sorted(lib.DEPLOY_DIR.glob("*.yaml")) for o in lib.load_yaml_objects(p)]
    kinds = [o["kind"] for o in objs]
    assert kinds[:2] == ["Namespace", "CustomResourceDefinition"], "kubectl applies deploy/ in name order"
    for obj in objs:
        if obj["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "wscluster-system", obj["metadata"]["name"]
    service = next(o for o in objs if o["kind"] == "Service")
    assert service["metadata"]["name"] == "wscluster-operator"


def test_plain_manifests_do_not_claim_helm_manages_them() -> None:
    for path in lib.DEPLOY_DIR.glob("*.yaml"):
        for obj in lib.load_yaml_objects(path):
            labels = obj.get("metadata", {}).get("labels") or {}
            assert "helm.sh/chart" not in labels, f"{path.name}: {obj['kind']}"
            assert labels.get("app.kubernetes.io/managed-by") in (None, "kubectl"), f"{path.name}: {obj['kind']}"


def test_the_crd_fits_client_side_apply() -> None:
    # `kubectl apply` (client-side) copies the object into the last-applied-configuration
    # annotation; all annotations together may hold 256 KiB.
    import json

    crd = lib.load_yaml_objects(lib.DEPLOY_DIR / "01-crd.yaml")[0]
    size = len(json.dumps(crd, separators=(",", ":")))
    assert size < 256 * 1024 // 2, f"the CRD is {size} bytes of JSON; keep well under 256 KiB or document --server-side"
