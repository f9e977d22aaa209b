"""The Helm chart, rendered by Helm's own engine (helm-python-sdk), for every CI scenario.

Every assertion is on parsed objects. The helpers at the top are shared with
test_helm_parent.py (the parent-chart recipe) and test_helm_observability.py (dashboard and
alerts).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python")

from gateway.__main__ import _parser  # noqa: E402
from gateway.config import parse_policy  # noqa: E402

CHART = Path(__file__).resolve().parents[1] / "helm" / "clerk-gateway"
SCENARIOS = sorted(
    p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")
)
SECRET_KEYS = ("secretKey", "jwtKey", "webhookSecret")
PUBLISHABLE = "pk_test_ZXhhbXBsZS5hY2NvdW50cy5kZXYk"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

Doc = dict[str, Any]


def values(scenario: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text())
    return data


def minimal(**overrides: Any) -> dict[str, Any]:
    """The least a standalone install needs; overrides are merged one level deep."""
    base: dict[str, Any] = {
        "upstream": {"url": "http://app.shop.svc.cluster.local:80"},
        "clerk": {"publishableKey": PUBLISHABLE, "secretKey": "sk_test_minimal"},
        "policy": {
            "authorizedParties": ["https://app.example.com"],
            "trustedProxies": ["10.0.0.0/8"],
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


def render_files(overrides: dict[str, Any], name: str = "gw") -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        files: dict[str, str] = chart.render(overrides, name=name, namespace="apps")
    return files


def render(overrides: dict[str, Any], name: str = "gw") -> list[Doc]:
    docs: list[Doc] = []
    for path, text in render_files(overrides, name).items():
        if path.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def render_error(overrides: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as caught:
        render_files(overrides)
    return str(caught.value)


def notes(overrides: dict[str, Any]) -> str:
    return render_files(overrides)["clerk-gateway/templates/NOTES.txt"]


def kinds(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    (doc,) = [d for d in kinds(docs, kind) if d["metadata"]["name"] == name]
    return doc


def pod_spec(deployment: Doc) -> Doc:
    spec: Doc = deployment["spec"]["template"]["spec"]
    return spec


def gateway_containers(docs: list[Doc]) -> list[Doc]:
    return [
        c
        for d in kinds(docs, "Deployment")
        for c in pod_spec(d)["containers"]
        if c["name"] == "clerk-gateway"
    ]


def gateway_deployment(docs: list[Doc]) -> Doc:
    (deployment,) = [
        d
        for d in kinds(docs, "Deployment")
        if any(c["name"] == "clerk-gateway" for c in pod_spec(d)["containers"])
    ]
    return deployment


def policy_text(docs: list[Doc]) -> str:
    (configmap,) = [d for d in kinds(docs, "ConfigMap") if "routes.yaml" in d.get("data", {})]
    text: str = configmap["data"]["routes.yaml"]
    return text


def policy_doc(docs: list[Doc]) -> Doc:
    doc: Doc = yaml.safe_load(policy_text(docs))
    return doc


def secret_refs(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}


def pod_environment(docs: list[Doc], fake_secrets: dict[str, str] | None = None) -> dict[str, str]:
    """The gateway container's environment as the kubelet would build it: plain values, and
    secret references resolved from the rendered Secret (or `fake_secrets` by key)."""
    (container,) = gateway_containers(docs)
    stored: dict[str, str] = dict(fake_secrets or {})
    for secret in kinds(docs, "Secret"):
        stored.update(secret.get("stringData", {}))
    env: dict[str, str] = {}
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            env[entry["name"]] = stored[entry["valueFrom"]["secretKeyRef"]["key"]]
    return env


def args_after(container: Doc, flag: str) -> str:
    args: list[str] = container["args"]
    return args[args.index(flag) + 1]


def defaults() -> dict[str, Any]:
    with helm.Chart.load(str(CHART)) as chart:
        merged: dict[str, Any] = chart.values
    return merged


# ---- every scenario -------------------------------------------------------------------------


def test_scenarios_exist() -> None:
    assert set(SCENARIOS) >= {"standalone", "sidecar", "existingsecret", "all-on", "forward-auth"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_lints_strictly_with_its_values(scenario: str) -> None:
    report = helm.lint(str(CHART), values(scenario), strict=True)
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_lint_is_clean() -> None:
    # Lint renders in Helm's lint mode, where `fail` is logged rather than fatal.
    report = helm.lint(str(CHART), strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def documented_values() -> dict[str, dict[str, Any]]:
    """The `# values-<name>.yaml` examples of docs/deployment.md."""
    text = (CHART.parents[1] / "docs" / "deployment.md").read_text()
    found = re.findall(r"```yaml\n# (values-[\w-]+\.yaml)\n(.*?)```", text, re.DOTALL)
    return {name: yaml.safe_load(body) for name, body in found}


def test_the_documented_values_files_install() -> None:
    documented = documented_values()
    assert set(documented) == {
        "values-standalone.yaml",
        "values-sidecar.yaml",
        "values-forward-auth.yaml",
    }
    for name, vals in documented.items():
        report = helm.lint(str(CHART), vals, strict=True)
        assert report["errors"] == [], (name, report)
        docs = render(vals)
        assert gateway_containers(docs), name
        assert policy_doc(docs)["trusted_proxies"], name


def test_bare_chart_does_not_install_and_says_what_to_set() -> None:
    assert "clerk.secretKey is required" in render_error({})


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probes_ports_and_security(scenario: str) -> None:
    vals = values(scenario)
    docs = render(vals)
    (container,) = gateway_containers(docs)
    names = {**defaults()["gateway"], **vals.get("gateway", {})}
    public, admin = names["portName"], names["adminPortName"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {public: 8080, admin: 9090}
    assert public != admin
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": admin}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": admin}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": admin}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert (sc["runAsUser"], sc["runAsGroup"]) == (10001, 10001)
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # The gateway's identity is its container's, never imposed on the whole pod.
    pod_sc = pod_spec(gateway_deployment(docs)).get("securityContext", {})
    assert not {"runAsUser", "runAsGroup", "runAsNonRoot"} & set(pod_sc)
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
def test_policy_in_the_configmap_passes_check(scenario: str) -> None:
    docs = render(values(scenario))
    result = parse_policy(policy_text(docs), "routes.yaml", for_run=False, env={})
    assert result.errors == (), result.errors
    assert result.policy is not None
    expected = "forward-auth" if values(scenario)["mode"] == "forward-auth" else "proxy"
    assert result.policy.mode == expected  # the chart's sidecar/standalone both proxy


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_policy_loads_for_run_with_the_pods_environment(scenario: str) -> None:
    """What `run` would load in the pod: the ConfigMap's file with the container's env (from
    the rendered Secret, or stand-ins for an existing Secret's keys). Not even a warning."""
    docs = render(values(scenario))
    env = pod_environment(
        docs,
        {
            "CLERK_PUBLISHABLE_KEY": PUBLISHABLE,
            "CLERK_SECRET_KEY": "sk_test_fromexisting",
            "secret-key": "sk_test_fromexisting",
            "webhook-secret": WEBHOOK_SECRET,
        },
    )
    result = parse_policy(policy_text(docs), "routes.yaml", for_run=True, env=env)
    assert result.problems == (), [str(p) for p in result.problems]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_secret_references_are_never_optional_and_exist(scenario: str) -> None:
    vals = values(scenario)
    docs = render(vals)
    (container,) = gateway_containers(docs)
    refs = secret_refs(container)
    assert "CLERK_SECRET_KEY" in refs
    for ref in refs.values():
        assert "optional" not in ref, ref
    if vals["clerk"].get("existingSecret"):
        assert kinds(docs, "Secret") == []
        assert {r["name"] for r in refs.values()} == {vals["clerk"]["existingSecret"]}
    else:
        (secret,) = kinds(docs, "Secret")
        for ref in refs.values():
            assert ref["name"] == secret["metadata"]["name"]
            assert secret["stringData"][ref["key"]]  # present and not empty


# ---- safe by default ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        (("clerk", "secretKey"), "clerk.secretKey is required"),
        (("clerk", "publishableKey"), "clerk.publishableKey is required"),
        (("policy", "authorizedParties"), "policy.authorizedParties is required"),
        (("policy", "trustedProxies"), "policy.trustedProxies is required"),
        (("upstream", "url"), "upstream.url is required"),
    ],
)
def test_each_required_value_is_named_when_missing(remove: tuple[str, str], message: str) -> None:
    vals = minimal()
    render(vals)  # complete, it renders
    del vals[remove[0]][remove[1]]
    assert message in render_error(vals)


