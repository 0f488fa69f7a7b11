"""Small builders for the values mxwatch.policy reasons about (shared by the policy tests)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from mxwatch.model import (
    AcceptedDomain,
    AcceptedDomains,
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
from mxwatch.policy import Reads, Rules
from mxwatch.settings import PolicyConfig, Provider

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
TENANT = "contoso"
IDENTITY = "Mailprotector inbound"
GUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
GAP = timedelta(minutes=8)  # the allowed gap of a 5-minute interval with 30 s of jitter

FILTER_MX = MxRecord(10, "mx1.inbound.filter.example")
FILTER_MX_2 = MxRecord(20, "mx2.inbound.filter.example")
DIRECT_MX = MxRecord(0, "contoso-com.mail.protection.outlook.com")

PROVIDER = Provider(
    name="testfilter",
    mx=("*.inbound.filter.example",),
    sender_ips=(ipaddress.IPv4Network("198.51.100.0/24"),),
)
PROVIDER_NO_IPS = Provider(name="testfilter", mx=("*.inbound.filter.example",))
# A published /21 and one address: Exchange takes the /21 only as its eight /24s.
PROVIDER_21 = Provider(
    name="wide",
    mx=("*.inbound.filter.example",),
    sender_ips=(
        ipaddress.IPv4Network("203.0.112.0/21"),
        ipaddress.IPv4Network("198.51.100.7/32"),
    ),
)
EIGHT_24S = tuple(f"203.0.{n}.0/24" for n in range(112, 120))

F = Verdict.FILTERED
D = Verdict.DIRECT
M = Verdict.MIXED
N = Verdict.NO_MX
U = Verdict.UNKNOWN
NOT_CUT_OVER = (D, M, N)
NAMES = ("contoso.com", "contoso.net", "contoso.org", "contoso.de")

MX_FOR = {
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


def rules(**overrides: Any) -> Rules:
    return Rules(cfg(**overrides), GAP)


def obs(
    verdict: Verdict,
    *,
    source: str = "192.0.2.53",
    ttl: int | None = 300,
    domain: str = "contoso.com",
    at: datetime = T0,
    authoritative: bool = False,
) -> Observation:
    """One source's answer for a domain."""
    return Observation(
        domain,
        source,
        verdict,
        MX_FOR[verdict],
        ttl,
        f"{verdict.value} answer",
        at,
        authoritative=authoritative,
    )


def dobs(
    verdict: Verdict,
    *,
    domain: str = "contoso.com",
    ttl: int | None = 300,
    at: datetime = T0,
    authoritative: bool = False,
) -> DomainObservation:
    """A combined verdict for one domain in one cycle, from one source."""
    ttl = None if verdict is U else ttl
    source = obs(verdict, ttl=ttl, domain=domain, at=at, authoritative=authoritative)
    return DomainObservation(
        domain, verdict, MX_FOR[verdict], ttl, f"{verdict.value} answer", at, (source,)
    )


def drec(
    domain: str,
    verdict: Verdict | None,
    *,
    since: datetime | None = None,
    count: int | None = None,
    at: datetime = T0,
    misses: int = 0,
    old_ttl: int | None = None,
    old_ttl_cached: int | None = None,
    accepted: bool = False,
) -> DomainRecord:
    """A stored domain record observed at `at`. A filtered domain defaults to a streak of five
    observations that started two hours ago, its latest one at `at`."""
    filtered = verdict is F
    return DomainRecord(
        domain,
        verdict,
        MX_FOR[verdict] if verdict is not None else (),
        None if verdict in (None, U) else 300,
        at if verdict is not None else None,
        filtered_since=(since or at - timedelta(hours=2)) if filtered else since,
        filtered_count=(5 if count is None else count) if filtered else (count or 0),
        filtered_at=at if filtered else None,
        misses=misses,
        old_ttl=old_ttl,
        old_ttl_cached=old_ttl_cached,
        accepted=accepted,
    )


def domains(*verdicts: Verdict | None, old_ttl: int | None = 300) -> tuple[DomainRecord, ...]:
    """Records for contoso.com, contoso.net, ... with the given verdicts, observed at T0.

    Filtered ones are eligible at T0 under the default policy (two hours filtered, first-hand
    old TTL 300 s, so min_settle's 10 minutes decide); not-filtered ones have missed once.
    """
    return tuple(
        drec(n, v, old_ttl=old_ttl, misses=1 if v in NOT_CUT_OVER else 0)
        for n, v in zip(NAMES, verdicts, strict=False)
    )


def accepted(*names: str, subdomains: tuple[str, ...] = ()) -> AcceptedDomains:
    return AcceptedDomains(tuple(AcceptedDomain(n, n in subdomains) for n in names))


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


def reads(
    conn: ConnectorLookup | ExchangeFailure | None = None,
    accepted_domains: AcceptedDomains | ExchangeFailure | None = None,
) -> Reads:
    """What a cycle read: by default a good connector and the accepted contoso.com/.net."""
    return Reads(
        found() if conn is None else conn,
        accepted("contoso.com", "contoso.net") if accepted_domains is None else accepted_domains,
    )


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
