"""The parent-chart recipe of docs/deployment.md ("In your own chart"), built and rendered.

The parent chart is made of the documented blocks themselves (each starts with a
`# shop/<path>` line), so the docs cannot drift from what works. Its dependency is this
chart through a file:// repository, fetched by Helm's own `dependency update`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_helm import CHART, Doc, helm, kinds, named

DOCS = Path(__file__).resolve().parents[1] / "docs" / "deployment.md"
BLOCK = re.compile(r"```yaml\n# shop/(\S+)\n(.*?)```", re.DOTALL)


def recipe() -> dict[str, str]:
    blocks = {path: f"# shop/{path}\n{body}" for path, body in BLOCK.findall(DOCS.read_text())}
    assert set(blocks) == {
        "Chart.yaml",
        "values.yaml",
        "templates/deployment.yaml",
        "templates/service.yaml",
    }
    return blocks


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parent") / "shop"
    for path, text in recipe().items():
        if path == "Chart.yaml":
            text = re.sub(r"repository: file://\S+", f"repository: file://{CHART}", text)
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    helm.dependency_update(str(root), skip_refresh=True)
    (archive,) = (root / "charts").glob("clerk-gateway-*.tgz")
    assert (
        archive.name
        == f"clerk-gateway-{yaml.safe_load((CHART / 'Chart.yaml').read_text())['version']}.tgz"
    )
    return root


def render_parent(parent: Path, overrides: dict[str, Any] | None = None) -> list[Doc]:
    with helm.Chart.load(str(parent)) as chart:
        files = chart.render(overrides or {}, name="shop", namespace="apps")
    return [
        d
        for path, text in files.items()
        if path.endswith(".yaml")
        for d in yaml.safe_load_all(text)
        if d
    ]


def test_the_recipe_lints(parent: Path) -> None:
    report = helm.lint(str(parent), strict=True)
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_the_gateway_runs_in_the_parents_pod_as_the_subchart_renders_it(parent: Path) -> None:
    docs = render_parent(parent)
    (deployment,) = kinds(docs, "Deployment")
    assert deployment["metadata"]["name"] == "shop-shop"
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"] == {"app": "shop"}  # the app's own labels
    pod = template["spec"]
    assert [c["name"] for c in pod["containers"]] == ["app", "clerk-gateway"]
    assert "securityContext" not in pod  # nothing forced on the app
    assert "securityContext" not in pod["containers"][0]
    gateway = pod["containers"][1]
    assert gateway["securityContext"]["runAsUser"] == 10001
    assert (
        gateway["image"] == "ghcr.io/clerk-gateway/clerk-gateway:0.1.0"
    )  # the subchart's appVersion
    assert pod["terminationGracePeriodSeconds"] == 40

    # What the container refers to is what the subchart rendered.
    configmap = named(docs, "ConfigMap", "shop-clerk-gateway")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["clerk-gateway-policy"]["configMap"]["name"] == "shop-clerk-gateway"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in gateway["env"] if "valueFrom" in e}
    assert refs == {"CLERK_SECRET_KEY": {"name": "clerk-credentials", "key": "CLERK_SECRET_KEY"}}
    assert {"name": "UPSTREAM_URL", "value": "http://127.0.0.1:3000"} in gateway["env"]

    # The checksum helper: the parent's pods roll when the subchart's policy changes.
    annotations = template["metadata"]["annotations"]
    policy = configmap["data"]["routes.yaml"]
    assert annotations == {
        "checksum/policy": hashlib.sha256(policy.removesuffix("\n").encode()).hexdigest()
    }
    assert yaml.safe_load(policy)["clerk"]["authorized_parties"] == ["https://shop.example.com"]

    service = named(docs, "Service", "shop-shop")
    assert service["spec"]["ports"][0]["targetPort"] == "gateway"
    gateway_ports = {p["name"] for p in gateway["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in gateway_ports

    admin = named(docs, "Service", "shop-clerk-gateway-admin")
    assert admin["spec"]["type"] == "ClusterIP"
    assert admin["spec"]["selector"] == {"app": "shop"}
    assert admin["spec"]["ports"][0]["targetPort"] in gateway_ports
    (monitor,) = kinds(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= admin["metadata"]["labels"].items()
    assert kinds(docs, "Secret") == []  # existingSecret


def test_the_parents_pods_roll_on_policy_and_secret_changes(parent: Path) -> None:
    def annotations(overrides: dict[str, Any]) -> dict[str, str]:
        (deployment,) = kinds(render_parent(parent, {"clerk-gateway": overrides}), "Deployment")
        found: dict[str, str] = deployment["spec"]["template"]["metadata"].get("annotations") or {}
        return found

    base = annotations({})
    other_policy = annotations({"policy": {"default": "deny"}})
    assert other_policy["checksum/policy"] != base["checksum/policy"]
    owned = {"clerk": {"existingSecret": "", "secretKey": "sk_test_one"}}
    first = annotations(owned)
    second = annotations({"clerk": {"existingSecret": "", "secretKey": "sk_test_two"}})
    assert first["checksum/secret"] != second["checksum/secret"]
    assert first["checksum/policy"] == base["checksum/policy"]
    assert annotations({"hotReload": {"enabled": True}}) == {}  # reloaded in place, no roll


def test_the_port_name_follows_the_subcharts_values(parent: Path) -> None:
    docs = render_parent(parent, {"clerk-gateway": {"gateway": {"portName": "authn"}}})
    (deployment,) = kinds(docs, "Deployment")
    gateway = deployment["spec"]["template"]["spec"]["containers"][1]
    assert gateway["ports"][0]["name"] == "authn"
    assert named(docs, "Service", "shop-shop")["spec"]["ports"][0]["targetPort"] == "authn"
