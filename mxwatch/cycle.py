"""One pass over every tenant: observe (dns) -> decide (policy) -> act (exchange) -> record (store).

This is the only module that wires the outside systems together; `--once` and the daemon both
call `run_cycle`. The cycle holds the state exclusively from its first read to its commit.
Tenants run concurrently, each decided as soon as its own domains are observed, so one slow
zone delays only its own tenant.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from . import policy
from .logs import get_logger
from .model import (
    AcceptedDomains,
    Connector,
    ConnectorLookup,
    DomainObservation,
    DomainRecord,
    ExchangeError,
    ExchangeFailure,
    Intent,
    TenantRecord,
    TenantState,
    Transition,
    Verdict,
    WriteAction,
)
from .settings import Config, Provider, TenantConfig
from .store import StateStore, StoredTenant

log = get_logger("mxwatch.cycle")

Clock = Callable[[], datetime]
DEFAULT_LOCK_WAIT = 60.0  # seconds a cycle waits for another process's cycle on the state


def utc_now() -> datetime:
    return datetime.now(UTC)


class DnsSource(Protocol):
    async def observe_many(
        self, requests: Sequence[tuple[str, Provider]], now: datetime
    ) -> dict[str, DomainObservation]: ...


class ExchangeApi(Protocol):
    async def find_connector(self, tenant: TenantConfig, identity: str) -> ConnectorLookup: ...

    async def accepted_domains(self, tenant: TenantConfig) -> AcceptedDomains: ...

    async def set_connector_enabled(
        self, tenant: TenantConfig, guid: str, enabled: bool
    ) -> Connector: ...


@dataclass(frozen=True)
class TenantResult:
    stored: StoredTenant
    transitions: tuple[Transition, ...]
    errors: int
    verdicts: Mapping[str, DomainObservation]


@dataclass(frozen=True)
class CycleReport:
    states: dict[str, TenantState]
    verdicts: dict[str, Verdict]
    errors: int
    duration: float
    # For notifications and metrics (daemon.py): what changed, and every source's answer.
    journal: tuple[Transition, ...] = ()
    dns_answers: dict[str, int] = field(default_factory=dict)  # per-source verdict -> count
    tenants: tuple[StoredTenant, ...] = ()  # as recorded: the per-tenant metrics

    @property
    def transitions(self) -> int:
        return len(self.journal)

    @property
    def exit_code(self) -> int:
        """0 ok; 1 when a tenant is blocked or regressed, or anything failed (DESIGN.md §5)."""
        troubled = {TenantState.BLOCKED, TenantState.REGRESSED}
        return 1 if self.errors or troubled & set(self.states.values()) else 0


@dataclass(frozen=True)
class _CycleContext:
    config: Config
    store: StateStore | None  # None: a plan, which reads Exchange and DNS and writes nothing
    dns: DnsSource
    exchange: ExchangeApi
    dry_run: bool
    rules: policy.Rules
    now: datetime


async def run_cycle(
    config: Config,
    store: StateStore,
    dns: DnsSource,
    exchange: ExchangeApi,
    *,
    dry_run: bool,
    clock: Clock = utc_now,
    lock_wait: float = DEFAULT_LOCK_WAIT,
    holder: str = "mxwatch",
) -> CycleReport:
    """One cycle; StoreBusy when another process holds the state for longer than lock_wait."""
    started = time.monotonic()
    await asyncio.to_thread(store.acquire, lock_wait, holder)  # the loop keeps running
    try:
        rules = policy.rules_of(config, _last_duration(store))
        context = _CycleContext(config, store, dns, exchange, dry_run, rules, clock())
        log.info("cycle_started", tenants=len(config.tenants), dry_run=dry_run)
        results = await asyncio.gather(*(_run_tenant(context, t) for t in config.tenants))
        transitions = [t for r in results for t in r.transitions]
        store.save_cycle([r.stored for r in results], transitions)
    finally:
        store.release()
    for transition in transitions:  # logged only once they are safely in the journal
        _log_transition(transition)
    observed = {d: o for r in results for d, o in r.verdicts.items()}
    report = CycleReport(
        states={r.stored.record.name: r.stored.record.state for r in results},
        verdicts={d: o.verdict for d, o in observed.items()},
        errors=sum(r.errors for r in results),
        duration=time.monotonic() - started,
        journal=tuple(transitions),
        dns_answers=dict(Counter(s.verdict.value for o in observed.values() for s in o.sources)),
        tenants=tuple(r.stored for r in results),
    )
    log.info(
        "cycle_finished",
        duration_s=round(report.duration, 3),
        tenants=dict(Counter(s.value for s in report.states.values())),
        domains=dict(Counter(v.value for v in report.verdicts.values())),
        transitions=report.transitions,
        errors=report.errors,
        dry_run=dry_run,
    )
    return report


def _last_duration(store: StateStore) -> timedelta:
    last = store.last_cycle()
    return timedelta(seconds=last.duration or 0) if last is not None else timedelta(0)


async def _run_tenant(context: _CycleContext, tenant: TenantConfig) -> TenantResult:
    assert context.store is not None
    stored = context.store.load(tenant.name)
    intent = context.store.load_intent(tenant.name)  # a first cycle may have been interrupted
    run = _TenantRun(context, tenant, stored or _first_sight(tenant, context.now, intent))
    try:
        return await run.execute()
    except Exception as exc:  # one tenant's bug or outage must never stop the others
        log.error("tenant_failed", tenant=tenant.name, error=f"{type(exc).__name__}: {exc}")
        # Keep an intent this run committed: its write may have been made.
        return TenantResult(replace(run.previous, intent=run.intent), (), 1, run.observed)


def _first_sight(tenant: TenantConfig, now: datetime, intent: Intent | None) -> StoredTenant:
    record = TenantRecord(tenant.name, since=now)
    return StoredTenant(tenant.tenant_id, tenant.connector, record, (), intent)


@dataclass(frozen=True)
class TenantForecast:
    """What a cycle would decide for one tenant now (`mxwatch plan`)."""

    before: TenantRecord
    decision: policy.Decision
    domains: tuple[DomainRecord, ...]
    errors: int


async def plan_cycle(
    config: Config,
    stored: Mapping[str, StoredTenant],
    dns: DnsSource,
    exchange: ExchangeApi,
    *,
    clock: Clock = utc_now,
) -> list[TenantForecast]:
    """A live, read-only cycle: every tenant observed and its connector read, decided as a
    cycle holding the state would decide, and nothing written anywhere."""
    now = clock()
    context = _CycleContext(config, None, dns, exchange, True, policy.rules_of(config), now)
    runs = [
        _TenantRun(context, t, stored.get(t.name) or _first_sight(t, now, None))
        for t in config.tenants
    ]
    return list(await asyncio.gather(*(run.plan() for run in runs)))


class _TenantRun:
    """observe -> decide -> act for one tenant; collects what is to be recorded."""

    def __init__(self, context: _CycleContext, tenant: TenantConfig, previous: StoredTenant):
        self.context, self.tenant, self.previous = context, tenant, previous
        self.now = context.now
        self.transitions: list[Transition] = []
        self.errors = 0
        self.records = {d.domain: d for d in previous.domains}
        self.observed: dict[str, DomainObservation] = {}
        self.intent = previous.intent  # the write, if any, whose outcome is not yet recorded

    async def execute(self) -> TenantResult:
        accepted = [d.domain for d in self.previous.domains if d.accepted]
        covered: Sequence[str] = policy.covered_domains(self.tenant, accepted)
        await self._observe(covered)
        decision = self._decide(covered, None)
        if decision.needs_connector:
            log.debug("connector_read", tenant=self.tenant.name, why=decision.needs_connector)
            reads = await self._read()
            covered = await self._cover(covered, reads.accepted)
            decision = self._decide(covered, reads)
        self._note(decision)
        record = replace(decision.record, waiting_for=decision.waiting_for)
        if decision.intent_settled:
            self.intent = None
        if decision.confirmed is not None:
            enabled = decision.confirmed.action is WriteAction.ENABLE
            self._log_write(enabled, decision.confirmed.guid, recovered=True)
        for action in decision.actions:
            record = await self._act(record, covered, action)
        domains = tuple(self.records[d] for d in covered)
        stored = StoredTenant(
            self.tenant.tenant_id, self.tenant.connector, record, domains, self.intent
        )
        return TenantResult(stored, tuple(self.transitions), self.errors, self.observed)

    def _decide(self, covered: Sequence[str], reads: policy.Reads | None) -> policy.Decision:
        return policy.decide(
            self.tenant.name,
            replace(self.previous.record, name=self.tenant.name),
            [self.records[d] for d in covered],
            provider=self.tenant.provider,
            rules=self.context.rules,
            now=self.now,
            reads=reads,
            intent=self.previous.intent,
            exclusive=self._exclusive(),
        )

    def _exclusive(self) -> bool:
        """Whether this process holds the state; a plan decides as a cycle holding it would."""
        store = self.context.store
        return store is None or store.holds_exclusively()

    async def plan(self) -> TenantForecast:
        """What a cycle would decide now, from fresh reads of DNS and Exchange; no write."""
        accepted = [d.domain for d in self.previous.domains if d.accepted]
        covered: Sequence[str] = policy.covered_domains(self.tenant, accepted)
        await self._observe(covered)
        reads = await self._read()
        covered = await self._cover(covered, reads.accepted)
        decision = self._decide(covered, reads)
        self._note(decision)
        domains = tuple(self.records[d] for d in covered)
        return TenantForecast(self.previous.record, decision, domains, self.errors)

    # -- observing ---------------------------------------------------------------------------

    async def _observe(self, domains: Sequence[str]) -> None:
        requests = [(d, self.tenant.provider) for d in domains]
        observed = await self.context.dns.observe_many(requests, self.now)
        self.observed.update(observed)
        update = policy.update_domains(
            self.tenant.name, self.records, observed, self.context.rules, self.now
        )
        self.records.update((r.domain, r) for r in update.records)
        self.transitions.extend(update.transitions)
        for domain, why in update.restarts:
            log.warning("domain_streak_restarted", tenant=self.tenant.name, domain=domain, why=why)
        for domain, observation in observed.items():
            if observation.verdict is Verdict.UNKNOWN:
                log.warning(
                    "dns_inconclusive",
                    tenant=self.tenant.name,
                    domain=domain,
                    reason=observation.reason,
                )

    async def _cover(
        self, covered: Sequence[str], accepted: AcceptedDomains | ExchangeFailure | None
    ) -> Sequence[str]:
        """The covered domains after a complete accepted-domain read; new ones observed now."""
        if not isinstance(accepted, AcceptedDomains):
            return covered
        names = set(accepted.names)
        covered = policy.covered_domains(self.tenant, accepted.names)
        new = [d for d in covered if d not in self.records]
        if new:
            log.info("accepted_domains_added", tenant=self.tenant.name, domains=new)
            await self._observe(new)
        for domain in covered:
            self.records[domain] = replace(self.records[domain], accepted=domain in names)
        return covered

    # -- Exchange ----------------------------------------------------------------------------

    async def _read(self) -> policy.Reads:
        """The connector, then (when it could be read) every accepted domain."""
        exchange = self.context.exchange
        try:
            lookup = await exchange.find_connector(self.tenant, self.tenant.connector)
        except ExchangeError as exc:
            return policy.Reads(self._failed("Get-InboundConnector", exc.failure))
        try:
            accepted: AcceptedDomains | ExchangeFailure = await exchange.accepted_domains(
                self.tenant
            )
        except ExchangeError as exc:
            accepted = self._failed("Get-AcceptedDomain", exc.failure)
        return policy.Reads(lookup, accepted)

    async def _act(
        self, record: TenantRecord, covered: Sequence[str], action: policy.Action
    ) -> TenantRecord:
        enable = isinstance(action, policy.Enable)
        if self.context.dry_run:
            event = "would_enable" if enable else "would_disable"
            log.info(
                event, tenant=self.tenant.name, connector=self.tenant.connector, guid=action.guid
            )
            return record
        intent = policy.action_intent(action, self.now)
        assert self.context.store is not None  # a plan never acts
        self.context.store.record_intent(self.tenant.name, intent)  # before the write, always
        self.intent = intent
        outcome: Connector | ExchangeFailure
        try:
            outcome = await self.context.exchange.set_connector_enabled(
                self.tenant, action.guid, enable
            )
        except ExchangeError as exc:
            outcome = self._failed("Set-InboundConnector", exc.failure)
        else:
            self._log_write(outcome.enabled, outcome.guid, read_back_enabled=outcome.enabled)
        domains = [self.records[d] for d in covered]
        decision = policy.after_action(self.tenant.name, record, domains, action, outcome, self.now)
        self._note(decision)
        if decision.intent_settled:
            self.intent = None
        return replace(decision.record, waiting_for=decision.waiting_for)

    def _log_write(self, enabled: bool, guid: str, **fields: Any) -> None:
        """connector_enabled or connector_disabled, as the connector was read back."""
        event = "connector_enabled" if enabled else "connector_disabled"
        log.info(
            event, tenant=self.tenant.name, connector=self.tenant.connector, guid=guid, **fields
        )

    def _failed(self, cmdlet: str, failure: ExchangeFailure) -> ExchangeFailure:
        self.errors += 1
        log.error(
            "exchange_error",
            tenant=self.tenant.name,
            cmdlet=failure.cmdlet or cmdlet,
            kind=failure.kind.value,
            status=failure.status,
            error=failure.message,
        )
        return failure

    def _note(self, decision: policy.Decision) -> None:
        self.transitions.extend(decision.transitions)
        audit = decision.audit
        if audit is not None:
            if audit.failures:
                log.error(
                    "audit_failed",
                    tenant=self.tenant.name,
                    connector=self.tenant.connector,
                    failures=list(audit.failures),
                )
            for warning in audit.warnings:
                log.warning("audit_warning", tenant=self.tenant.name, warning=warning)
            log.info("audit_info", tenant=self.tenant.name, info=list(audit.info))
        if decision.waiting_for and not decision.actions:
            log.debug("tenant_waiting", tenant=self.tenant.name, why=decision.waiting_for)


def _log_transition(transition: Transition) -> None:
    fields: dict[str, Any] = {
        "tenant": transition.tenant,
        "from": transition.from_state,
        "to": transition.to_state,
        "reason": transition.reason,
        "evidence": dict(transition.evidence),
    }
    if transition.domain is not None:
        log.info("domain_verdict_changed", domain=transition.domain, **fields)
        return
    level = "error" if transition.to_state in ("regressed", "blocked") else "info"
    getattr(log, level)("tenant_transition", **fields)