def test_the_default_policy_checks_azp_trusts_the_ingress_and_has_no_webhook_route() -> None:
    docs = render(minimal())
    policy = policy_doc(docs)
    assert policy["clerk"]["authorized_parties"] == ["https://app.example.com"]
    assert policy["trusted_proxies"] == ["10.0.0.0/8"]
    assert policy["clerk"]["secret_key"] == "${CLERK_SECRET_KEY}"  # no empty fallback
    assert "jwt_key" not in policy["clerk"]
    assert "webhooks" not in policy
    assert "webhook" not in {r["access"] for r in policy["routes"]}
    assert policy["upstream"] == "${UPSTREAM_URL}"
    (container,) = gateway_containers(docs)
    assert set(secret_refs(container)) == {"CLERK_SECRET_KEY"}
    (secret,) = kinds(docs, "Secret")
    assert set(secret["stringData"]) == {"CLERK_SECRET_KEY"}


@pytest.mark.parametrize(
    ("clerk", "secret_name", "key"),
    [
        ({"webhookSecret": WEBHOOK_SECRET}, "gw-clerk-gateway", "CLERK_WEBHOOK_SECRET"),
        (
            {
                "secretKey": "",
                "existingSecret": "creds",
                "existingSecretKeys": {"webhookSecret": "whsec"},
            },
            "creds",
            "whsec",
        ),
        ({"secretKey": "", "existingSecret": "creds"}, None, None),
        ({}, None, None),
    ],
    ids=["chart-secret", "existing-secret-key", "existing-secret-without-key", "none"],
)
def test_webhook_route_only_with_a_webhook_secret(
    clerk: dict[str, Any], secret_name: str | None, key: str | None
) -> None:
    docs = render(minimal(clerk=clerk))
    policy = policy_doc(docs)
    (container,) = gateway_containers(docs)
    ref = secret_refs(container).get("CLERK_WEBHOOK_SECRET")
    if key is None:
        assert "webhooks" not in policy
        assert all(r["access"] != "webhook" for r in policy["routes"])
        assert ref is None
    else:
        first = policy["routes"][0]  # first, so no route of yours can shadow it
        assert first == {
            "name": "clerk-webhooks",
            "path": "/api/webhooks/clerk",
            "methods": ["POST"],
            "access": "webhook",
        }
        assert policy["webhooks"]["secrets"] == "${CLERK_WEBHOOK_SECRET}"
        assert ref == {"name": secret_name, "key": key}


