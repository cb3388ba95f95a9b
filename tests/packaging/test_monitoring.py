"""The chart's monitoring parts: the Grafana dashboard ConfigMap, the PrometheusRule and the
PodMonitors (each off by default), and the operator's log format.

PrometheusRule and PodMonitor are prometheus-operator CRDs, whose schemas kubernetes-validate
does not ship: their structure is checked here field by field instead (and the ConfigMap, a
core kind, with kubernetes-validate --strict). That every series the dashboard and the rules
query exists is checked against the real binaries by tests/tests/metrics_series.rs.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from helm_python import chart as helm_chart

import packaging_lib as lib

WARNING = 2  # helm lint severities: 1 info, 2 warning, 3 error
DASHBOARD_FILE = lib.CHART_DIR / "files" / "grafana-dashboard.json"
RULES_FILE = lib.CHART_DIR / "files" / "prometheus-rules.yaml"
TROUBLESHOOTING = lib.REPO_ROOT / "docs" / "troubleshooting.md"
RUNBOOK_BASE = "https://github.com/wscluster/wscluster/blob/main/docs/troubleshooting.md#"

MONITORING_ON: dict[str, Any] = {
    "monitoring": {
        "dashboards": {"enabled": True},
        "alerts": {"enabled": True},
        "podMonitors": {"enabled": True},
    }
}
EACH_OPTION = {
    "dashboards": {"monitoring": {"dashboards": {"enabled": True, "labels": {"team": "rt"}, "annotations": {"grafana_folder": "wscluster"}}}},
    "alerts": {"monitoring": {"alerts": {"enabled": True, "labels": {"release": "prom"}}}},
    "podMonitors": {"monitoring": {"podMonitors": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}}},
    "all": MONITORING_ON,
}


def rendered_objects(chart: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    return lib.objects(lib.render(chart, values, release="demo", namespace="demo"))


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def rules_file() -> dict[str, Any]:
    return yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))


def markdown_anchors(text: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped,
    spaces to dashes)."""
    anchors = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", text, flags=re.MULTILINE):
        anchor = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(anchor)
    return anchors


@pytest.mark.parametrize("option", sorted(EACH_OPTION))
def test_chart_passes_strict_lint_with_each_monitoring_option_on(option: str) -> None:
    report = helm_chart.lint(str(lib.CHART_DIR), EACH_OPTION[option], strict=True, kube_version="v1.30.0")
    findings = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= WARNING]
    assert findings + list(report["errors"]) == []


def test_monitoring_is_off_by_default(default_render: dict[str, str]) -> None:
    kinds = {o["kind"] for o in lib.objects(default_render)}
    assert not kinds & {"PodMonitor", "PrometheusRule", "ConfigMap"}, kinds


@pytest.mark.parametrize("option", sorted(EACH_OPTION))
def test_each_option_renders_objects_that_are_labelled_and_valid(chart: Any, option: str) -> None:
    objs = rendered_objects(chart, EACH_OPTION[option])
    monitoring = [o for o in objs if o["kind"] in ("PodMonitor", "PrometheusRule", "ConfigMap")]
    assert monitoring, f"{option} rendered nothing"
    for obj in monitoring:
        meta = obj["metadata"]
        assert meta["namespace"] == "demo"
        assert meta["labels"]["app.kubernetes.io/instance"] == "demo"
        assert meta["labels"]["app.kubernetes.io/component"] == "monitoring"
        if obj["kind"] == "ConfigMap":
            assert [str(p) for p in lib.kube_validate(obj, f"monitoring {option}")] == []
        else:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"


def test_dashboard_configmap_carries_the_sidecar_label_and_the_file_unchanged(chart: Any) -> None:
    objs = rendered_objects(chart, EACH_OPTION["dashboards"])
    [cm] = of_kind(objs, "ConfigMap")
    assert cm["metadata"]["name"] == "demo-wscluster-dashboard"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["labels"]["team"] == "rt"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "wscluster"}
    assert list(cm["data"]) == ["wscluster.json"]
    assert json.loads(cm["data"]["wscluster.json"]) == json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))


def test_dashboard_namespace_can_follow_the_sidecar(chart: Any) -> None:
    values = {"monitoring": {"dashboards": {"enabled": True, "namespace": "grafana"}}}
    [cm] = of_kind(rendered_objects(chart, values), "ConfigMap")
    assert cm["metadata"]["namespace"] == "grafana"


def test_dashboard_json_is_a_grafana_dashboard_whose_panels_all_query_prometheus() -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "wscluster-overview" and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "cluster" in variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    graphs = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(graphs) >= 10
    for panel in graphs:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]


