"""The Grafana dashboard (files/dashboard.json) and the PrometheusRule the chart ships.

Every metric a PromQL expression names must be one the gateway exports, every label it
matches, groups by or prints must be one that metric carries (or one Prometheus adds when it
scrapes), and every expression must be well formed: a promtool-style check without promtool.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

import gateway
from gateway.decision import Reason
from tests.scrape import Scrape
from tests.test_helm import CHART, Doc, kinds, named, render, values

# What the gateway exports is never listed here: every check below runs against a real
# `/metrics` scrape of a running gateway after traffic of every kind (the `metrics_scrape`
# fixture, tests/scrape.py). A metric the dashboard or an alert names and no scrape shows
# (renamed, never emitted, only a HELP line) fails.
# Added by Prometheus (job, instance) and the Prometheus Operator's ServiceMonitor.
TARGET_LABELS = frozenset(
    {"namespace", "job", "instance", "pod", "service", "container", "endpoint"}
)
# Label values the gateway emits, where a query filters on them.
KNOWN_VALUES: dict[str, set[str]] = {
    "decision": {"allow", "deny", "redirect", "handshake"},
    "outcome": {"delivered", "upstream-rejected"} | {r.value for r in Reason},
}
RESULT_VALUES = {
    "clerk_gateway_jwks_fetches_total": {"success", "failure"},
    "clerk_gateway_policy_reloads_total": {"success", "failure"},
}

FUNCTIONS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "rate",
    "irate",
    "increase",
    "histogram_quantile",
    "scalar",
    "time",
    "max_over_time",
    "min_over_time",
    "avg_over_time",
    "absent",
    "clamp_min",
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
STRING = r'"(?:[^"\\]|\\.)*"'
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{((?:[^{}\"]|" + STRING + r")*)\}")
MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*(" + STRING + ")")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
IDENT = re.compile(r"[A-Za-z_:][\w:]*")
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$")


class Expr:
    """What an expression names: metrics (resolved to families), the label matchers of each
    selector, grouping labels, and the functions it calls."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.problems: list[str] = []
        self.selectors: list[tuple[str, list[tuple[str, str, str]]]] = []
        self.grouping: list[list[str]] = []
        self.metrics: set[str] = set()
        self.functions: set[str] = set()
        self.labels_printed: set[str] = set()
        query = text
        found = LABEL_VALUES.match(text)
        if found:  # Grafana's variable query: label_values(selector, label)
            query, label = found.group(1), found.group(2)
            self.labels_printed.add(label)
        if not balanced(query):
            self.problems.append("unbalanced brackets")
        rest = query
        for match in SELECTOR.finditer(query):
            name = match.group(1)
            matchers = [(m[0], m[1], json.loads(m[2])) for m in MATCHER.findall(match.group(2))]
            if not name or name in KEYWORDS | FUNCTIONS:
                self.problems.append(f"selector without a metric name: {match.group(0)}")
                continue
            self.selectors.append((name, matchers))
        rest = SELECTOR.sub(lambda m: " " + (m.group(1) or "") + " ", rest)
        for match in GROUPING.finditer(rest):
            self.grouping.append([x.strip() for x in match.group(2).split(",") if x.strip()])
        rest = GROUPING.sub(" ", rest)
        rest = re.sub(r"\[[^\]]*\]", " ", rest)  # range selectors ($__rate_interval, 5m)
        rest = re.sub(r"\$\w+", " ", rest)
        rest = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", " ", rest)
        for match in IDENT.finditer(rest):
            token = match.group(0)
            called = rest[match.end() :].lstrip().startswith("(")
            if called:
                self.functions.add(token)
            elif token not in KEYWORDS:
                self.metrics.add(token)
        self.metrics |= {name for name, _ in self.selectors}

    def families(self, exported: Scrape) -> dict[str, str | None]:
        return {name: exported.family(name) for name in self.metrics}

    def known_labels(self, exported: Scrape) -> frozenset[str]:
        labels = set(TARGET_LABELS)
        for fam in self.families(exported).values():
            if fam is not None:
                labels |= exported.series[fam]
        return frozenset(labels)

    def output_labels(self, exported: Scrape) -> set[str]:
        """The labels of the result: the outermost aggregation's `by` (written first here)."""
        return set(self.grouping[0]) if self.grouping else set(self.known_labels(exported))


