"""Prometheus metrics: served on `[metrics] listen` by the daemon, or written by `--once`.

Values are updated from the event loop once per cycle (from the CycleReport and a copy of the
Exchange client's counters), so the HTTP thread only ever reads a consistent snapshot.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
    write_to_textfile,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from . import __version__
from .cycle import CycleReport
from .exchange import ExchangeStats
from .model import TenantState, Verdict
from .store import CycleRun

HealthCheck = Callable[[], tuple[bool, str]]

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
        info = Gauge("mxwatch_build_info", "Always 1", ["version"], registry=r)
        info.labels(__version__).set(1)
        self._exchange = _ExchangeCalls()
        r.register(self._exchange)
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

    def observe(self, report: CycleReport, finished: datetime, stats: ExchangeStats) -> None:
        self.cycles.labels("errors" if report.errors else "ok").inc()
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

    def serve(self, host: str, port: int, health: HealthCheck) -> MetricsServer:
        return MetricsServer(host, port, self.registry, health)


def _set_counts(gauge: Gauge, counts: Tally[str], labels: Iterable[Any]) -> None:
    for label in labels:
        gauge.labels(label.value).set(counts.get(label.value, 0))


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scrape must not keep the process alive at exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not news; stderr stays free for real problems."""


class MetricsServer:
    """/metrics (Prometheus text) and /healthz (200 or 503 with the reason) on a thread."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, health: HealthCheck
    ) -> None:
        metrics_app = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                ok, reason = health()
                status = "200 OK" if ok else "503 Service Unavailable"
                start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
                return [f"{'ok' if ok else 'unhealthy'}: {reason}\n".encode()]
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result

        self._server = make_server(
            host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="mxwatch-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