def test_publishable_key_can_come_from_the_existing_secret() -> None:
    docs = render(minimal(clerk={"publishableKey": "", "secretKey": "", "existingSecret": "c"}))
    (container,) = gateway_containers(docs)
    assert secret_refs(container)["CLERK_PUBLISHABLE_KEY"] == {
        "name": "c",
        "key": "CLERK_PUBLISHABLE_KEY",
    }


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_values_beside_an_existing_secret_are_refused(key: str) -> None:
    vals = minimal(clerk={"secretKey": "", "existingSecret": "creds"})
    vals["clerk"][key] = {"jwtKey": "PEM", "secretKey": "sk_test_x"}.get(key, WEBHOOK_SECRET)
    assert f"clerk.{key} is ignored with clerk.existingSecret" in render_error(vals)


def test_checksum_is_the_rendered_policy_and_rolls_pods_when_it_changes() -> None:
    def checksum(docs: list[Doc]) -> str:
        annotations = gateway_deployment(docs)["spec"]["template"]["metadata"]["annotations"]
        value: str = annotations["checksum/policy"]
        return value

    vals = values("standalone")
    before = render(vals)
    # The ConfigMap's block scalar adds one final newline to the rendered policy.
    expected = hashlib.sha256(policy_text(before).removesuffix("\n").encode()).hexdigest()
    assert checksum(before) == expected
    assert checksum(before) == checksum(render(vals))
    more_routes = copy.deepcopy(vals)
    more_routes["policy"]["routes"] = [
        *defaults()["policy"]["routes"],
        {"path": "/health", "access": "public"},
    ]
    assert checksum(render(more_routes)) != checksum(before)
    other_party = copy.deepcopy(vals)
    other_party["policy"]["authorizedParties"] = ["https://other.example.com"]
    assert checksum(render(other_party)) != checksum(before)


