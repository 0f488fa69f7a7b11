"""One pass over every tenant: observe (dns) -> decide (policy) -> act (exchange) -> record (store).

This is the only module that wires the outside systems together; `--once` and the daemon both
call `run_cycle`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
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
    TenantRecord,
    TenantState,
    Transition,
    Verdict,
)
from .providers import Provider
from .settings import Config, TenantConfig
from .store import Store, StoredTenant

log = get_logger("mxwatch.cycle")

Clock = Callable[[], datetime]


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


@dataclass(frozen=True)
class CycleReport:
    states: dict[str, TenantState]
    verdicts: dict[str, Verdict]
    errors: int
    duration: float
    # For notifications and metrics (daemon.py): what changed, and every source's answer.
    journal: tuple[Transition, ...] = ()
    dns_answers: dict[str, int] = field(default_factory=dict)  # per-source verdict -> count

    @property
    def transitions(self) -> int:
        return len(self.journal)

    @property
    def exit_code(self) -> int:
        """0 ok; 1 when a tenant is blocked or regressed, or anything failed (DESIGN.md §5)."""
        troubled = {TenantState.BLOCKED, TenantState.REGRESSED}
        return 1 if self.errors or troubled & set(self.states.values()) else 0


async def run_cycle(
    config: Config,
    store: Store,
    dns: DnsSource,
    exchange: ExchangeApi,
    *,
    dry_run: bool,
    clock: Clock = utc_now,
) -> CycleReport:
    started = time.monotonic()
    stored = {t.name: store.load(t.name) for t in config.tenants}
    # The accepted domains as last read are the stored domain rows.
    sets = {t.name: policy.domain_sets(t, _names(stored[t.name])) for t in config.tenants}
    requests = [(d, t.provider) for t in config.tenants for d in sets[t.name].observed]
    log.info("cycle_started", tenants=len(config.tenants), domains=len(requests), dry_run=dry_run)
    observations = await dns.observe_many(requests, clock())
    context = _CycleContext(config, dns, exchange, dry_run, clock)
    runs = [
        _run_tenant(context, t, stored[t.name], sets[t.name], observations) for t in config.tenants
    ]
    results = await asyncio.gather(*runs)
    transitions = [t for r in results for t in r.transitions]
    store.save_cycle([r.stored for r in results], transitions)
    for transition in transitions:
        _log_transition(transition)
    report = CycleReport(
        states={r.stored.record.name: r.stored.record.state for r in results},
        verdicts={d: o.verdict for d, o in observations.items()},
        errors=sum(r.errors for r in results),
        duration=time.monotonic() - started,
        journal=tuple(transitions),
        dns_answers=dict(
            Counter(s.verdict.value for o in observations.values() for s in o.sources)
        ),
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


def _names(stored: StoredTenant | None) -> list[str]:
    return [d.domain for d in stored.domains] if stored else []


@dataclass(frozen=True)
class _CycleContext:
    config: Config
    dns: DnsSource
    exchange: ExchangeApi
    dry_run: bool
    clock: Clock


async def _run_tenant(
    context: _CycleContext,
    tenant: TenantConfig,
    stored: StoredTenant | None,
    sets: policy.DomainSets,
    observations: dict[str, DomainObservation],
) -> TenantResult:
    previous = stored or StoredTenant(
        tenant.tenant_id, tenant.connector, TenantRecord(tenant.name, since=context.clock()), ()
    )
    try:
        run = _TenantRun(context, tenant, previous)
        return await run.execute(sets, observations)
    except Exception as exc:  # one tenant's bug or outage must never stop the others
        log.error("tenant_failed", tenant=tenant.name, error=f"{type(exc).__name__}: {exc}")
        return TenantResult(previous, (), 1)


class _TenantRun:
    """observe -> decide -> act for one tenant; collects what is to be recorded."""

    def __init__(
        self, context: _CycleContext, tenant: TenantConfig, previous: StoredTenant
    ) -> None:
        self.tenant, self.previous = tenant, previous
        self.config, self.exchange = context.config, context.exchange
        self.dns, self.dry_run, self.clock = context.dns, context.dry_run, context.clock
        self.transitions: list[Transition] = []
        self.errors = 0
        self.records: dict[str, DomainRecord] = {}

    async def execute(
        self, sets: policy.DomainSets, observations: dict[str, DomainObservation]
    ) -> TenantResult:
        self._observe({d: observations[d] for d in sets.observed})
        record = replace(self.previous.record, name=self.tenant.name)
        why = policy.connector_read_reason(
            self.tenant.name, record, self._pick(sets.managed), self.config.policy, self.clock()
        )
        read: policy.ConnectorRead = None
        if why is not None:
            log.debug("connector_read", tenant=self.tenant.name, why=why)
            read, sets = await self._read_exchange(sets)
        managed = self._pick(sets.managed)
        decision = policy.decide(
            self.tenant.name,
            record,
            managed,
            read,
            self.tenant.provider,
            self.config.policy,
            self.clock(),
            unmanaged=self._pick(sets.unmanaged),
        )
        self._note(decision)
        record = decision.record
        for action in decision.actions:
            record = await self._act(record, managed, action)
        stored = StoredTenant(
            self.tenant.tenant_id, self.tenant.connector, record, self._pick(sets.observed)
        )
        return TenantResult(stored, tuple(self.transitions), self.errors)

    def _pick(self, names: Sequence[str]) -> tuple[DomainRecord, ...]:
        return tuple(self.records[d] for d in names)

    def _observe(self, observed: dict[str, DomainObservation]) -> None:
        known = {d.domain: d for d in self.previous.domains}
        records, changes = policy.update_domains(self.tenant.name, known, observed, self.clock())
        self.records.update((r.domain, r) for r in records)
        self.transitions.extend(changes)
        for domain, observation in observed.items():
            if observation.verdict is Verdict.UNKNOWN:
                log.warning(
                    "dns_inconclusive",
                    tenant=self.tenant.name,
                    domain=domain,
                    reason=observation.reason,
                )

    async def _read_exchange(
        self, sets: policy.DomainSets
    ) -> tuple[policy.ConnectorRead, policy.DomainSets]:
        """Read the connector and the accepted domains; observe accepted domains new to us."""
        try:
            lookup = await self.exchange.find_connector(self.tenant, self.tenant.connector)
            accepted = await self.exchange.accepted_domains(self.tenant)
        except ExchangeError as exc:
            return self._failed("Get-InboundConnector", exc.failure), sets
        fresh = policy.domain_sets(self.tenant, accepted.names)
        new = [d for d in fresh.observed if d not in self.records]
        if new:
            log.info("accepted_domains_added", tenant=self.tenant.name, domains=new)
            requests = [(d, self.tenant.provider) for d in new]
            self._observe(await self.dns.observe_many(requests, self.clock()))
        return lookup, fresh

    async def _act(
        self, record: TenantRecord, domains: Sequence[DomainRecord], action: policy.Action
    ) -> TenantRecord:
        enable = isinstance(action, policy.Enable)
        if self.dry_run:
            event = "would_enable" if enable else "would_disable"
            log.info(
                event, tenant=self.tenant.name, connector=self.tenant.connector, guid=action.guid
            )
            return record
        outcome: Connector | ExchangeFailure
        try:
            outcome = await self.exchange.set_connector_enabled(self.tenant, action.guid, enable)
        except ExchangeError as exc:
            outcome = self._failed("Set-InboundConnector", exc.failure)
        else:
            event = "connector_enabled" if outcome.enabled else "connector_disabled"
            log.info(
                event,
                tenant=self.tenant.name,
                connector=outcome.name,
                guid=outcome.guid,
                read_back_enabled=outcome.enabled,
            )
        decision = policy.after_action(
            self.tenant.name, record, domains, action, outcome, self.clock()
        )
        self._note(decision)
        return decision.record

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
