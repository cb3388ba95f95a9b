"""The Helm chart, linted and rendered by Helm's own Go library (helm-python-sdk)."""

from __future__ import annotations

from typing import Any

import pytest
from helm_python import chart as helm_chart

import packaging_lib as lib

WARNING = 2  # helm lint severities: 1 info, 2 warning, 3 error


def lint_findings(values: dict[str, Any] | None) -> list[str]:
    report = helm_chart.lint(str(lib.CHART_DIR), values, strict=True, kube_version="v1.30.0")
    findings = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= WARNING]
    return findings + list(report["errors"])


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def test_chart_passes_strict_lint_with_default_values() -> None:
    assert lint_findings(None) == []


def test_chart_passes_strict_lint_with_every_optional_part_on() -> None:
    assert lint_findings(lib.ALL_ON_VALUES) == []


def test_strict_lint_reports_values_that_break_the_schema() -> None:
    findings = lint_findings({"operator": {"replicas": -1}})
    assert any("/operator/replicas" in f and "minimum" in f for f in findings), findings


def test_default_render_installs_only_the_operator(default_render: dict[str, str]) -> None:
    kinds = sorted(o["kind"] for o in lib.objects(default_render))
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service", "Deployment"]
    )


def test_every_optional_part_renders_when_switched_on(all_on_render: dict[str, str]) -> None:
    objs = lib.objects(all_on_render)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    expected = {
        ("Deployment", "demo-wscluster-redis"),
        ("Service", "demo-wscluster-redis"),
        ("Deployment", "demo-wscluster-rabbitmq"),
        ("Service", "demo-wscluster-rabbitmq"),
        ("Secret", "demo-wscluster-rabbitmq"),
        ("WsCluster", "chat"),
        ("ServiceMonitor", "demo-wscluster-operator"),
    }
    assert expected <= names, f"missing: {expected - names}"


def test_sample_wscluster_is_wired_to_the_example_redis_and_rabbitmq(all_on_render: dict[str, str]) -> None:
    sample = one(lib.objects(all_on_render), "WsCluster")
    spec = sample["spec"]
    assert spec["replicas"] == 3
    assert spec["redis"]["url"] == "redis://demo-wscluster-redis.demo.svc:6379"
    assert spec["rabbitmq"]["secretRef"] == {"name": "demo-wscluster-rabbitmq", "key": "url"}
    secret = next(o for o in by_kind(lib.objects(all_on_render), "Secret") if o["metadata"]["name"] == "demo-wscluster-rabbitmq")
    assert secret["stringData"]["url"].startswith("amqp://wscluster:")
    assert secret["stringData"]["url"].endswith("@demo-wscluster-rabbitmq.demo.svc:5672/%2f")


def test_operator_runs_with_the_fixed_flags_and_downward_api_env(default_render: dict[str, str]) -> None:
    deployment = one(lib.objects(default_render), "Deployment")
    assert deployment["metadata"]["name"] == "wscluster-operator"
    assert deployment["spec"]["replicas"] == 1
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[0] == "run"
    flags = dict(zip(args[1::2], args[2::2]))
    assert flags["--ring-listen"] == "0.0.0.0:7400"
    assert flags["--admin-listen"] == "0.0.0.0:9090"
    assert flags["--ring-public-url"] == "http://wscluster-operator.wscluster-system.svc:7400"
    assert flags["--lease-namespace"] == "$(POD_NAMESPACE)"
    assert flags["--pod-name"] == "$(POD_NAME)"
    assert "--watch-namespace" not in flags
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"ring": 7400, "metrics": 9090}