def test_hot_reload_means_no_policy_checksum() -> None:
    docs = render(values("existingsecret"))
    annotations = gateway_deployment(docs)["spec"]["template"]["metadata"].get("annotations") or {}
    assert "checksum/policy" not in annotations


def test_inline_policy_is_used_as_written_and_needs_no_structured_keys() -> None:
    inline = "upstream: ${UPSTREAM_URL}\nclerk:\n  publishable_key: ${CLERK_PUBLISHABLE_KEY}\n"
    vals = minimal(policy={"inline": inline, "authorizedParties": [], "trustedProxies": []})
    assert policy_text(render(vals)) == inline


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"extra": {"routes": []}}, "policy.extra.routes is written by the chart"),
        ({"extra": {"trusted_proxies": []}}, "policy.extra.trusted_proxies is written"),
        ({"clerk": {"secret_key": "x"}}, "policy.clerk.secret_key is written by the chart"),
        ({"webhooks": {"secrets": "x"}}, "policy.webhooks.secrets is written by the chart"),
    ],
)
def test_policy_extras_cannot_override_what_the_chart_writes(
    policy: dict[str, Any], message: str
) -> None:
    assert message in render_error(minimal(policy=policy))


def test_policy_extras_land_in_their_sections() -> None:
    policy = policy_doc(render(values("all-on")))
    assert policy["clerk"]["clock_skew_ms"] == 2000
    assert policy["webhooks"]["tolerance_s"] == 120
    assert policy["limits"] == {"max_header_bytes": 8192}
    assert [r.get("name") for r in policy["routes"]] == [
        "clerk-webhooks",
        "public",
        "reports",
        "admin",
    ]


def test_trusted_proxies_take_addresses_and_cidrs() -> None:
    vals = minimal(policy={"trustedProxies": ["10.0.0.5", "fd00::/8"]})
    docs = render(vals)
    assert policy_doc(docs)["trusted_proxies"] == ["10.0.0.5", "fd00::/8"]
    result = parse_policy(policy_text(docs), "routes.yaml", for_run=False, env={})
    assert result.errors == ()


# ---- services: the admin port on its own ClusterIP Service ----------------------------------


def test_standalone_objects() -> None:
    docs = render(values("standalone"))
    public = named(docs, "Service", "gw-clerk-gateway")
    assert [(p["name"], p["targetPort"]) for p in public["spec"]["ports"]] == [("http", "gateway")]
    admin = named(docs, "Service", "gw-clerk-gateway-admin")
    assert admin["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["targetPort"]) for p in admin["spec"]["ports"]] == [
        ("admin", "gateway-admin")
    ]
    assert admin["spec"]["selector"] == public["spec"]["selector"]
    (secret,) = kinds(docs, "Secret")
    assert secret["stringData"]["CLERK_SECRET_KEY"] == "sk_test_standalonesecretvalue"
    env = pod_environment(docs)
    assert env["UPSTREAM_URL"] == "http://legacy-app.default.svc.cluster.local:8080"
    for kind in (
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "Ingress",
    ):
        assert kinds(docs, kind) == [], kind
    assert [d["metadata"]["name"] for d in kinds(docs, "ConfigMap")] == ["gw-clerk-gateway"]


@pytest.mark.parametrize("service_type", ["LoadBalancer", "NodePort"])
@pytest.mark.parametrize("scenario", ["standalone", "sidecar", "forward-auth"])
def test_an_exposed_service_never_carries_the_admin_port(scenario: str, service_type: str) -> None:
    vals = copy.deepcopy(values(scenario))
    vals.setdefault("service", {})["type"] = service_type
    vals.setdefault("sidecar", {}).setdefault("service", {})["type"] = service_type
    docs = render(vals)
    admin_name = {**defaults()["gateway"], **vals.get("gateway", {})}["adminPortName"]
    exposed = [s for s in kinds(docs, "Service") if s["spec"]["type"] == service_type]
    assert len(exposed) == 1
    assert all(p["targetPort"] != admin_name for p in exposed[0]["spec"]["ports"])
    (admin,) = [s for s in kinds(docs, "Service") if s["metadata"]["name"].endswith("-admin")]
    assert admin["spec"]["type"] == "ClusterIP"


