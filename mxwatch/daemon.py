"""The long-running service: an APScheduler loop around the same cycle `--once` runs.

One Store, one DnsObserver and one ExchangeClient live as long as the process, so MSAL's token
cache and the HTTP connection pool are reused from cycle to cycle. Signals:

- SIGTERM/SIGINT: stop scheduling, let a running cycle finish (its Exchange write and its
  store record) for up to SHUTDOWN_GRACE seconds, then exit 0;
- SIGHUP: reload and validate the config; on error keep the old one and log why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import __version__, health
from .config import ConfigError, load_config
from .cycle import DEFAULT_LOCK_WAIT
from .exchange import ExchangeClient
from .httpd import StatusServer
from .leadership import Lead
from .logs import get_logger
from .metrics import Metrics
from .notify import WebhookNotifier, safe_target
from .runner import (
    NOTIFY_FLUSH,
    Services,
    cycle_and_record,
    remembering_observer,
    warn_exposed_secret_files,
)
from .sdnotify import Notifier as SystemdNotifier
from .settings import Config
from .store import LeaderLost, StateStore, StoreBusy, StoreError, open_store
from .webconfig import WebConfig, exposure, web_config_of

if TYPE_CHECKING:  # imported where used: `--once` and the other commands never schedule
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.interval import IntervalTrigger

log = get_logger("mxwatch.daemon")

SHUTDOWN_GRACE = 30.0  # seconds a running cycle gets to finish after SIGTERM
_JOB = "cycle"


def summary(config: Config, *, dry_run: bool) -> dict[str, Any]:
    """What the daemon runs with, for the logs: counts and settings, never a secret."""
    notify = config.notify
    return {
        "config": str(config.path),
        "state": str(config.daemon.state),
        "tenants": len(config.tenants),
        "domains": sum(len(t.domains) for t in config.tenants),
        # Tenants without `domains` watch their accepted domains, known once read.
        "tenants_on_accepted_domains": sum(not t.domains for t in config.tenants),
        "interval_s": config.daemon.interval.total_seconds(),
        "jitter_s": config.daemon.jitter.total_seconds(),
        "dry_run": dry_run,
        "clouds": sorted({config.exchange.cloud.value}),
        "resolvers": [r.label for r in config.dns.resolvers],
        "metrics": "{}:{}".format(*config.metrics.listen) if config.metrics.listen else None,
        "notify": (
            {"webhook": safe_target(notify.webhook), "format": notify.format}
            if notify.webhook
            else None
        ),
    }


class _SchedulerLogBridge(logging.Handler):
    """APScheduler logs through `logging`; send its warnings to our JSON lines instead."""

    def emit(self, record: logging.LogRecord) -> None:
        log.warning("scheduler_warning", message=record.getMessage())


class Daemon:
    def __init__(
        self, config: Config, *, dry_run_flag: bool, environ: Mapping[str, str] | None = None
    ) -> None:
        self.config = config
        self._dry_run_flag = dry_run_flag  # --dry-run sticks across reloads
        self._environ = os.environ if environ is None else environ
        self._systemd = SystemdNotifier(self._environ)
        self._metrics = Metrics()
        self._metrics.set_interval(config.daemon.interval)
        self._stop = asyncio.Event()
        self._running: asyncio.Task[None] | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._services: Services | None = None
        self._lead: Lead | None = None
        self._built_for: tuple[Any, Any, Any] = (None, None, None)

    @property
    def dry_run(self) -> bool:
        return self._dry_run_flag or self.config.daemon.dry_run

    async def run(self) -> int:
        web_config = web_config_of(self.config.metrics)  # a bad one is exit 2, before anything
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        _bridge_scheduler_logs()
        with open_store(self.config.daemon.state) as store:
            self._metrics.restore(store.last_cycle())
            self._services = self._build_services(store)
            self._lead = Lead(
                store,
                lambda leading: self._metrics.leader.set(int(leading)),
                backoff=2 * self.config.daemon.interval.total_seconds(),
            )
            server = self._serve_metrics(web_config)
            try:
                await self._serve(loop)
            finally:
                await self._close(server)
        log.info("daemon_stopped")
        return 0

    # -- running -------------------------------------------------------------------------------

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        scheduler = AsyncIOScheduler(event_loop=loop, timezone="UTC")
        self._scheduler = scheduler
        scheduler.add_job(
            self._tick,
            trigger=self._trigger(),
            id=_JOB,
            name="mxwatch cycle",
            coalesce=True,  # after a suspend or a long cycle, run once, not once per miss
            max_instances=1,  # never two cycles on the same state at once
            misfire_grace_time=None,  # a late cycle still runs (coalesced) however late
            next_run_time=datetime.now(UTC),  # the first cycle at start
        )
        scheduler.start()
        log.info(
            "daemon_started", version=__version__, **summary(self.config, dry_run=self.dry_run)
        )
        warn_exposed_secret_files(self.config)
        self._systemd.ready(f"watching {len(self.config.tenants)} tenants")
        watchdog = asyncio.create_task(self._watchdog(), name="mxwatch-watchdog")
        assert self._lead is not None
        lead_watch = asyncio.create_task(self._lead.watch(self._cancel_cycle), name="mxwatch-lead")
        try:
            await self._stop.wait()
        finally:
            self._systemd.stopping()
            scheduler.shutdown(wait=False)
            await self._drain()
            watchdog.cancel()
            lead_watch.cancel()

    def _trigger(self) -> IntervalTrigger:
        from apscheduler.triggers.interval import IntervalTrigger

        daemon = self.config.daemon
        jitter = round(daemon.jitter.total_seconds())  # APScheduler takes whole seconds
        return IntervalTrigger(
            seconds=daemon.interval.total_seconds(), jitter=jitter or None, timezone="UTC"
        )

    async def _tick(self) -> None:
        """The scheduled job. The cycle runs in its own task, shielded: the scheduler's
        shutdown cancels this coroutine, but an Exchange write must be allowed to finish
        and be recorded, which _drain waits for."""
        if self._stop.is_set():
            return
        self._running = asyncio.create_task(self._cycle(), name="mxwatch-cycle")
        # Cancelled only by the scheduler's shutdown; the cycle task itself goes on.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._running)

    def _cancel_cycle(self) -> None:
        """The lead was lost: stop the running cycle now (its writes are fenced anyway)."""
        if self._running is not None and not self._running.done():
            self._running.cancel()

    async def _cycle(self) -> None:
        config = self.config  # a reload during the cycle applies from the next one
        assert self._lead is not None
        # Wait for a --once run on the same state for at most half an interval, so that the
        # next cycle is not pushed back behind it.
        lock_wait = min(DEFAULT_LOCK_WAIT, config.daemon.interval.total_seconds() / 2)
        try:
            if not await self._lead.may_act("mxwatch"):
                return  # a standby: no DNS, no Exchange call, no write
            services = await self._current_services(config)
            await cycle_and_record(
                config, services, dry_run=self.dry_run, lock_wait=lock_wait, holder="mxwatch"
            )
        except StoreBusy as exc:  # another process's cycle: try again next interval
            log.warning("state_busy", detail=str(exc))
        except LeaderLost:
            self._lead.lost()
        except StoreError as exc:
            self._metrics.failed()
            log.error("cycle_failed", kind=exc.kind, error=str(exc))
        except Exception as exc:  # a broken cycle is logged; the daemon keeps trying
            self._metrics.failed()
            log.error("cycle_failed", kind="bug", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._log_next_cycle()

    async def _drain(self) -> None:
        running = self._running
        if running is None or running.done():
            return
        log.info("shutdown_waiting", detail="letting the running cycle finish")
        try:
            await asyncio.wait_for(asyncio.shield(running), SHUTDOWN_GRACE)
        except TimeoutError:
            log.error("shutdown_grace_exceeded", grace_s=SHUTDOWN_GRACE)
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running

    def _log_next_cycle(self) -> None:
        job = self._scheduler.get_job(_JOB) if self._scheduler is not None else None
        when = getattr(job, "next_run_time", None)
        if when is not None and not self._stop.is_set():
            log.info("next_cycle", at=when.astimezone(UTC).isoformat().replace("+00:00", "Z"))

    async def _watchdog(self) -> None:
        interval = self._systemd.watchdog_interval
        if interval is None:
            return
        while True:  # stops when the event loop stops, which is what the watchdog is for
            self._systemd.watchdog()
            await asyncio.sleep(interval)

    def stop(self) -> None:
        """Stop as SIGTERM does: no new cycle, a running one finishes (`mxwatch demo` ends its
        daemon this way)."""
        if not self._stop.is_set():
            log.info("daemon_stopping", reason="stop requested")
            self._stop.set()

    def _request_stop(self, sig: signal.Signals) -> None:
        if not self._stop.is_set():
            log.info("daemon_stopping", signal=sig.name)
            self._stop.set()

    # -- services ------------------------------------------------------------------------------

    def _build_services(self, store: StateStore) -> Services:
        config = self.config
        self._built_for = (config.dns, config.exchange, config.notify)
        notifier = WebhookNotifier(config.notify) if config.notify.webhook else None
        dns = remembering_observer(config, store)
        return Services(store, dns, ExchangeClient(config.exchange), self._metrics, notifier)

    async def _current_services(self, config: Config) -> Services:
        """The long-lived clients, rebuilt only for the parts a reload changed."""
        services = self._services
        assert services is not None  # set before the scheduler starts
        dns, exchange, notify = self._built_for
        if config.dns != dns:
            services.dns = remembering_observer(config, services.store)
        if config.exchange != exchange:
            self._metrics.retire_exchange(services.exchange.stats)
            await services.exchange.aclose()
            services.exchange = ExchangeClient(config.exchange)
        if config.notify != notify:
            if services.notifier is not None:
                await services.notifier.aclose(NOTIFY_FLUSH)
            services.notifier = WebhookNotifier(config.notify) if config.notify.webhook else None
        self._built_for = (config.dns, config.exchange, config.notify)
        return services

    def _serve_metrics(self, web_config: WebConfig) -> StatusServer | None:
        listen = self.config.metrics.listen
        if listen is None or self._services is None:
            return None
        server = StatusServer(
            listen,
            registry=self._metrics.registry,
            health=self._health,
            store=self._services.store,  # the page reads the daemon's own store, per request
            web_config=web_config,
        )
        log.info(
            "metrics_listening",
            address=f"{listen[0]}:{server.port}",
            tls=web_config.tls is not None,
            basic_auth=bool(web_config.users),
        )
        warning = exposure(self.config.metrics, web_config)
        if warning is not None:
            log.warning("metrics_exposed", detail=warning)
        return server

    def _health(self) -> tuple[bool, str]:
        services, lead = self._services, self._lead
        if services is None or lead is None:
            return False, "starting"
        interval = self.config.daemon.interval
        if lead.role == "standby":  # a healthy standby is healthy: it is ready to take over
            return health.check_standby(lead.last_look, interval, time.monotonic())
        ok, reason = health.check(services.store.last_cycle(), interval, datetime.now(UTC))
        return ok, f"{lead.role}: {reason}"

    async def _close(self, server: StatusServer | None) -> None:
        services = self._services
        if services is not None:
            if services.notifier is not None:
                await services.notifier.aclose(NOTIFY_FLUSH)
            await services.exchange.aclose()
        if server is not None:
            server.close()

    # -- reload --------------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: validate the file again; apply it only when it is valid."""
        try:
            new = load_config(self.config.path, environ=self._environ)
        except ConfigError as exc:
            log.error(
                "config_reload_failed",
                config=str(self.config.path),
                problems=exc.problems,
                detail="still running on the previous configuration",
            )
            return
        new, kept = self._keep_restart_only(new)
        old_trigger = (self.config.daemon.interval, self.config.daemon.jitter)
        self.config = new
        self._metrics.set_interval(new.daemon.interval)
        if kept:
            log.warning("config_reload_needs_restart", keys=kept, detail="kept the running values")
        if (new.daemon.interval, new.daemon.jitter) != old_trigger and self._scheduler is not None:
            self._scheduler.reschedule_job(_JOB, trigger=self._trigger())
        log.info("config_reloaded", **summary(new, dry_run=self.dry_run))
        self._log_next_cycle()

    def _keep_restart_only(self, new: Config) -> tuple[Config, list[str]]:
        """The state file, the HTTP socket and its web config are read once; changing them needs
        a restart."""
        kept = []
        if new.daemon.state != self.config.daemon.state:
            kept.append("daemon.state")
            new = replace(new, daemon=replace(new.daemon, state=self.config.daemon.state))
        if new.metrics != self.config.metrics:
            kept += [
                f"metrics.{key}"
                for key in ("listen", "web_config")
                if getattr(new.metrics, key) != getattr(self.config.metrics, key)
            ]
            new = replace(new, metrics=self.config.metrics)
        return new, kept


def _bridge_scheduler_logs() -> None:
    logger = logging.getLogger("apscheduler")
    logger.handlers = [_SchedulerLogBridge()]
    logger.setLevel(logging.WARNING)
    logger.propagate = False


async def run_daemon(config: Config, *, dry_run_flag: bool) -> int:
    return await Daemon(config, dry_run_flag=dry_run_flag).run()