def test_operator_pod_meets_the_restricted_pod_security_standard(default_render: dict[str, str]) -> None:
    pod = one(lib.objects(default_render), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532  # distroless "nonroot"
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsNonRoot"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["resources"]["requests"] and container["resources"]["limits"]


def test_operator_image_defaults_to_the_published_name_and_app_version(chart: Any, default_render: dict[str, str]) -> None:
    container = one(lib.objects(default_render), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/wscluster/wscluster-operator:{chart.metadata['appVersion']}"


def test_an_image_digest_takes_precedence_over_the_tag(chart: Any) -> None:
    digest = "sha256:" + "ab" * 32
    rendered = lib.render(chart, {"operator": {"image": {"tag": "9.9.9", "digest": digest}}})
    container = one(lib.objects(rendered), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/wscluster/wscluster-operator@{digest}"


def test_service_exposes_the_ring_stream_and_metrics(default_render: dict[str, str]) -> None:
    service = one(lib.objects(default_render), "Service")
    assert service["metadata"]["name"] == "wscluster-operator"
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"ring": (7400, "ring"), "metrics": (9090, "metrics")}
    deployment = one(lib.objects(default_render), "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_servicemonitor_scrapes_the_metrics_port_of_the_operator_service(all_on_render: dict[str, str]) -> None:
    objs = lib.objects(all_on_render)
    monitor = one(objs, "ServiceMonitor")
    service = next(o for o in by_kind(objs, "Service") if o["metadata"]["name"] == "demo-wscluster-operator")
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_watch_namespace_narrows_the_grant_to_a_role_in_that_namespace(chart: Any) -> None:
    objs = lib.objects(lib.render(chart, {"operator": {"watchNamespace": "apps"}}))
    assert by_kind(objs, "ClusterRole") == [] and by_kind(objs, "ClusterRoleBinding") == []
    roles = {o["metadata"]["name"]: o["metadata"]["namespace"] for o in by_kind(objs, "Role")}
    assert roles == {"wscluster-operator": "apps", "wscluster-operator-leader-election": "wscluster-system"}
    args = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--watch-namespace") + 1] == "apps"


def test_every_object_is_namespaced_to_the_release_and_labelled(all_on_render: dict[str, str]) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    for obj in lib.objects(all_on_render):
        meta = obj["metadata"]
        if obj["kind"] not in cluster_scoped:
            assert meta.get("namespace") == "demo", f"{obj['kind']}/{meta['name']} has no release namespace"
        labels = meta.get("labels") or {}
        for key in ("name", "instance", "component", "part-of", "managed-by"):
            assert f"app.kubernetes.io/{key}" in labels, f"{obj['kind']}/{meta['name']} lacks app.kubernetes.io/{key}"


def test_notes_tell_the_user_what_to_apply_next(default_render: dict[str, str], all_on_render: dict[str, str]) -> None:
    notes = default_render["wscluster/templates/NOTES.txt"]
    assert "kind: WsCluster" in notes and "kubectl apply -f -" in notes
    assert "kubectl scale wsc chat --replicas=5" in notes
    sample_notes = all_on_render["wscluster/templates/NOTES.txt"]
    assert 'A sample WsCluster "chat" was created with the example Redis and RabbitMQ' in sample_notes


@pytest.mark.parametrize(
    ("values", "path", "words"),
    [
        ({"operator": {"replicas": -1}}, "/operator/replicas", "minimum"),
        ({"examples": {"wscluster": {"replicas": -3}}}, "/examples/wscluster/replicas", "minimum"),
        ({"examples": {"wscluster": {"proxyReplicas": -1}}}, "/examples/wscluster/proxyReplicas", "minimum"),
        ({"examples": {"wscluster": {"keySources": [{"form": "userId"}]}}}, "/examples/wscluster/keySources/0", "'form' not allowed"),
        ({"examples": {"wscluster": {"keySources": [{"query": "a", "header": "b"}]}}}, "/examples/wscluster/keySources/0", "maxProperties"),
        ({"examples": {"wscluster": {"keySources": [{"path": "/connect"}]}}}, "/examples/wscluster/keySources/0/path", "does not match pattern"),
        ({"examples": {"wscluster": {"keySources": [{"jwt": {"algorithm": "none", "secretRef": {"name": "k"}}}]}}}, "/examples/wscluster/keySources/0/jwt/algorithm", "HS256"),
        ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, "/operator/image/pullPolicy", "IfNotPresent"),
        ({"operatr": {"replicas": 2}}, "at ''", "'operatr' not allowed"),
    ],
)
def test_values_that_break_the_schema_are_refused_with_a_message_naming_the_key(
    chart: Any, values: dict[str, Any], path: str, words: str
) -> None:
    lib.assert_values_refused(chart, values, path, words)


@pytest.mark.parametrize(
    "source",
    [
        {"path": "/connect/{key}"},
        {"query": "userId"},
        {"header": "X-User-Id"},
        {"cookie": "uid"},
        {"jwt": {"claim": "sub", "algorithm": "RS256", "from": "header", "secretRef": {"name": "jwt-key", "key": "key.pem"}}},
    ],
)
def test_every_documented_key_source_is_accepted(chart: Any, source: dict[str, Any]) -> None:
    chart.validate_schema({"examples": {"wscluster": {"enabled": True, "keySources": [source]}}})


def test_the_values_schema_is_a_valid_json_schema_that_the_defaults_satisfy(chart: Any) -> None:
    import jsonschema

    schema = chart.schema
    assert schema is not None, "the chart ships no values.schema.json"
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(chart.values)]
    assert errors == []


def test_a_rollout_never_waits_for_a_standby_to_become_ready(default_render: dict[str, str]) -> None:
    # Only the leader is Ready, so a rollout gated on new pods' readiness would never finish.
    strategy = one(lib.objects(default_render), "Deployment")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "100%", "maxSurge": 1}}


