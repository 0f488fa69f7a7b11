"""Unit tests of the service parts: metrics, health, notification payloads, sd_notify."""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mxwatch import health
from mxwatch.cycle import CycleReport
from mxwatch.exchange import ExchangeStats
from mxwatch.metrics import Metrics
from mxwatch.model import DomainRecord, TenantRecord, TenantState, Transition, Verdict
from mxwatch.notify import is_notable, payload, safe_target
from mxwatch.sdnotify import Notifier
from mxwatch.store import CycleRun, StoredTenant

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def report(errors: int = 0) -> CycleReport:
    return CycleReport(
        states={"a": TenantState.ENABLED, "b": TenantState.WAITING, "c": TenantState.WAITING},
        verdicts={"a.com": Verdict.FILTERED, "b.com": Verdict.DIRECT},
        errors=errors,
        duration=0.3,
        dns_answers={"filtered": 2, "direct": 2},
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_textfile_has_every_series(tmp_path: Path) -> None:
    metrics = Metrics()
    stats = ExchangeStats(token_requests=1)
    stats.api_calls = Counter(
        {("Get-InboundConnector", "200"): 3, ("Set-InboundConnector", "429"): 1}
    )
    metrics.observe(report(), NOW, stats)
    metrics.observe(report(errors=1), NOW + timedelta(minutes=5), stats)
    path = tmp_path / "mxwatch.prom"
    metrics.write_textfile(path)
    found = samples(path.read_text())
    assert list(tmp_path.iterdir()) == [path], "written through a temporary file and renamed"
    assert found[("mxwatch_cycles_total", (("outcome", "ok"),))] == 1
    assert found[("mxwatch_cycles_total", (("outcome", "errors"),))] == 1
    assert found[("mxwatch_cycle_duration_seconds_count", ())] == 2
    assert found[("mxwatch_tenants", (("state", "waiting"),))] == 2
    assert found[("mxwatch_tenants", (("state", "blocked"),))] == 0
    assert found[("mxwatch_domains", (("verdict", "direct"),))] == 1
    assert found[("mxwatch_dns_queries_total", (("outcome", "filtered"),))] == 4
    key = ("mxwatch_exchange_calls_total", (("cmdlet", "Set-InboundConnector"), ("status", "429")))
    assert found[key] == 1
    assert found[("mxwatch_last_success_timestamp_seconds", ())] == NOW.timestamp()
    assert found[("mxwatch_last_cycle_timestamp_seconds", ())] == NOW.timestamp() + 300


def test_retired_exchange_client_counts_are_kept() -> None:
    metrics = Metrics()
    old = ExchangeStats()
    old.api_calls[("Get-InboundConnector", "200")] = 2
    metrics.retire_exchange(old)
    new = ExchangeStats()
    new.api_calls[("Get-InboundConnector", "200")] = 1
    metrics.observe(report(), NOW, new)
    metrics.restore(CycleRun(NOW, ok=False, last_ok_at=NOW - timedelta(hours=1)))
    found = samples(generate_latest(metrics.registry).decode())
    key = ("mxwatch_exchange_calls_total", (("cmdlet", "Get-InboundConnector"), ("status", "200")))
    assert found[key] == 3
    last_ok = (NOW - timedelta(hours=1)).timestamp()
    assert found[("mxwatch_last_success_timestamp_seconds", ())] == last_ok


def stored(name: str, state: TenantState, *verdicts: Verdict | None, **record: Any) -> StoredTenant:
    domains = tuple(DomainRecord(f"d{i}.{name}.com", v) for i, v in enumerate(verdicts))
    return StoredTenant("t", "c", TenantRecord(name, state, **record), domains)


def test_per_tenant_series_follow_the_last_cycle() -> None:
    metrics = Metrics()
    metrics.set_interval(timedelta(minutes=5))
    eligible = NOW + timedelta(minutes=30)
    tenants = (
        stored("a", TenantState.SETTLING, Verdict.FILTERED, None, eligible_at=eligible),
        stored(
            "b",
            TenantState.REGRESSED,
            Verdict.FILTERED,
            Verdict.DIRECT,
            Verdict.DIRECT,
            connector_enabled=True,
        ),
        stored("c", TenantState.WAITING, connector_enabled=False),
    )
    metrics.observe(replace(report(), tenants=tenants), NOW, ExchangeStats())
    found = samples(generate_latest(metrics.registry).decode())
    state = {k[1]: v for k, v in found.items() if k[0] == "mxwatch_tenant_state"}
    assert state[(("state", "regressed"), ("tenant", "b"))] == 1
    assert sum(state.values()) == 3 and len(state) == 3 * len(TenantState)
    assert found[("mxwatch_tenant_eligible_timestamp_seconds", (("tenant", "a"),))] == (
        eligible.timestamp()
    )
    assert not [
        k
        for k in found
        if k[0].startswith("mxwatch_tenant_eligible") and k[1] != (("tenant", "a"),)
    ]
    connector = {k[1]: v for k, v in found.items() if k[0] == "mxwatch_connector_enabled"}
    assert connector == {(("tenant", "b"),): 1, (("tenant", "c"),): 0}, "a: never read"
    assert found[("mxwatch_tenant_domains", (("tenant", "b"), ("verdict", "direct")))] == 2
    assert found[("mxwatch_tenant_domains", (("tenant", "a"), ("verdict", "filtered")))] == 1
    assert found[("mxwatch_tenant_domains", (("tenant", "a"), ("verdict", "unknown")))] == 0
    assert found[("mxwatch_cycle_interval_seconds", ())] == 300
    # A tenant gone from the config is gone from the next cycle's series.
    metrics.observe(replace(report(), tenants=tenants[:1]), NOW, ExchangeStats())
    after = samples(generate_latest(metrics.registry).decode())
    assert {dict(k[1])["tenant"] for k in after if k[0] == "mxwatch_tenant_state"} == {"a"}


@pytest.mark.parametrize(
    ("last", "healthy", "words"),
    [
        (None, False, "no cycle has finished yet"),
        (CycleRun(NOW - timedelta(minutes=14), True, None), True, "840s ago"),
        (CycleRun(NOW - timedelta(minutes=14), False, None), True, "with errors"),
        (CycleRun(NOW - timedelta(minutes=16), True, None), False, "more than 3 x interval"),
    ],
)
def test_health(last: CycleRun | None, healthy: bool, words: str) -> None:
    ok, reason = health.check(last, timedelta(minutes=5), NOW)
    assert ok is healthy and words in reason


def move(to: str, frm: str | None, domain: str | None = None) -> Transition:
    return Transition(NOW, "contoso", domain, frm, to, "why", {})


@pytest.mark.parametrize(
    ("transition", "notable"),
    [
        (move("enabled", "settling"), True),
        (move("regressed", "enabled"), True),
        (move("blocked", "waiting"), True),
        (move("waiting", "regressed"), True),
        (move("waiting", "enabled"), True),
        (move("waiting", "settling"), False),
        (move("settling", "waiting"), False),
        (move("filtered", "direct", "contoso.com"), False),
    ],
)
def test_which_transitions_are_notified(transition: Transition, notable: bool) -> None:
    assert is_notable(transition) is notable


def test_payload_formats() -> None:
    t = move("enabled", "settling")
    assert payload(t, "json")["to"] == "enabled"
    assert payload(t, "slack") == {
        "text": "✅ mxwatch: tenant contoso is now enabled (was settling): why"
    }
    card = payload(t, "teams")["attachments"][0]["content"]
    assert {"title": "To", "value": "enabled"} in card["body"][1]["facts"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T0/B0/secret", "https://hooks.slack.com"),
        (
            "https://x.webhook.office.com:8443/webhookb2/k?sig=s",
            "https://x.webhook.office.com:8443",
        ),
        ("http://[::1]:9000/p?token=t", "http://[::1]:9000"),
    ],
)
def test_safe_target_drops_path_and_query(url: str, shown: str) -> None:
    assert safe_target(url) == shown


def test_sd_notify_abstract_and_path_sockets(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    for address, bind in (("@mxwatch-unit", b"\0mxwatch-unit"), (path, path)):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(bind)
            notifier = Notifier({"NOTIFY_SOCKET": address})
            assert notifier.ready("watching 1 tenants")
            assert server.recv(1024) == b"READY=1\nSTATUS=watching 1 tenants"


def test_sd_notify_is_off_without_systemd() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.stopping()
    assert notifier.watchdog_interval is None


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "nope"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    assert Notifier(env).watchdog_interval == interval
