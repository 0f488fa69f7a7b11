"""Prometheus metrics: served on `[metrics] listen` by the daemon (httpd.py), or written by
`--once`.

Values are updated from the event loop once per cycle (from the CycleReport and a copy of the
Exchange client's counters), so the HTTP thread only ever reads a consistent snapshot.

Per-tenant series carry a `tenant` label and never a domain label: an MSP has hundreds of
tenants but tens of thousands of domains, which would be as many series.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    write_to_textfile,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import __version__
from .cycle import CycleReport
from .exchange import ExchangeStats
from .model import TenantState, Verdict
from .store import CycleRun, StoredTenant

# Cycles take well under a second for a few domains and up to minutes for hundreds of tenants
# with throttled Exchange calls.
_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))


class _ExchangeCalls(Collector):
    """mxwatch_exchange_calls_total from the last snapshot of ExchangeStats.api_calls."""

    def __init__(self) -> None:
        self.calls: Tally[tuple[str, str]] = Tally()
        self.tokens = 0

    def collect(self) -> Iterator[CounterMetricFamily]:
        calls = CounterMetricFamily(
            "mxwatch_exchange_calls",
            "Exchange admin API requests, by cmdlet and HTTP status (or timeout/network)",
            labels=["cmdlet", "status"],
        )
        for (cmdlet, status), count in sorted(self.calls.items()):
            calls.add_metric([cmdlet, status], count)
        yield calls
        yield CounterMetricFamily(
            "mxwatch_exchange_token_requests",
            "Tokens fetched from the identity platform (token cache misses)",
            value=self.tokens,
        )


@dataclass(frozen=True)
class _TenantSample:
    name: str
    state: TenantState
    connector_enabled: bool | None  # None: not read yet
    eligible_at: datetime | None
    verdicts: Tally[Verdict]


def _tenant_sample(stored: StoredTenant) -> _TenantSample:
    record = stored.record
    # A domain not observed yet has no verdict and is left out, as in mxwatch_domains.
    verdicts = Tally(d.verdict for d in stored.domains if d.verdict is not None)
    return _TenantSample(
        record.name, record.state, record.connector_enabled, record.eligible_at, verdicts
    )


class _TenantSeries(Collector):
    """The per-tenant gauges, from the last cycle's tenants. The snapshot is replaced whole,
    so a tenant removed from the config loses its series at the next cycle."""

    def __init__(self) -> None:
        self.snapshot: tuple[_TenantSample, ...] = ()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state, connector, eligible, domains = _tenant_families()
        for sample in self.snapshot:  # read once: a cycle may replace it meanwhile
            for value in TenantState:
                state.add_metric([sample.name, value.value], float(sample.state is value))
            if sample.connector_enabled is not None:
                connector.add_metric([sample.name], float(sample.connector_enabled))
            if sample.eligible_at is not None:
                eligible.add_metric([sample.name], sample.eligible_at.timestamp())
            for verdict in Verdict:
                domains.add_metric([sample.name, verdict.value], sample.verdicts[verdict])
        yield from (state, connector, eligible, domains)


def _tenant_families() -> tuple[GaugeMetricFamily, ...]:
    return (
        GaugeMetricFamily(
            "mxwatch_tenant_state",
            "1 for the tenant's current state, 0 for the others",
            labels=["tenant", "state"],
        ),
        GaugeMetricFamily(
            "mxwatch_connector_enabled",
            "1 when the tenant's connector was last read enabled, 0 disabled (absent: not read)",
            labels=["tenant"],
        ),
        GaugeMetricFamily(
            "mxwatch_tenant_eligible_timestamp_seconds",
            "Unix time a settling tenant's connector may be enabled (absent when not settling)",
            labels=["tenant"],
        ),
        GaugeMetricFamily(
            "mxwatch_tenant_domains",
            "The tenant's covered domains by their last combined verdict",
            labels=["tenant", "verdict"],
        ),
    )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cycles = Counter("mxwatch_cycles", "Cycles run, by outcome", ["outcome"], registry=r)
        self.duration = Histogram(
            "mxwatch_cycle_duration_seconds",
            "Duration of finished cycles",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.domains = Gauge(
            "mxwatch_domains",
            "Domains by combined verdict in the last cycle",
            ["verdict"],
            registry=r,
        )
        self.tenants = Gauge(
            "mxwatch_tenants", "Tenants by state after the last cycle", ["state"], registry=r
        )
        self.dns = Counter(
            "mxwatch_dns_queries",
            "MX answers by outcome, one per domain and DNS source",
            ["outcome"],
            registry=r,
        )
        self.last_success = Gauge(
            "mxwatch_last_success_timestamp_seconds",
            "Unix time the last cycle without errors finished",
            registry=r,
        )
        self.last_cycle = Gauge(
            "mxwatch_last_cycle_timestamp_seconds", "Unix time the last cycle finished", registry=r
        )
        self.leader = Gauge(
            "mxwatch_leader",
            "1 while this process acts on the state; 0 while it stands by (replicas)",
            registry=r,
        )
        self.leader.set(1)  # a single mxwatch acts; replicas say otherwise once they know
        self.interval = Gauge(
            "mxwatch_cycle_interval_seconds",
            "daemon.interval: a cycle is due this often (alerts on staleness compare with it)",
            registry=r,
        )
        info = Gauge("mxwatch_build_info", "Always 1", ["version"], registry=r)
        info.labels(__version__).set(1)
        self._exchange = _ExchangeCalls()
        r.register(self._exchange)
        self._tenants = _TenantSeries()
        r.register(self._tenants)
        self._exchange_base: Tally[tuple[str, str]] = Tally()
        self._tokens_base = 0
        # Zero for every known label, so a dashboard sees "0 blocked" rather than no series.
        for verdict in Verdict:
            self.domains.labels(verdict.value)
        for state in TenantState:
            self.tenants.labels(state.value)
        for outcome in ("ok", "errors", "failed"):
            self.cycles.labels(outcome)

    def restore(self, last: CycleRun | None) -> None:
        """Timestamps from the store, so they survive restarts and `--once` runs."""
        if last is None:
            return
        self.last_cycle.set(last.finished_at.timestamp())
        if last.last_ok_at is not None:
            self.last_success.set(last.last_ok_at.timestamp())

    def set_interval(self, interval: timedelta) -> None:
        """At start and on reload: staleness is judged against the interval in force."""
        self.interval.set(interval.total_seconds())

    def observe(self, report: CycleReport, finished: datetime, stats: ExchangeStats) -> None:
        self.cycles.labels("errors" if report.errors else "ok").inc()
        self._tenants.snapshot = tuple(_tenant_sample(t) for t in report.tenants)
        self.duration.observe(report.duration)
        _set_counts(self.domains, Tally(v.value for v in report.verdicts.values()), Verdict)
        _set_counts(self.tenants, Tally(s.value for s in report.states.values()), TenantState)
        for outcome, count in report.dns_answers.items():
            self.dns.labels(outcome).inc(count)
        self.last_cycle.set(finished.timestamp())
        if not report.errors:
            self.last_success.set(finished.timestamp())
        self.exchange_stats(stats)

    def failed(self) -> None:
        """A cycle that raised (the store failed, say): it recorded nothing."""
        self.cycles.labels("failed").inc()

    def exchange_stats(self, stats: ExchangeStats) -> None:
        self._exchange.calls = self._exchange_base + stats.api_calls
        self._exchange.tokens = self._tokens_base + stats.token_requests

    def retire_exchange(self, stats: ExchangeStats) -> None:
        """Keep the counts of an Exchange client that is replaced (config reload)."""
        self._exchange_base += stats.api_calls
        self._tokens_base += stats.token_requests

    def write_textfile(self, path: Path) -> None:
        """node-exporter textfile format; written to a temporary file, then renamed."""
        write_to_textfile(str(path), self.registry)


def _set_counts(gauge: Gauge, counts: Tally[str], labels: Iterable[Any]) -> None:
    for label in labels:
        gauge.labels(label.value).set(counts.get(label.value, 0))
