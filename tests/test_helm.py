"""The Helm chart, rendered by Helm's own engine (helm-python-sdk), for every CI scenario."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python")

from gateway.config import parse_policy  # noqa: E402

CHART = Path(__file__).resolve().parents[1] / "helm" / "clerk-gateway"
SCENARIOS = sorted(
    p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")
)
SECRET_KEYS = ("secretKey", "jwtKey", "webhookSecret")


def values(scenario: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text())
    return data


def render(overrides: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(overrides, name="gw", namespace="apps")
    docs: list[dict[str, Any]] = []
    for name, text in files.items():
        if name.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def gateway_containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        c
        for d in kinds(docs, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["name"] == "clerk-gateway"
    ]


def defaults() -> dict[str, Any]:
    with helm.Chart.load(str(CHART)) as chart:
        merged: dict[str, Any] = chart.values
    return merged


def test_scenarios_exist() -> None:
    assert set(SCENARIOS) >= {"standalone", "sidecar", "existingsecret", "all-on"}


def test_lint_is_clean() -> None:
    report = helm.lint(str(CHART), strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_lints_with_its_values(scenario: str) -> None:
    report = helm.lint(str(CHART), values(scenario), strict=True)
    assert report["errors"] == [], report


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probes_ports_and_security(scenario: str) -> None:
    docs = render(values(scenario))
    (container,) = gateway_containers(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "admin": 9090}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    (deployment,) = [
        d
        for d in kinds(docs, "Deployment")
        if container in d["spec"]["template"]["spec"]["containers"]
    ]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["args"][:3] == ["run", "--config", "/etc/clerk-gateway/routes.yaml"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "subPath" not in mounts["/etc/clerk-gateway"]  # so kubelet can update it in place


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_secret_value_in_any_configmap(scenario: str) -> None:
    vals = values(scenario)
    docs = render(vals)
    secrets = [vals.get("clerk", {}).get(k) for k in SECRET_KEYS]
    blob = json.dumps(kinds(docs, "ConfigMap")) + json.dumps(kinds(docs, "Deployment"))
    for secret in filter(None, secrets):
        for part in str(secret).split():
            assert part not in blob


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_policy_in_the_configmap_is_the_values_policy_and_passes_check(scenario: str) -> None:
    vals = values(scenario)
    docs = render(vals)
    (configmap,) = kinds(docs, "ConfigMap")
    policy = configmap["data"]["routes.yaml"]
    assert policy == vals.get("policy", defaults()["policy"])
    result = parse_policy(policy, "routes.yaml", for_run=False, env={})
    assert result.errors == (), result.errors


def test_checksum_rolls_pods_when_the_policy_changes() -> None:
    vals = values("standalone")
    before = render(vals)
    changed = dict(vals, policy=defaults()["policy"] + "  - {path: /health, access: public}\n")
    after = render(changed)

    def checksum(docs: list[dict[str, Any]]) -> str:
        (deployment,) = kinds(docs, "Deployment")
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/policy"]
        return value

    assert checksum(before) != checksum(after)
    assert checksum(before) == checksum(render(vals))


def test_hot_reload_means_no_policy_checksum() -> None:
    docs = render(values("existingsecret"))
    (deployment,) = kinds(docs, "Deployment")
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    assert "checksum/policy" not in annotations


def test_existing_secret_creates_no_secret() -> None:
    docs = render(values("existingsecret"))
    assert kinds(docs, "Secret") == []
    (container,) = gateway_containers(docs)
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in container["env"]
        if "valueFrom" in e
    }
    assert set(refs.values()) == {"clerk-credentials"}


def test_standalone_objects() -> None:
    docs = render(values("standalone"))
    (service,) = kinds(docs, "Service")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "http",
        "admin": "admin",
    }
    (secret,) = kinds(docs, "Secret")
    assert secret["stringData"]["CLERK_SECRET_KEY"] == "sk_test_standalonesecretvalue"
    (container,) = gateway_containers(docs)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["UPSTREAM_URL"] == "http://legacy-app.default.svc.cluster.local:8080"
    for kind in (
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "NetworkPolicy",
        "Ingress",
    ):
        assert kinds(docs, kind) == [], kind


def test_sidecar_runs_the_gateway_in_front_of_the_app_on_localhost() -> None:
    docs = render(values("sidecar"))
    (deployment,) = kinds(docs, "Deployment")
    assert deployment["metadata"]["name"] == "gw-clerk-gateway-app"
    names = [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert names == ["app", "clerk-gateway"]
    (container,) = gateway_containers(docs)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["UPSTREAM_URL"] == "http://127.0.0.1:3000"
    (service,) = kinds(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"  # the gateway, never the app


def test_all_optional_objects() -> None:
    docs = render(values("all-on"))
    (hpa,) = kinds(docs, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    (deployment,) = kinds(docs, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    assert kinds(docs, "PodDisruptionBudget")[0]["spec"]["minAvailable"] == 1
    (monitor,) = kinds(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "admin"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    (netpol,) = kinds(docs, "NetworkPolicy")
    assert [r["ports"][0]["port"] for r in netpol["spec"]["ingress"]] == ["http", "admin"]
    (ingress,) = kinds(docs, "Ingress")
    assert (
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["name"]
        == "http"
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "daemonset"},
        {"replicaCount": -1},
        {"gateway": {"port": 70000, "adminPort": 9090}},
        {"clerk": {"secretKey": "not-a-secret-key"}},
        {"clerk": {"webhookSecret": "nope"}},
        {"upstream": {"url": "ftp://x"}},
        {"replicaCont": 2},
    ],
)
def test_schema_rejects_bad_values(bad: dict[str, Any]) -> None:
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError):
        chart.render(bad, name="gw", namespace="apps")