def test_prometheusrule_holds_every_rule_of_the_file(chart: Any) -> None:
    [rule] = of_kind(rendered_objects(chart, EACH_OPTION["alerts"]), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["spec"] == rules_file()


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    anchors = markdown_anchors(TROUBLESHOOTING.read_text(encoding="utf-8"))
    rules = [r for g in rules_file()["groups"] for r in g["rules"]]
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for r in rules:
        assert set(r) == {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert re.fullmatch(r"[0-9]+[smh]", r["for"]), r["alert"]
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        notes = r["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url"}, r["alert"]
        assert notes["runbook_url"].startswith(RUNBOOK_BASE), r["alert"]
        anchor = notes["runbook_url"][len(RUNBOOK_BASE):]
        assert anchor == r["alert"].lower(), r["alert"]
        assert anchor in anchors, f"docs/troubleshooting.md has no section #{anchor}"


def test_the_alerts_cover_what_the_issue_asks_for() -> None:
    names = {r["alert"] for g in rules_file()["groups"] for r in g["rules"]}
    assert names >= {
        "WsClusterProxyRingOutOfSync",
        "WsClusterDrainStuck",
        "WsClusterResetRateHigh",
        "WsClusterProxy5xxHigh",
        "WsClusterProxyRefusalsHigh",
        "WsClusterRedisFailing",
        "WsClusterRabbitmqDisconnected",
    }


def test_alert_overrides_change_for_and_labels_or_drop_an_alert(chart: Any) -> None:
    values = {"monitoring": {"alerts": {"enabled": True, "rules": {
        "WsClusterDrainStuck": {"for": "75m", "labels": {"severity": "critical", "team": "rt"}},
        "WsClusterResetRateHigh": {"enabled": False},
    }}}}
    [rule] = of_kind(rendered_objects(chart, values), "PrometheusRule")
    by_name = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "WsClusterResetRateHigh" not in by_name
    assert by_name["WsClusterDrainStuck"]["for"] == "75m"
    assert by_name["WsClusterDrainStuck"]["labels"] == {"severity": "critical", "team": "rt"}
    assert by_name["WsClusterRabbitmqDisconnected"]["for"] == "2m", "other alerts keep the file's values"


def test_the_schema_knows_exactly_the_alerts_of_the_file(chart: Any) -> None:
    names = [r["alert"] for g in rules_file()["groups"] for r in g["rules"]]
    rules = chart.schema["properties"]["monitoring"]["properties"]["alerts"]["properties"]["rules"]
    assert list(rules["properties"]) == names and rules["additionalProperties"] is False


def test_podmonitors_select_the_operators_node_and_proxy_pods_on_their_admin_port(chart: Any) -> None:
    monitors = of_kind(rendered_objects(chart, EACH_OPTION["podMonitors"]), "PodMonitor")
    by_name = {m["metadata"]["name"]: m for m in monitors}
    assert sorted(by_name) == ["demo-wscluster-nodes", "demo-wscluster-proxies"]
    for component, monitor in (("node", by_name["demo-wscluster-nodes"]), ("proxy", by_name["demo-wscluster-proxies"])):
        spec = monitor["spec"]
        assert set(spec) == {"namespaceSelector", "selector", "podMetricsEndpoints"}
        assert spec["namespaceSelector"] == {"any": True}
        # The labels operator/src/resources.rs puts on its pods (ClusterRef::labels).
        assert spec["selector"] == {"matchLabels": {
            "app.kubernetes.io/name": "wscluster",
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "wscluster-operator",
        }}
        [endpoint] = spec["podMetricsEndpoints"]
        assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics" and endpoint["interval"] == "15s"
        [relabel] = endpoint["relabelings"]
        assert relabel == {
            "sourceLabels": ["__meta_kubernetes_namespace", "__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
            "separator": "/",
            "targetLabel": "cluster",
            "action": "replace",
        }
        assert monitor["metadata"]["labels"]["release"] == "prom"


def test_podmonitors_follow_the_watched_namespace(chart: Any) -> None:
    values = {"operator": {"watchNamespace": "apps"}, **EACH_OPTION["podMonitors"]}
    for monitor in of_kind(rendered_objects(chart, values), "PodMonitor"):
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["apps"]}


def test_the_operator_logs_json_by_default_and_text_on_request(chart: Any, default_render: dict[str, str]) -> None:
    def args(objs: list[dict[str, Any]]) -> list[str]:
        [deployment] = of_kind(objs, "Deployment")
        return deployment["spec"]["template"]["spec"]["containers"][0]["args"]

    default = args(lib.objects(default_render))
    assert default[default.index("--log-format") + 1] == "json"
    text = args(lib.objects(lib.render(chart, {"logFormat": "text"})))
    assert text[text.index("--log-format") + 1] == "text"


@pytest.mark.parametrize(
    ("values", "path", "words"),
    [
        ({"logFormat": "yaml"}, "/logFormat", "'json'"),
        ({"monitoring": {"dashboards": {"enabled": "yes"}}}, "/monitoring/dashboards/enabled", "boolean"),
        ({"monitoring": {"alerts": {"rules": {"WsClusterNoSuchAlert": {"for": "5m"}}}}}, "/monitoring/alerts/rules", "'WsClusterNoSuchAlert' not allowed"),
        ({"monitoring": {"alerts": {"rules": {"WsClusterDrainStuck": {"for": "ten minutes"}}}}}, "/monitoring/alerts/rules/WsClusterDrainStuck/for", "does not match pattern"),
        ({"monitoring": {"podMonitors": {"interval": "30"}}}, "/monitoring/podMonitors/interval", "does not match pattern"),
        ({"monitoring": {"podMonitor": {"enabled": True}}}, "/monitoring", "'podMonitor' not allowed"),
    ],
)
def test_bad_monitoring_values_are_refused_with_a_message_naming_the_key(
    chart: Any, values: dict[str, Any], path: str, words: str
) -> None:
    lib.assert_values_refused(chart, values, path, words)