def balanced(text: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in re.sub(STRING, '""', text):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def problems(expr: Expr, exported: Scrape) -> list[str]:
    found = list(expr.problems)
    for name, fam in expr.families(exported).items():
        if fam is None:
            found.append(f"unknown metric {name}")
    unknown_functions = expr.functions - FUNCTIONS - {"label_values"}
    found += [f"unknown function {f}" for f in sorted(unknown_functions)]
    for name, matchers in expr.selectors:
        fam = exported.family(name)
        if fam is None:
            continue
        allowed = exported.series[fam] | TARGET_LABELS
        for label, op, value in matchers:
            if label not in allowed:
                found.append(f"{name} has no label {label}")
            wanted = RESULT_VALUES.get(fam, set()) if label == "result" else KNOWN_VALUES.get(label)
            if wanted:
                given = value.split("|") if op in ("=~", "!~") else [value]
                found += [f"{label}={v!r} is never emitted" for v in given if v not in wanted]
    known = expr.known_labels(exported)
    for group in expr.grouping:
        found += [f"grouping by unknown label {g}" for g in group if g not in known]
    found += [f"unknown label {x}" for x in expr.labels_printed - known]
    return found


# ---- the sources -----------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CHART / "files" / "dashboard.json").read_text())
    return data


def panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[tuple[str, Expr, str]]:
    """(where, expression, legendFormat) for every target and every variable query."""
    found = [
        (f"panel {p['title']!r} {t['refId']}", Expr(t["expr"]), t.get("legendFormat", ""))
        for p in panels()
        for t in p.get("targets", [])
    ]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            found.append((f"variable {variable['name']}", Expr(text), ""))
    return found


def rule_values(**prometheus_rule: Any) -> dict[str, Any]:
    vals = copy.deepcopy(values("all-on"))
    vals["prometheusRule"] = {
        **vals["prometheusRule"],
        "enabled": True,
        "disabled": [],
        **prometheus_rule,
    }
    return vals


def rules(**prometheus_rule: Any) -> list[Doc]:
    (rule,) = kinds(render(rule_values(**prometheus_rule)), "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def alert_queries() -> list[tuple[str, Expr, str]]:
    return [(f"alert {r['alert']}", Expr(r["expr"]), "") for r in rules()]


def legend_labels(legend: str) -> set[str]:
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))


# ---- the checker checks ----------------------------------------------------------------------


def test_the_checker_sees_metrics_labels_and_malformed_expressions(metrics_scrape: Scrape) -> None:
    expr = Expr(
        'sum by (pod) (rate(clerk_gateway_requests_total{job="x",decision=~"allow|deny"}[5m]))'
        " / ignoring(le) scalar(process_open_fds) > 0.5"
    )
    assert expr.metrics == {"clerk_gateway_requests_total", "process_open_fds"}
    assert expr.functions == {"sum", "rate", "scalar"}
    assert expr.grouping == [["pod"], ["le"]]
    assert problems(expr, metrics_scrape) == ["grouping by unknown label le"]
    bad = Expr('sum(rate(clerk_gateway_request_total{rout="x",decision="allowed"}[5m])')
    assert problems(bad, metrics_scrape) == [
        "unbalanced brackets",
        "unknown metric clerk_gateway_request_total",
    ]
    assert problems(
        Expr('rate(clerk_gateway_requests_total{rout="x",decision="allowed"}[1m])'), metrics_scrape
    ) == [
        "clerk_gateway_requests_total has no label rout",
        "decision='allowed' is never emitted",
    ]
    assert (
        problems(
            Expr("histogram_quantile(0.9, clerk_gateway_upstream_duration_seconds_bucket)"),
            metrics_scrape,
        )
        == []
    )
    assert problems(Expr("clerk_gateway_requests_in_flight_bucket"), metrics_scrape) == [
        "unknown metric clerk_gateway_requests_in_flight_bucket"
    ]
    assert problems(Expr("label_values(clerk_gateway_build_info, nmspace)"), metrics_scrape) == [
        "unknown label nmspace"
    ]
    assert problems(Expr('{job="x"}'), metrics_scrape) == [
        'selector without a metric name: {job="x"}'
    ]
    assert problems(Expr("rate(x[5m]))"), metrics_scrape) != []
    assert problems(Expr("quantile_over_time(0.5, process_open_fds[5m])"), metrics_scrape) == [
        "unknown function quantile_over_time"
    ]


