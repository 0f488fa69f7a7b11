"""`mxwatch provision`: read each tenant's connector, show the plan, and with --apply make exactly
the writes it showed.

The plan is pure (provision_plan.py). Without --apply nothing is written anywhere, not even the
state file. With --apply the state is held for the whole run, as a cycle holds it, so a daemon's
cycle and provision never interleave; each write is logged (`connector_created`,
`connector_updated`), journalled, then read back and audited.

Journal entries keep each tenant's chain of states: a write does not change the tenant's state
(only a cycle decides states), so its entry goes from the tenant's current state to the same
state, `waiting -> waiting` for a tenant no cycle has seen yet (every tenant starts waiting).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .cycle import utc_now
from .exchange import ExchangeClient
from .logs import get_logger
from .model import (
    Connector,
    ConnectorLookup,
    ExchangeError,
    ExchangeFailure,
    TenantState,
    Transition,
)
from .policy import audit_connector
from .provision_plan import Action, Create, TenantPlan, plan_tenant
from .settings import Config, TenantConfig
from .store import StateStore, open_store

log = get_logger("mxwatch.provision")

HOLDER = "mxwatch provision"

ShowPlan = Callable[[Sequence[TenantPlan]], None]


@dataclass(frozen=True)
class Applied:
    """What --apply did for one tenant: the write made (described), and what went wrong with
    it or with the connector as read back after it (a non-empty `problem` means exit 1)."""

    tenant: str
    done: str = ""
    problem: str = ""


@dataclass(frozen=True)
class ProvisionReport:
    plans: tuple[TenantPlan, ...]
    applied: tuple[Applied, ...] = ()  # empty without --apply

    @property
    def exit_code(self) -> int:
        """0 ok; 1 when a tenant cannot be provisioned or a write went wrong (as --once)."""
        troubled = any(p.problem for p in self.plans) or any(a.problem for a in self.applied)
        return 1 if troubled else 0


async def run_provision(
    config: Config,
    tenants: Sequence[TenantConfig],
    *,
    apply: bool,
    lock_wait: float,
    show_plan: ShowPlan,
) -> ProvisionReport:
    """Plan every tenant, hand the plan to `show_plan`, and with `apply` carry it out."""
    async with ExchangeClient(config.exchange) as exchange:
        if not apply:
            plans = await _read_plans(exchange, tenants, utc_now())
            show_plan(plans)
            return ProvisionReport(plans)
        with open_store(config.daemon.state) as store:
            await asyncio.to_thread(store.acquire, lock_wait, HOLDER)
            try:
                now = utc_now()
                plans = await _read_plans(exchange, tenants, now)
                show_plan(plans)
                applied = await asyncio.gather(
                    *(
                        _apply(exchange, store, t, p, now)
                        for t, p in zip(tenants, plans, strict=True)
                    )
                )
            finally:
                store.release()
    return ProvisionReport(plans, tuple(applied))


async def _read_plans(
    exchange: ExchangeClient, tenants: Sequence[TenantConfig], now: datetime
) -> tuple[TenantPlan, ...]:
    lookups = await asyncio.gather(*(_lookup(exchange, t) for t in tenants))
    return tuple(
        plan_tenant(t.name, t.connector, t.provider, lookup, now)
        for t, lookup in zip(tenants, lookups, strict=True)
    )


async def _lookup(
    exchange: ExchangeClient, tenant: TenantConfig
) -> ConnectorLookup | ExchangeFailure:
    try:
        return await exchange.find_connector(tenant, tenant.connector)
    except ExchangeError as exc:
        return _failed(tenant, exc.failure)


async def _apply(
    exchange: ExchangeClient,
    store: StateStore,
    tenant: TenantConfig,
    plan: TenantPlan,
    now: datetime,
) -> Applied:
    action = plan.action
    if action is None:
        return Applied(tenant.name)
    try:
        if isinstance(action, Create):
            written = await exchange.create_connector(tenant, action.connector)
        else:
            written = await exchange.add_sender_ips(tenant, action.guid, action.ranges)
    except ExchangeError as exc:
        failure = _failed(tenant, exc.failure)
        return Applied(tenant.name, problem=f"{failure.kind.value}: {failure.message}")
    done = _record(store, tenant, action, written, now)
    if isinstance(action, Create):
        return await _read_back_created(exchange, tenant, written, done)
    return _audited(tenant, written, done)  # add_sender_ips read it back already


def _record(
    store: StateStore, tenant: TenantConfig, action: Action, connector: Connector, now: datetime
) -> str:
    """Log the write (first: should the store fail, the log still has it), then journal it."""
    event, reason, fields = _described(action, connector)
    where = {"connector": connector.name, "guid": connector.guid, "enabled": connector.enabled}
    log.info(event, tenant=tenant.name, **where, **fields)
    stored = store.load(tenant.name)
    state = (stored.record.state if stored else TenantState.WAITING).value
    evidence = {
        "connector": {"name": connector.name, "guid": connector.guid, "enabled": connector.enabled},
        "sender_ip_addresses": list(connector.sender_ip_addresses),
        **fields,
    }
    store.append_journal([Transition(now, tenant.name, None, state, state, reason, evidence)])
    return reason


def _described(action: Action, connector: Connector) -> tuple[str, str, dict[str, Any]]:
    """The log event, the journal reason and the fields of one write."""
    where = f"connector {connector.name!r} ({connector.guid})"
    if isinstance(action, Create):
        reason = f"{where} created by mxwatch provision (disabled)"
        return (
            "connector_created",
            reason,
            {"sender_ips": list(action.connector.sender_ip_addresses)},
        )
    reason = f"sender IPs {', '.join(action.ranges)} added to {where} by mxwatch provision"
    return "connector_updated", reason, {"added": list(action.ranges)}


async def _read_back_created(
    exchange: ExchangeClient, tenant: TenantConfig, created: Connector, done: str
) -> Applied:
    try:
        lookup = await exchange.find_connector(tenant, created.guid)
    except ExchangeError as exc:
        failure = _failed(tenant, exc.failure)
        return Applied(tenant.name, done, f"read-back failed: {failure.message}")
    if lookup.connector is None:
        problem = (
            f"read-back found no connector {created.guid} ({lookup.detail}); directory "
            "replication can take a minute: run provision again to audit it"
        )
        return Applied(tenant.name, done, problem)
    return _audited(tenant, lookup.connector, done)


def _audited(tenant: TenantConfig, connector: Connector, done: str) -> Applied:
    audit = audit_connector(connector, tenant.provider)
    failures = list(audit.failures)
    if connector.enabled:
        # Only a person (or a race with one) can have done this: mxwatch wrote it disabled.
        failures.insert(0, "it is enabled, though mxwatch wrote it disabled")
    if not failures:
        return Applied(tenant.name, done)
    log.error("audit_failed", tenant=tenant.name, connector=connector.name, failures=failures)
    return Applied(tenant.name, done, f"read back: {'; '.join(failures)}")


def _failed(tenant: TenantConfig, failure: ExchangeFailure) -> ExchangeFailure:
    log.error(
        "exchange_error",
        tenant=tenant.name,
        cmdlet=failure.cmdlet,
        kind=failure.kind.value,
        status=failure.status,
        error=failure.message,
    )
    return failure


# --- what a person reads ------------------------------------------------------------------


def plan_lines(plans: Sequence[TenantPlan], *, apply: bool) -> list[str]:
    lines: list[str] = []
    for plan in plans:
        lines.append(f"{plan.tenant}: {plan.found}")
        if plan.action is not None:
            lines.append(f"  + {plan.action.describe()}")
        if plan.problem:
            lines.append(f"  ! cannot be provisioned: {plan.problem}")
        elif plan.action is None:
            lines.append("  nothing to do")
        lines += (f"  note: {note}" for note in plan.notes)
    changes = sum(plan.action is not None for plan in plans)
    if apply:
        lines.append(f"applying {changes} change(s):" if changes else "nothing to change")
    elif changes:
        lines.append(f"plan: {changes} change(s), nothing written; --apply makes them")
    else:
        lines.append("plan: nothing to change")
    return lines


def applied_lines(applied: Sequence[Applied]) -> list[str]:
    lines: list[str] = []
    for result in applied:
        if result.done:
            lines.append(f"{result.tenant}: {result.done}")
        if result.problem:
            lines.append(f"{result.tenant}: ! {result.problem}")
        elif result.done:
            lines.append(f"{result.tenant}: read back, passes the audit")
    return lines