@pytest.mark.parametrize("scenario", ["all-on", "sidecar"])
def test_service_monitor_scrapes_the_admin_service_only(scenario: str) -> None:
    docs = render(values(scenario))
    (monitor,) = kinds(docs, "ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    selected = [
        s for s in kinds(docs, "Service") if wanted.items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["gw-clerk-gateway-admin"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


# ---- sidecar ---------------------------------------------------------------------------------


def test_sidecar_runs_the_gateway_in_front_of_the_app_as_the_app() -> None:
    docs = render(values("sidecar"))
    (deployment,) = kinds(docs, "Deployment")
    assert deployment["metadata"]["name"] == "gw-legacy-app"
    own = {"app.kubernetes.io/name": "legacy-app", "app.kubernetes.io/instance": "gw"}
    assert deployment["spec"]["selector"]["matchLabels"] == own
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert own.items() <= template_labels.items()
    assert template_labels["team"] == "billing"
    for labels in (deployment["metadata"]["labels"], template_labels):
        assert labels["app.kubernetes.io/name"] != "clerk-gateway"
        assert "app.kubernetes.io/version" not in labels  # the gateway's version is not the app's
    pod = pod_spec(deployment)
    assert [c["name"] for c in pod["containers"]] == ["app", "clerk-gateway"]
    assert pod["securityContext"] == {"fsGroup": 2000}  # the app's own, nothing added
    app = pod["containers"][0]
    assert app == values("sidecar")["sidecar"]["appContainer"]  # untouched
    assert pod_environment(docs)["UPSTREAM_URL"] == "http://127.0.0.1:3000"
    app_service = named(docs, "Service", "gw-legacy-app")
    assert app_service["spec"]["selector"] == own
    assert [p["targetPort"] for p in app_service["spec"]["ports"]] == ["gateway"]  # never the app
    admin = named(docs, "Service", "gw-clerk-gateway-admin")
    assert admin["spec"]["selector"] == own
    (netpol,) = kinds(docs, "NetworkPolicy")
    assert netpol["spec"]["podSelector"]["matchLabels"] == own
    assert pod["terminationGracePeriodSeconds"] == 40


def test_sidecar_port_names_are_configurable_and_reach_probes_and_services() -> None:
    vals = copy.deepcopy(values("sidecar"))
    vals["gateway"] = {
        "port": 8181,
        "adminPort": 9191,
        "portName": "authn",
        "adminPortName": "authn-admin",
    }
    docs = render(vals)
    (container,) = gateway_containers(docs)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "authn": 8181,
        "authn-admin": 9191,
    }
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "authn-admin"
    assert args_after(container, "--listen") == "0.0.0.0:8181"
    assert args_after(container, "--admin-listen") == "0.0.0.0:9191"
    assert named(docs, "Service", "gw-legacy-app")["spec"]["ports"][0]["targetPort"] == "authn"
    admin = named(docs, "Service", "gw-clerk-gateway-admin")
    assert admin["spec"]["ports"][0]["targetPort"] == "authn-admin"
    (netpol,) = kinds(docs, "NetworkPolicy")
    assert [r["ports"][0]["port"] for r in netpol["spec"]["ingress"]] == ["authn", "authn-admin"]


@pytest.mark.parametrize(
    ("gateway", "app_port", "message"),
    [
        ({"portName": "http"}, 3000, 'port name "http" is also a gateway port name'),
        (
            {"adminPortName": "gateway"},
            3000,
            "gateway.portName and gateway.adminPortName must differ",
        ),
        ({}, 8080, "sidecar.appPort 8080 is one of the gateway's ports"),
        ({"adminPort": 8080}, 3000, "gateway.port and gateway.adminPort must differ"),
    ],
)
def test_sidecar_port_collisions_are_refused(
    gateway: dict[str, Any], app_port: int, message: str
) -> None:
    vals = copy.deepcopy(values("sidecar"))
    vals["gateway"] = {**defaults()["gateway"], **gateway}
    vals["sidecar"]["appPort"] = app_port
    assert message in render_error(vals)


def test_sidecar_for_your_own_chart_renders_only_the_shared_objects() -> None:
    vals = minimal(mode="sidecar", upstream={"url": ""})
    docs = render(vals)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Secret", "ServiceAccount"]
    vals["serviceMonitor"] = {"enabled": True}
    assert "set sidecar.selectorLabels" in render_error(vals)
    vals["sidecar"] = {"selectorLabels": {"app": "shop"}}
    docs = render(vals)
    admin = named(docs, "Service", "gw-clerk-gateway-admin")
    assert admin["spec"]["selector"] == {"app": "shop"}
    assert len(kinds(docs, "ServiceMonitor")) == 1
    assert kinds(docs, "Deployment") == []


# ---- options ---------------------------------------------------------------------------------


def test_shutdown_flags_and_a_grace_period_that_covers_them() -> None:
    docs = render(minimal())
    (container,) = gateway_containers(docs)
    assert args_after(container, "--shutdown-delay") == "5"
    assert args_after(container, "--drain-timeout") == "30"
    assert pod_spec(gateway_deployment(docs))["terminationGracePeriodSeconds"] == 40
    assert "lifecycle" not in container  # the gateway keeps serving by itself: no preStop needed
    docs = render(values("all-on"))
    (container,) = gateway_containers(docs)
    assert args_after(container, "--shutdown-delay") == "15"
    assert args_after(container, "--drain-timeout") == "60"
    assert pod_spec(gateway_deployment(docs))["terminationGracePeriodSeconds"] == 15 + 60 + 10
    # the flags are the command line's own: the gateway's parser reads them as meant
    args = _parser().parse_args(container["args"])
    assert (args.command, args.shutdown_delay, args.drain_timeout) == ("run", 15.0, 60.0)


def test_startup_probe_can_be_turned_off() -> None:
    (container,) = gateway_containers(render(minimal(startupProbe={"enabled": False})))
    assert "startupProbe" not in container
    (container,) = gateway_containers(render(minimal()))
    assert container["startupProbe"]["failureThreshold"] == 30
    assert "enabled" not in container["startupProbe"]


def test_all_optional_objects() -> None:
    docs = render(values("all-on"))
    (hpa,) = kinds(docs, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    deployment = gateway_deployment(docs)
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    assert kinds(docs, "PodDisruptionBudget")[0]["spec"]["minAvailable"] == 1
    (monitor,) = kinds(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert len(kinds(docs, "PrometheusRule")) == 1
    assert named(docs, "ConfigMap", "gw-clerk-gateway-dashboard")
    (ingress,) = kinds(docs, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "gw-clerk-gateway", "port": {"name": "http"}}
    assert named(docs, "Service", "gw-clerk-gateway")["spec"]["type"] == "LoadBalancer"
    admin = named(docs, "Service", "gw-clerk-gateway-admin")
    assert admin["spec"]["type"] == "ClusterIP"
    assert admin["spec"]["ports"] == [
        {
            "name": "admin",
            "port": 9102,
            "targetPort": "gw-admin",
            "protocol": "TCP",
            "appProtocol": "http",
        }
    ]

    pod = pod_spec(deployment)
    (container,) = gateway_containers(docs)
    assert pod["priorityClassName"] == "gateway-critical"
    assert {"name": "assertion-key", "secret": {"secretName": "gateway-assertion-key"}} in pod[
        "volumes"
    ]
    assert {
        "name": "assertion-key",
        "mountPath": "/etc/clerk-gateway-assertion",
        "readOnly": True,
    } in container["volumeMounts"]
    assert container["envFrom"] == [{"configMapRef": {"name": "gateway-extra-env"}}]
    assert {"name": "LOG_LEVEL", "value": "info"} in container["env"]
    zone, host = pod["topologySpreadConstraints"]
    assert zone["labelSelector"] == {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}
    assert zone["topologyKey"] == "topology.kubernetes.io/zone"
    assert host["labelSelector"] == {"matchLabels": {"custom": "selector"}}  # given: kept
    assert secret_refs(container)["CLERK_JWT_KEY"] == {
        "name": "gw-clerk-gateway",
        "key": "CLERK_JWT_KEY",
    }
    assert policy_doc(docs)["clerk"]["jwt_key"] == "${CLERK_JWT_KEY}"


def test_network_policy_ingress_and_egress() -> None:
    docs = render(values("all-on"))
    (netpol,) = kinds(docs, "NetworkPolicy")
    spec = netpol["spec"]
    assert (
        spec["podSelector"]["matchLabels"]
        == gateway_deployment(docs)["spec"]["selector"]["matchLabels"]
    )
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    public, admin = spec["ingress"]
    assert public["ports"] == [{"port": "gw", "protocol": "TCP"}]
    assert public["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    assert admin["ports"] == [{"port": "gw-admin", "protocol": "TCP"}]
    assert admin["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    dns, clerk, upstream = spec["egress"]
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    assert clerk["to"] == [
        {
            "ipBlock": {
                "cidr": "0.0.0.0/0",
                "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
            }
        }
    ]
    assert clerk["ports"] == [{"port": 443, "protocol": "TCP"}]
    assert upstream == {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}}],
        "ports": [{"port": 3000, "protocol": "TCP"}],
    }


@pytest.mark.parametrize(
    ("url", "namespace"),
    [
        ("http://app:8080", "apps"),
        ("http://app.billing.svc.cluster.local", "billing"),
        ("https://app.billing.svc:8443", "billing"),
    ],
)
def test_network_policy_finds_the_upstream_namespace(url: str, namespace: str) -> None:
    docs = render(minimal(upstream={"url": url}, networkPolicy={"enabled": True}))
    (netpol,) = kinds(docs, "NetworkPolicy")
    upstream = netpol["spec"]["egress"][2]
    assert upstream == {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}]
    }