def test_the_scrape_has_what_an_operator_expects_and_no_created_series(
    metrics_scrape: Scrape,
) -> None:
    """Issue 15's list, read from the real scrape the checks above run against."""
    series = metrics_scrape.series
    assert "_created" not in metrics_scrape.text  # no family carries a creation timestamp
    assert series["clerk_gateway_build_info"] == {"version", "python", "build"}
    # which build a pod runs (compiled or the pure fallback) is visible from the scrape
    assert f'build="{gateway.build()}"' in metrics_scrape.text
    assert series["clerk_gateway_policy_info"] == {"digest"}
    assert "clerk_gateway_policy_last_reload_success_timestamp_seconds" in series
    assert "clerk_gateway_upstream_duration_seconds" in metrics_scrape.histograms
    assert {"upstream", "le"} <= series["clerk_gateway_upstream_duration_seconds"]
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= set(
        series
    )
    seen: dict[str, set[str]] = {}
    for name, labels, _ in metrics_scrape.samples:
        for label, value in labels.items():
            seen.setdefault(f"{name}:{label}", set()).add(value)
    # the label values the checks accept are ones the gateway emits
    assert seen["clerk_gateway_requests_total:decision"] == KNOWN_VALUES["decision"]
    assert "" in seen["clerk_gateway_requests_total:reason"]  # allowed: reason=""
    for fam, results in RESULT_VALUES.items():
        assert seen[f"{fam}:result"] == results


# ---- dashboard -------------------------------------------------------------------------------


def test_every_dashboard_query_uses_exported_metrics_and_their_labels(
    metrics_scrape: Scrape,
) -> None:
    queries = dashboard_queries()
    assert len(queries) > 25
    found = []
    for where, expr, legend in queries:
        found += [f"{where}: {p}" for p in problems(expr, metrics_scrape)]
        unknown = legend_labels(legend) - expr.output_labels(metrics_scrape)
        if unknown:
            found.append(f"{where}: legend prints {sorted(unknown)}, not in the result")
    assert found == []


def test_the_dashboard_answers_an_operators_questions(metrics_scrape: Scrape) -> None:
    queries = dashboard_queries()
    used = {fam for _, expr, _ in queries for fam in expr.families(metrics_scrape).values()}
    assert used >= {
        "clerk_gateway_requests_total",
        "clerk_gateway_request_duration_seconds",
        "clerk_gateway_upstream_duration_seconds",
        "clerk_gateway_upstream_errors_total",
        "clerk_gateway_jwks_age_seconds",
        "clerk_gateway_jwks_fetches_total",
        "clerk_gateway_policy_reloads_total",
        "clerk_gateway_policy_info",
        "clerk_gateway_webhooks_total",
        "clerk_gateway_handshakes_total",
        "process_resident_memory_bytes",
    }
    texts = [expr.text for _, expr, _ in queries]
    groupings = {tuple(g) for _, expr, _ in queries for g in expr.grouping}
    assert ("decision",) in groupings
    assert ("reason",) in groupings
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(
            f"histogram_quantile({quantile}," in t and "request_duration_seconds_bucket" in t
            for t in texts
        ), quantile
    assert any("upstream_duration_seconds_bucket" in t and "histogram_quantile" in t for t in texts)
    # A ratio by decision and by reason: a rate divided by the total.
    assert any("by (decision)" in t and "scalar(sum(rate(" in t for t in texts)
    assert any("by (reason)" in t and "scalar(sum(rate(" in t for t in texts)


def test_the_dashboard_is_well_formed_and_filters_by_its_variables() -> None:
    board = dashboard()
    assert board["uid"] == "clerk-gateway"
    variables = [v["name"] for v in board["templating"]["list"]]
    assert variables == ["datasource", "namespace", "job"]
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            for name, matchers in Expr(target["expr"]).selectors:
                assert ("namespace", "=", "$namespace") in matchers, (panel["title"], name)
                assert ("job", "=~", "$job") in matchers, (panel["title"], name)


