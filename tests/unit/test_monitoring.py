"""deploy/prometheus and deploy/grafana against what mxwatch exports.

promtool's rule tests feed made-up series, so they cannot notice a rule that queries a metric
mxwatch does not have; these tests check every query of the rules and the dashboard against the
series of a real Metrics registry, and (where promtool is installed, as .ci/run installs it)
run promtool on the rules, their unit tests and the dashboard's queries.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from mxwatch.cycle import CycleReport
from mxwatch.exchange import ExchangeStats
from mxwatch.metrics import Metrics
from mxwatch.model import DomainRecord, TenantRecord, TenantState, Verdict
from mxwatch.store import StoredTenant

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "mxwatch.rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "mxwatch.rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "mxwatch.json"
README = REPO / "README.md"
PROMTOOL = shutil.which("promtool")
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

# PromQL words that are not metric names.
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def exported() -> set[str]:
    """Every sample name mxwatch serves, with each per-tenant series present."""
    metrics = Metrics()
    tenant = StoredTenant(
        "t",
        "c",
        TenantRecord("a", TenantState.SETTLING, eligible_at=NOW, connector_enabled=False),
        (DomainRecord("a.com", Verdict.FILTERED),),
    )
    report = CycleReport(
        {"a": TenantState.SETTLING}, {}, 0, 0.1, dns_answers={"filtered": 1}, tenants=(tenant,)
    )
    stats = ExchangeStats(api_calls=Counter({("Get-InboundConnector", "200"): 1}))
    metrics.observe(report, NOW, stats)
    return {sample.name for family in metrics.registry.collect() for sample in family.samples}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings: label values, regexes
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, $__rate_interval included
    text = _GROUPING.sub("", text)
    words = re.findall(r"(?<![\w$.])([A-Za-z_:][\w:]*)\b(?!\s*\()", text)
    return {word for word in words if word.lower() not in _KEYWORDS}


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    document = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in document["panels"] for t in panel.get("targets", [])]
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            # Grafana's label_values(METRIC, LABEL): the metric is what is queried.
            (metric,) = re.findall(r"label_values\((\w+),", variable["query"]["query"])
            queries.append(metric)
    return queries


def test_metric_names_are_found_in_promql() -> None:
    expr = (
        'sum by (le) (rate(a_total{x=~"b|c_d"}[$__rate_interval])) / on(le) b '
        '> bool 3 and absent(c{y="z"}) or time() - d offset 5m'
    )
    assert metric_names(expr) == {"a_total", "b", "c", "d"}


@pytest.mark.parametrize("expr", dashboard_queries())
def test_every_dashboard_query_names_an_exported_metric(expr: str) -> None:
    names = metric_names(expr)
    assert names, f"no metric in {expr!r}"
    assert names <= exported(), f"not exported: {names - exported()}"


def test_the_dashboard_has_the_panels_the_issue_asks_for() -> None:
    titles = {panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]}
    assert {
        "Tenants by state",
        "Domains by verdict",
        "Age of the last success",
        "Tenants",
        "Cycle duration",
        "DNS outcomes",
        "Exchange calls by status",
    } <= titles


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule["alert"])
def test_every_alert_is_complete_and_queries_exported_metrics(rule: dict[str, Any]) -> None:
    names = metric_names(rule["expr"])
    assert names and names <= exported(), names - exported()
    assert rule["for"] and rule["labels"]["severity"] in ("critical", "warning")
    annotations = rule["annotations"]
    assert annotations.keys() == {"summary", "description", "runbook_url"}
    # Each runbook is a heading of the README (GitHub's anchor: lower case, no punctuation).
    anchor = annotations["runbook_url"].split("#")[1]
    headings = re.findall(r"^#+ (.+)$", README.read_text(), re.MULTILINE)
    assert anchor in {re.sub(r"[^\w -]", "", h).lower().replace(" ", "-") for h in headings}


def test_the_alerts_the_issue_asks_for() -> None:
    severities = {rule["alert"]: rule["labels"]["severity"] for rule in rules()}
    assert severities == {
        "MxwatchAbsent": "critical",
        "MxwatchCyclesStale": "critical",
        "MxwatchTenantRegressed": "critical",
        "MxwatchTenantBlocked": "warning",
        "MxwatchExchangeErrorsRising": "warning",
    }
    blocked = next(rule for rule in rules() if rule["alert"] == "MxwatchTenantBlocked")
    assert blocked["for"] == "1h"


needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")


def promtool(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@needs_promtool
def test_promtool_checks_the_rules_and_runs_their_tests() -> None:
    checked = promtool("check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query as a recording rule, with Grafana's variables given values."""
    values = {"$__rate_interval": "5m", "$instance": ".*"}
    records = []
    for number, query in enumerate(dashboard_queries()):
        for variable, value in values.items():
            query = query.replace(variable, value)
        assert "$" not in query, query
        records.append({"record": f"dashboard:query{number}", "expr": query})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    checked = promtool("check", "rules", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
