"""Values shared by the modules: observations, connectors, stored state, transitions.

Everything here is a frozen value with no behaviour that touches the outside world.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Verdict(enum.StrEnum):
    """What one source (or the combination of sources) says about a domain's MX."""

    FILTERED = "filtered"
    MIXED = "mixed"
    DIRECT = "direct"
    NO_MX = "no_mx"
    UNKNOWN = "unknown"


class TenantState(enum.StrEnum):
    WAITING = "waiting"
    SETTLING = "settling"
    ENABLED = "enabled"
    REGRESSED = "regressed"
    BLOCKED = "blocked"


@dataclass(frozen=True, order=True)
class MxRecord:
    preference: int
    exchange: str


@dataclass(frozen=True)
class Observation:
    """The MX of one domain as one source answered it."""

    domain: str
    source: str
    verdict: Verdict
    mx: tuple[MxRecord, ...]
    ttl: int | None
    reason: str
    checked_at: datetime
    # True for a domain's authoritative server asked directly: its TTL is the record's own.
    # A resolver's TTL is only what is left of it in that resolver's cache.
    authoritative: bool = False


@dataclass(frozen=True)
class DomainObservation:
    """The combined verdict for one domain in one cycle (DESIGN.md §3)."""

    domain: str
    verdict: Verdict
    mx: tuple[MxRecord, ...]
    ttl: int | None
    reason: str
    checked_at: datetime
    sources: tuple[Observation, ...]


@dataclass(frozen=True)
class Connector:
    """The fields of an inbound connector that mxwatch reads (annotation keys dropped)."""

    name: str
    guid: str
    enabled: bool
    connector_type: str
    sender_domains: tuple[str, ...]
    sender_ip_addresses: tuple[str, ...]
    restrict_domains_to_ip_addresses: bool
    restrict_domains_to_certificate: bool
    require_tls: bool
    ef_skip_ips: tuple[str, ...] = ()
    ef_skip_last_ip: bool = False


@dataclass(frozen=True)
class AcceptedDomain:
    """One Get-AcceptedDomain entry: its name (normalised) and whether it covers subdomains."""

    name: str
    match_subdomains: bool = False


@dataclass(frozen=True)
class AcceptedDomains:
    """Every accepted domain of a tenant, read completely (every page of the answer).

    `unreadable` holds DomainName values that are not valid domain names (as the API sent
    them, control characters escaped): the connector covers them too, but mxwatch cannot look
    up their MX.
    """

    domains: tuple[AcceptedDomain, ...]
    unreadable: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.domains)


class LookupStatus(enum.StrEnum):
    FOUND = "found"
    MISSING = "missing"
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class ConnectorLookup:
    """Result of looking a connector up by exact Name or Guid.

    `returned` counts the objects the API sent back: Get-InboundConnector answers an unknown
    identity with every connector, so a large `returned` with status MISSING is that quirk.
    """

    identity: str
    status: LookupStatus
    connector: Connector | None
    returned: int
    detail: str = ""


class ErrorKind(enum.StrEnum):
    """Who must act on an Exchange failure."""

    BLOCKED = "blocked"  # the tenant's permissions or objects: a person must act
    TRANSIENT = "transient"  # throttling, 5xx, timeouts: retry next cycle
    CREDENTIALS = "credentials"  # the app's secret/certificate or consent: a person must act


@dataclass(frozen=True)
class ExchangeFailure:
    """A classified Exchange failure, as a value the policy can reason about."""

    kind: ErrorKind
    message: str
    status: int | None = None
    cmdlet: str = ""


class ExchangeError(Exception):
    """Raised by exchange.py; carries the classified failure."""

    def __init__(self, failure: ExchangeFailure) -> None:
        super().__init__(f"{failure.kind}: {failure.message}")
        self.failure = failure


@dataclass(frozen=True)
class DomainRecord:
    """What the store remembers about one managed domain."""

    domain: str
    verdict: Verdict | None = None  # last combined verdict, unknown included
    mx: tuple[MxRecord, ...] = ()
    ttl: int | None = None
    checked_at: datetime | None = None
    filtered_since: datetime | None = None  # start of the current all-filtered streak
    old_ttl: int | None = None  # TTL of the last non-filtered MX RRset observed


@dataclass(frozen=True)
class TenantRecord:
    """What the store remembers about one tenant and its connector."""

    name: str
    state: TenantState = TenantState.WAITING
    since: datetime | None = None
    reason: str = "new tenant"
    confirmations: int = 0
    eligible_at: datetime | None = None
    eligible_reason: str = ""
    regressions: int = 0  # consecutive not-filtered cycles while enabled
    connector_guid: str | None = None
    connector_enabled: bool | None = None
    connector_checked_at: datetime | None = None


@dataclass(frozen=True)
class Transition:
    """One journal entry: a tenant state change (domain None) or a domain verdict change."""

    at: datetime
    tenant: str
    domain: str | None
    from_state: str | None
    to_state: str
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