@pytest.mark.parametrize("url", ["http://10.1.2.3:80", "https://api.example.com", "${UPSTREAM}"])
def test_network_policy_asks_where_an_upstream_it_cannot_place_is(url: str) -> None:
    vals = minimal(upstream={"url": url}, networkPolicy={"enabled": True})
    assert "networkPolicy.egress.upstream.to is required" in render_error(vals)
    peers = [{"ipBlock": {"cidr": "10.1.2.3/32"}}]
    vals["networkPolicy"]["egress"] = {"upstream": {"to": peers, "ports": [80]}}
    (netpol,) = kinds(render(vals), "NetworkPolicy")
    assert netpol["spec"]["egress"][2] == {"to": peers, "ports": [{"port": 80, "protocol": "TCP"}]}


def test_network_policy_egress_can_be_left_open() -> None:
    docs = render(minimal(networkPolicy={"enabled": True, "egress": {"enabled": False}}))
    (netpol,) = kinds(docs, "NetworkPolicy")
    assert netpol["spec"]["policyTypes"] == ["Ingress"]
    assert "egress" not in netpol["spec"]


def test_sidecar_network_policy_carries_the_apps_own_rules() -> None:
    (netpol,) = kinds(render(values("sidecar")), "NetworkPolicy")
    egress = netpol["spec"]["egress"]
    assert len(egress) == 3  # DNS, Clerk, the app's database; no upstream rule: it is localhost
    assert egress[2]["ports"] == [{"port": 5432, "protocol": "TCP"}]