def test_notes_for_several_operator_replicas_explain_the_standbys(chart: Any) -> None:
    notes = lib.render(chart, {"operator": {"replicas": 3}})["wscluster/templates/NOTES.txt"]
    assert "rollout status" not in notes
    assert "One pod is Ready: the leader. The others stand by and are not Ready, by design." in notes


def test_every_knob_reaches_the_objects(chart: Any) -> None:
    objs = lib.objects(lib.render(chart, lib.EVERY_KNOB_VALUES, release="r", namespace="ops"))
    deployment = one(objs, "Deployment")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert deployment["metadata"]["name"] == "ws-operator" and deployment["spec"]["replicas"] == 2
    assert container["image"] == "registry.example.com/ws/operator:9.9.9"
    assert container["imagePullPolicy"] == "Always"
    args = container["args"]
    flags = dict(zip(args[1::2], args[2::2]))
    assert flags["--ring-listen"] == "0.0.0.0:7500" and flags["--admin-listen"] == "0.0.0.0:9100"
    assert flags["--ring-public-url"] == "http://ring.example.com:7500"
    assert flags["--watch-namespace"] == "apps" and flags["--lease-name"] == "ws-operator-leader"
    assert {"name": "WSCLUSTER_EXTRA", "value": "1"} in container["env"]
    assert {"name": "RUST_LOG", "value": "debug"} in container["env"]
    assert pod["metadata"]["labels"]["team"] == "realtime"
    assert pod["metadata"]["annotations"] == {"example.com/a": "b"}
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "ws-op"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in spec["affinity"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    service = one(objs, "Service")
    assert service["spec"]["type"] == "LoadBalancer"
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"ring": 7500, "metrics": 9100}
    assert one(objs, "ServiceAccount")["metadata"]["annotations"] == {"example.com/role": "x"}
    assert one(objs, "ServiceMonitor")["metadata"]["labels"]["release"] == "prom"


def test_an_existing_service_account_must_be_named(chart: Any) -> None:
    from helm_python import HelmRenderError

    with pytest.raises(HelmRenderError) as refused:
        lib.render(chart, {"serviceAccount": {"create": False}})
    assert "serviceAccount.name must name an existing ServiceAccount" in str(refused.value)
    objs = lib.objects(lib.render(chart, {"serviceAccount": {"create": False, "name": "mine"}}))
    assert by_kind(objs, "ServiceAccount") == []
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


KEY_SOURCE_SAMPLES = [
    [{"path": "/connect/{key}"}, {"query": "userId"}],
    [{"path": "/ws/{key}/events"}],
    [{"header": "X_User-Id"}],
    [{"cookie": "uid"}],
    [{"jwt": {"secretRef": {"name": "jwt"}}}],
    [{"jwt": {"claim": "uid", "algorithm": "ES256", "from": "query", "queryParam": "t", "secretRef": {"name": "jwt", "key": "pub.pem"}}}, {"path": "/c/{key}"}],
    # refused:
    [{"path": "/connect"}],
    [{"path": "connect/{key}"}],
    [{"path": "/a/{key}/{key}"}],
    [{"header": "X User"}],
    [{"query": ""}],
    [{"query": "a", "cookie": "b"}],
    [{"jwt": {"algorithm": "HS512", "secretRef": {"name": "jwt"}}}],
    [{"jwt": {"secretRef": {"name": "Not_A_Name"}}}],
    [{"jwt": {"secretRef": {"name": "a"}}}, {"jwt": {"secretRef": {"name": "b"}}}],
    [],
    [{"query": f"q{i}"} for i in range(9)],
]


@pytest.mark.parametrize("key_sources", KEY_SOURCE_SAMPLES, ids=[str(i) for i in range(len(KEY_SOURCE_SAMPLES))])
def test_the_chart_accepts_exactly_the_key_sources_the_crd_accepts(chart: Any, crd: dict[str, Any], key_sources: list[Any]) -> None:
    # Whatever passes `helm install` must also pass the API server when the sample WsCluster is
    # applied, and whatever the API server would refuse must already stop `helm install`.
    from helm_python import HelmError

    sample = {
        "apiVersion": "wscluster.io/v1alpha1",
        "kind": "WsCluster",
        "metadata": {"name": "chat"},
        "spec": {"keySources": key_sources},
    }
    crd_problems = lib.custom_resource_problems(crd, sample)
    values = {"examples": {"wscluster": {"enabled": True, "keySources": key_sources}}}
    try:
        lib.render(chart, values)
        chart_refusal = None
    except HelmError as err:
        chart_refusal = str(err)
    assert (chart_refusal is None) == (crd_problems == []), f"chart: {chart_refusal}; CRD: {crd_problems}"
