"""Small builders for the values mxwatch.policy reasons about (shared by the policy tests)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from mxwatch.model import (
    Connector,
    ConnectorLookup,
    DomainObservation,
    DomainRecord,
    ErrorKind,
    ExchangeFailure,
    LookupStatus,
    MxRecord,
    Observation,
    TenantRecord,
    TenantState,
    Transition,
    Verdict,
)
from mxwatch.providers import Provider
from mxwatch.settings import PolicyConfig

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
TENANT = "contoso"
IDENTITY = "Mailprotector inbound"
GUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"

FILTER_MX = MxRecord(10, "mx1.inbound.filter.example")
FILTER_MX_2 = MxRecord(20, "mx2.inbound.filter.example")
DIRECT_MX = MxRecord(0, "contoso-com.mail.protection.outlook.com")

PROVIDER = Provider(
    name="testfilter",
    mx=("*.inbound.filter.example",),
    sender_ips=(ipaddress.IPv4Network("198.51.100.0/24"),),
)
PROVIDER_NO_IPS = Provider(name="testfilter", mx=("*.inbound.filter.example",))

F = Verdict.FILTERED
D = Verdict.DIRECT
M = Verdict.MIXED
N = Verdict.NO_MX
U = Verdict.UNKNOWN
NOT_CUT_OVER = (D, M, N)

_MX_FOR = {
    F: (FILTER_MX, FILTER_MX_2),
    D: (DIRECT_MX,),
    M: (FILTER_MX, DIRECT_MX),
    N: (),
    U: (),
}


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def cfg(**overrides: Any) -> PolicyConfig:
    return PolicyConfig(**overrides)


def obs(
    verdict: Verdict,
    *,
    source: str = "192.0.2.53",
    ttl: int | None = 300,
    domain: str = "contoso.com",
    at: datetime = T0,
) -> Observation:
    """One source's answer for a domain."""
    return Observation(
        domain, source, verdict, _MX_FOR[verdict], ttl, f"{verdict.value} answer", at
    )


def dobs(
    verdict: Verdict,
    *,
    domain: str = "contoso.com",
    ttl: int | None = 300,
    at: datetime = T0,
) -> DomainObservation:
    """A combined verdict for one domain in one cycle."""
    ttl = None if verdict is U else ttl
    source = obs(verdict, ttl=ttl, domain=domain, at=at)
    return DomainObservation(
        domain, verdict, _MX_FOR[verdict], ttl, f"{verdict.value} answer", at, (source,)
    )


def drec(
    domain: str,
    verdict: Verdict | None,
    *,
    filtered_since: datetime | None = None,
    old_ttl: int | None = None,
    ttl: int | None = 300,
) -> DomainRecord:
    """A stored domain record. A filtered domain defaults to filtered for the last two hours."""
    if verdict is F and filtered_since is None:
        filtered_since = T0 - timedelta(hours=2)
    mx = _MX_FOR[verdict] if verdict is not None else ()
    return DomainRecord(
        domain,
        verdict,
        mx,
        None if verdict in (None, U) else ttl,
        T0 if verdict is not None else None,
        filtered_since,
        old_ttl,
    )


def domains(*verdicts: Verdict | None, old_ttl: int | None = 300) -> tuple[DomainRecord, ...]:
    """Records for contoso.com, contoso.net, ... with the given verdicts."""
    names = ("contoso.com", "contoso.net", "contoso.org", "contoso.de")
    return tuple(drec(n, v, old_ttl=old_ttl) for n, v in zip(names, verdicts, strict=False))


def connector(**overrides: Any) -> Connector:
    """A disabled connector that passes every audit check for PROVIDER."""
    base = Connector(
        name=IDENTITY,
        guid=GUID,
        enabled=False,
        connector_type="Partner",
        sender_domains=("smtp:*;1",),
        sender_ip_addresses=("198.51.100.0/24",),
        restrict_domains_to_ip_addresses=True,
        restrict_domains_to_certificate=False,
        require_tls=True,
    )
    return replace(base, **overrides)


def found(conn: Connector | None = None, **overrides: Any) -> ConnectorLookup:
    conn = conn if conn is not None else connector(**overrides)
    return ConnectorLookup(IDENTITY, LookupStatus.FOUND, conn, 3)


def missing() -> ConnectorLookup:
    detail = f"no inbound connector is named {IDENTITY!r} or has that GUID"
    return ConnectorLookup(IDENTITY, LookupStatus.MISSING, None, 4, detail)


def ambiguous() -> ConnectorLookup:
    detail = f"2 connectors match {IDENTITY!r}; use a GUID"
    return ConnectorLookup(IDENTITY, LookupStatus.AMBIGUOUS, None, 4, detail)


def failure(kind: ErrorKind, message: str = "") -> ExchangeFailure:
    text = (
        message
        or {
            ErrorKind.TRANSIENT: "HTTP 503 from the admin API",
            ErrorKind.BLOCKED: "HTTP 403: the app lacks the Exchange Administrator role",
            ErrorKind.CREDENTIALS: "AADSTS7000215: invalid client secret",
        }[kind]
    )
    return ExchangeFailure(kind, text)


def tenant(state: TenantState = TenantState.WAITING, **overrides: Any) -> TenantRecord:
    """A tenant whose connector was read five minutes ago (not first sight)."""
    fields: dict[str, Any] = {
        "state": state,
        "since": T0 - timedelta(days=1),
        "reason": "test",
        "connector_guid": GUID,
        "connector_enabled": state in (TenantState.ENABLED, TenantState.REGRESSED),
        "connector_checked_at": T0 - minutes(5),
    }
    fields.update(overrides)
    return TenantRecord(TENANT, **fields)


def moves(transitions: tuple[Transition, ...]) -> list[tuple[str | None, str]]:
    """(from, to) of each transition, for compact assertions."""
    return [(t.from_state, t.to_state) for t in transitions]