# ---- forward-auth ----------------------------------------------------------------------------


def test_forward_auth_is_a_gateway_with_no_upstream() -> None:
    vals = values("forward-auth")
    docs = render(vals)
    deployment = gateway_deployment(docs)
    assert deployment["metadata"]["name"] == "gw-clerk-gateway"
    assert deployment["spec"]["replicas"] == 3
    (container,) = gateway_containers(docs)
    assert args_after(container, "--mode") == "forward-auth"
    names = {e["name"] for e in container["env"]}
    assert "UPSTREAM_URL" not in names
    assert "CLERK_WEBHOOK_SECRET" not in names
    assert [c["name"] for c in pod_spec(deployment)["containers"]] == ["clerk-gateway"]
    policy = policy_doc(docs)
    assert policy["mode"] == "forward-auth"
    assert "upstream" not in policy
    assert "webhooks" not in policy
    assert all(r["access"] != "webhook" for r in policy["routes"])
    assert policy["trusted_proxies"] == ["10.244.0.0/16"]
    public = named(docs, "Service", "gw-clerk-gateway")
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["gateway"]
    assert named(docs, "Service", "gw-clerk-gateway-admin")["spec"]["type"] == "ClusterIP"
    assert len(kinds(docs, "PodDisruptionBudget")) == 1
    (netpol,) = kinds(docs, "NetworkPolicy")
    assert len(netpol["spec"]["egress"]) == 2  # DNS and Clerk: nothing to forward to
    assert kinds(docs, "Ingress") == []


