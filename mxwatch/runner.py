"""Running cycles as a program: the clients a cycle needs for the life of a process, one cycle
with what follows it (the health record, metrics, notifications), and `mxwatch --once`.

The daemon (daemon.py) schedules `cycle_and_record`; the command line runs `run_once`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from . import policy
from .credentials import exposed_secret_files
from .cycle import CycleReport, TenantForecast, plan_cycle, run_cycle
from .dns import DnsObserver
from .exchange import ExchangeClient
from .logs import get_logger
from .metrics import Metrics
from .model import RememberedLookup, TenantState
from .notify import WebhookNotifier
from .settings import Config, PostgresUri
from .store import StateStore, StoredTenant, StoreError, open_store, open_store_readonly

log = get_logger("mxwatch.runner")

NOTIFY_FLUSH = 5.0  # seconds queued webhook posts get at exit


@dataclass
class Services:
    """What one cycle needs beyond the config; owned by the caller."""

    store: StateStore
    dns: DnsObserver
    exchange: ExchangeClient
    metrics: Metrics
    notifier: WebhookNotifier | None = None


async def cycle_and_record(
    config: Config, services: Services, *, dry_run: bool, lock_wait: float, holder: str
) -> CycleReport:
    """One cycle, then what the service adds: the health record, metrics, notifications."""
    report = await run_cycle(
        config,
        services.store,
        services.dns,
        services.exchange,
        dry_run=dry_run,
        lock_wait=lock_wait,
        holder=holder,
    )
    finished = datetime.now(UTC)
    services.store.record_cycle(finished, ok=report.errors == 0, duration=report.duration)
    learned = services.dns.learned()
    if learned:  # a steady cycle learns nothing: no write; what expired goes with the next one
        services.store.remember_lookups(learned, finished)
    if report.duration > config.daemon.interval.total_seconds():
        log.warning(
            "cycle_slow",
            duration_s=round(report.duration, 3),
            interval_s=config.daemon.interval.total_seconds(),
            detail="the cycle took longer than daemon.interval, so the next one comes late; "
            "raise daemon.interval (or shorten the timer's period)",
        )
    services.metrics.observe(report, finished, services.exchange.stats)
    if services.notifier is not None:
        services.notifier.submit(report.journal)  # never waits; see notify.py
    return report


async def run_once(
    config: Config, *, dry_run: bool, metrics_file: Path | None, lock_wait: float
) -> int:
    """`mxwatch --once`: one cycle, flush notifications briefly, write the metrics file."""
    warn_exposed_secret_files(config)
    metrics = Metrics()
    metrics.set_interval(config.daemon.interval)
    with open_store(config.daemon.state) as store:
        metrics.restore(store.last_cycle())
        notifier = WebhookNotifier(config.notify) if config.notify.webhook else None
        async with ExchangeClient(config.exchange) as exchange:
            dns = remembering_observer(config, store)
            services = Services(store, dns, exchange, metrics, notifier)
            try:
                report = await cycle_and_record(
                    config, services, dry_run=dry_run, lock_wait=lock_wait, holder="mxwatch --once"
                )
            finally:
                if notifier is not None:
                    await notifier.aclose(NOTIFY_FLUSH)
    if metrics_file is not None:
        metrics.write_textfile(metrics_file)
    return report.exit_code


def remembering_observer(config: Config, store: StateStore) -> DnsObserver:
    """A DNS observer that starts from the lookups earlier runs kept in the store."""
    dns = DnsObserver(config.dns)
    now = datetime.now(UTC)
    dns.recall(store.recall_lookups(now), now)
    return dns


def warn_exposed_secret_files(config: Config) -> None:
    """A warning at start-up for each credential file every user can read (still used)."""
    for exposed in exposed_secret_files(config):
        log.warning(
            "secret_file_permissions",
            key=exposed.key,
            mode=f"{exposed.mode:04o}",
            fix="chmod o-rwx the file (0600, or 0640 for a group)",
        )


async def run_plan(config: Config) -> list[TenantForecast]:
    """`mxwatch plan`: a live cycle that reads DNS and Exchange and writes nothing, from the
    stored state when there is one (it works before the first `--once`)."""
    now = datetime.now(UTC)
    stored, lookups = _stored(config.daemon.state, now)
    dns = DnsObserver(config.dns)
    dns.recall(lookups, now)
    async with ExchangeClient(config.exchange) as exchange:
        return await plan_cycle(config, stored, dns, exchange)


def _stored(
    state: Path | PostgresUri, now: datetime
) -> tuple[dict[str, StoredTenant], list[RememberedLookup]]:
    """The stored tenants, and the DNS lookups kept for use at `now`."""
    try:
        with open_store_readonly(state) as store:
            return {t.record.name: t for t in store.load_all()}, store.recall_lookups(now)
    except StoreError as exc:
        if exc.kind == "empty":
            return {}, []  # no cycle has run yet
        raise


async def run_observe(config: Config) -> int:
    """`mxwatch --once --observe-only`: what a cycle would decide now, logged, with no lock
    and no write of any kind: it may run beside a daemon that leads. Exit codes as --once."""
    forecasts = await run_plan(config)
    for forecast in forecasts:
        decision, record = forecast.decision, forecast.decision.record
        for action in decision.actions:
            event = "would_enable" if isinstance(action, policy.Enable) else "would_disable"
            log.info(event, tenant=record.name, guid=action.guid)
        log.info(
            "observed",
            tenant=record.name,
            state=forecast.before.state.value,
            next_state=record.state.value,
            waiting_for=decision.waiting_for or None,
        )
    troubled = {TenantState.BLOCKED, TenantState.REGRESSED}
    bad = any(f.errors or f.decision.record.state in troubled for f in forecasts)
    return 1 if bad else 0