def test_the_dashboard_ships_as_a_configmap_for_the_grafana_sidecar() -> None:
    docs = render(values("all-on"))
    configmap = named(docs, "ConfigMap", "gw-clerk-gateway-dashboard")
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Gateways"}
    assert json.loads(configmap["data"]["clerk-gateway.json"]) == dashboard()
    vals = copy.deepcopy(values("all-on"))
    vals["grafanaDashboard"] = {"enabled": True, "labels": {"grafana_dashboard": "clerk"}}
    configmap = named(render(vals), "ConfigMap", "gw-clerk-gateway-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "clerk"
    assert configmap["metadata"]["namespace"] == "apps"
    vals["grafanaDashboard"]["enabled"] = False
    assert [c["metadata"]["name"] for c in kinds(render(vals), "ConfigMap")] == ["gw-clerk-gateway"]


# ---- alerts ----------------------------------------------------------------------------------

ALERTS = {
    "ClerkGatewayHigh5xxRatio",
    "ClerkGatewayNotReady",
    "ClerkGatewayJWKSStale",
    "ClerkGatewayJWKSFetchFailing",
    "ClerkGatewayPolicyReloadFailed",
    "ClerkGatewayPolicyDiverged",
    "ClerkGatewayUpstreamErrors",
    "ClerkGatewayWebhookSignatureFailures",
}
RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}


def test_every_alert_uses_exported_metrics_and_their_labels(metrics_scrape: Scrape) -> None:
    found = [
        f"{where}: {p}"
        for where, expr, _ in alert_queries()
        for p in problems(expr, metrics_scrape)
    ]
    assert found == []


def test_alerts_are_complete_prometheus_rules(metrics_scrape: Scrape) -> None:
    every = rules()
    assert {r["alert"] for r in every} == ALERTS
    for rule in every:
        assert set(rule) <= RULE_KEYS, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["labels"]["team"] == "platform"  # alertLabels
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"])
        # Prometheus's own templates reach Prometheus, and print only labels the result has.
        printed = set(re.findall(r"\$labels\.(\w+)", rule["annotations"]["summary"]))
        assert "{{" in rule["annotations"]["summary"], rule["alert"]
        assert printed <= Expr(rule["expr"]).output_labels(metrics_scrape), rule["alert"]


def test_alerts_pick_this_releases_series_and_take_thresholds_from_values() -> None:
    docs = render(rule_values())
    admin = named(docs, "Service", "gw-clerk-gateway-admin")
    job = admin["metadata"]["name"]  # the ServiceMonitor's job label is the Service's name
    for rule in rules():
        for _, matchers in Expr(rule["expr"]).selectors:
            assert ("namespace", "=", "apps") in matchers, rule["alert"]
            assert ("job", "=", job) in matchers, rule["alert"]
    thresholds = {
        "errorRatio": 0.07,
        "jwksMaxAgeSeconds": 1234,
        "upstreamErrorsPerSecond": 2.5,
        "webhookFailures": 42,
    }
    by_name = {r["alert"]: r["expr"] for r in rules(thresholds=thresholds)}

    def threshold(alert: str) -> float:
        return float(re.findall(r">\s*([\d.]+)\s*$", by_name[alert].strip())[-1])

    assert threshold("ClerkGatewayHigh5xxRatio") == 0.07
    assert threshold("ClerkGatewayJWKSStale") == 1234
    assert threshold("ClerkGatewayUpstreamErrors") == 2.5
    assert threshold("ClerkGatewayWebhookSignatureFailures") == 42
    custom = rules(selector='cluster="eu",job="gateway"')
    for rule in custom:
        for _, matchers in Expr(rule["expr"]).selectors:
            assert ("cluster", "=", "eu") in matchers
            assert ("namespace", "=", "apps") not in matchers


def test_alerts_can_be_left_out() -> None:
    kept = {r["alert"] for r in rules(disabled=["ClerkGatewayUpstreamErrors"])}
    assert kept == ALERTS - {"ClerkGatewayUpstreamErrors"}
    vals = rule_values()
    vals["prometheusRule"]["enabled"] = False
    assert kinds(render(vals), "PrometheusRule") == []


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_webhook_and_decision_filters_use_real_reason_codes(
    source: str, metrics_scrape: Scrape
) -> None:
    queries = dashboard_queries() if source == "dashboard" else alert_queries()
    filtered = [
        (label, value)
        for _, expr, _ in queries
        for _, matchers in expr.selectors
        for label, _, value in matchers
        if label in {"decision", "outcome", "result"}
    ]
    assert filtered  # the check below has something to check
    assert [
        p for _, expr, _ in queries for p in problems(expr, metrics_scrape) if "never emitted" in p
    ] == []