def test_forward_auth_notes_give_the_ingress_nginx_annotations() -> None:
    text = notes(values("forward-auth"))
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("nginx.ingress")]
    annotations = yaml.safe_load("\n".join(lines))
    assert annotations == {
        "nginx.ingress.kubernetes.io/auth-url": "http://gw-clerk-gateway.apps.svc.cluster.local:80/",
        "nginx.ingress.kubernetes.io/auth-signin": "https://accounts.example.com/sign-in",
        "nginx.ingress.kubernetes.io/auth-signin-redirect-param": "redirect_url",
        "nginx.ingress.kubernetes.io/auth-response-headers": (
            "X-Clerk-User-Id,X-Clerk-Session-Id,X-Clerk-Role,X-Clerk-Org-Id,"
            "X-Clerk-Org-Slug,X-Clerk-Org-Role,X-Clerk-Org-Permissions,"
            "X-Clerk-Role-Encoding,X-Clerk-Org-Slug-Encoding,X-Clerk-Org-Role-Encoding,"
            "X-Clerk-Org-Permissions-Encoding"
        ),
    }
    assert "allow-snippet-annotations" in text
    vals = copy.deepcopy(values("forward-auth"))
    del vals["policy"]["signInUrl"]
    text = notes(vals)
    assert 'auth-signin: "https://app.example.com/sign-in"' in text


@pytest.mark.parametrize(
    "change",
    [
        {"clerk": {"existingSecret": "c", "webhookSecret": WEBHOOK_SECRET}},
        {"clerk": {"existingSecret": "c", "existingSecretKeys": {"webhookSecret": "w"}}},
        {
            "policy": {
                "authorizedParties": ["https://app.example.com"],
                "trustedProxies": ["10.0.0.0/8"],
                "routes": [{"path": "/hooks", "access": "webhook"}],
            }
        },
    ],
    ids=["webhook-secret", "existing-webhook-key", "webhook-route"],
)
def test_schema_rejects_webhooks_in_forward_auth(change: dict[str, Any]) -> None:
    base = values("forward-auth")
    vals = {**base, **change}
    proxy = {**vals, "mode": "standalone", "upstream": {"url": "http://app:80"}}
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(chart.merge_values(base))
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(chart.merge_values(vals))
        chart.validate_schema(chart.merge_values(proxy))  # the same values suit proxy mode


def test_notes_tell_how_to_reload_without_kill() -> None:
    for scenario in SCENARIOS:
        text = notes(values(scenario))
        assert "clerk-gateway reload --pid 1" in text, scenario
        assert "kill" not in text, scenario


@pytest.mark.parametrize("mode", ["sidecar", "forward-auth"])
def test_an_ingress_to_the_gateway_is_for_standalone_only(mode: str) -> None:
    vals = values("forward-auth") if mode == "forward-auth" else values("sidecar")
    render(vals)
    vals = {**vals, "ingress": {"enabled": True}}
    assert f"in {mode} mode put the Ingress in front of your app" in render_error(vals)


# ---- schema ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "daemonset"},
        {"replicaCount": -1},
        {"gateway": {"port": 70000}},
        {"gateway": {"portName": "Gateway_Port"}},
        {"gateway": {"adminPortName": "gateway-admin-port"}},  # over 15 characters
        {"gateway": {"drainTimeoutSeconds": 30}},  # moved to shutdown.drainTimeoutSeconds
        {"shutdown": {"delaySeconds": -1}},
        {"clerk": {"secretKey": "not-a-secret-key"}},
        {"clerk": {"webhookSecret": "nope"}},
        {"clerk": {"existingSecretKeys": {"secretkey": "x"}}},
        {"upstream": {"url": "ftp://x"}},
        {"replicaCont": 2},
        {"policy": {"authorizedParties": ["app.example.com"]}},
        {"policy": {"authorizedParties": ["https://app.example.com/"]}},
        {"policy": {"trustedProxies": ["the ingress"]}},
        {"policy": {"routes": [{"path": "/x", "access": "everyone"}]}},
        {"policy": {"default": "webhook"}},
        {"policy": {"unknown": 1}},
        {"service": {"adminPort": 9090}},  # the admin port is adminService.port
        {"prometheusRule": {"disabled": ["NoSuchAlert"]}},
        {"prometheusRule": {"thresholds": {"errorRatio": 5}}},
        {"networkPolicy": {"egress": {"clerkApi": {"cidrs": ["api.clerk.com"]}}}},
        {"topologySpreadConstraints": [{"maxSkew": 1}]},
    ],
)
def test_schema_rejects_bad_values(bad: dict[str, Any]) -> None:
    good = minimal()
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(chart.merge_values(good))
        merged = chart.merge_values(minimal(**bad))
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(merged)
