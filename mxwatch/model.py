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
class NewConnector:
    """An inbound connector for `mxwatch provision` to create: the filter's, and disabled.

    `parameters` is the one description of what New-InboundConnector is sent; the plan shows
    it and the client sends it.
    """

    name: str
    sender_ip_addresses: tuple[str, ...]  # IPv4, each /24 to /32 (what Exchange accepts)
    comment: str

    def parameters(self) -> dict[str, Any]:
        return {
            "Name": self.name,
            "ConnectorType": "Partner",
            "SenderDomains": ["*"],
            "RequireTls": True,
            "RestrictDomainsToIPAddresses": True,
            "SenderIPAddresses": list(self.sender_ip_addresses),
            "Comment": self.comment,
            # Exchange creates a connector enabled unless told otherwise; enabled before the
            # MX cutover it bounces mail (550 5.7.51). Only the cycle's gate ever enables it.
            "Enabled": False,
        }


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
    """What the store remembers about one covered domain of a tenant.

    The filtered streak is this domain's own: it starts at the first `filtered` observation,
    counts consecutive `filtered` observations (`unknown` ones neither count nor break it), and
    restarts when two of them are further apart than the allowed gap.
    """

    domain: str
    verdict: Verdict | None = None  # last combined verdict, unknown included
    mx: tuple[MxRecord, ...] = ()
    ttl: int | None = None
    checked_at: datetime | None = None
    filtered_since: datetime | None = None  # start of the current filtered streak
    filtered_count: int = 0  # filtered observations in the streak
    filtered_at: datetime | None = None  # the streak's latest filtered observation
    misses: int = 0  # consecutive not-filtered observations (a regression when enabled)
    # The longest TTL of any not-filtered answer: from an authoritative server (the record's
    # own TTL), and from a resolver (only what was left in its cache: a lower bound).
    old_ttl: int | None = None
    old_ttl_cached: int | None = None
    accepted: bool = False  # listed at the tenant's last complete Get-AcceptedDomain read


@dataclass(frozen=True)
class TenantRecord:
    """What the store remembers about one tenant and its connector."""

    name: str
    state: TenantState = TenantState.WAITING
    since: datetime | None = None
    reason: str = "new tenant"
    confirmations: int = 0  # the fewest filtered observations of any covered domain (status)
    eligible_at: datetime | None = None
    eligible_reason: str = ""
    waiting_for: str = ""  # why the last cycle changed nothing, when something might have
    connector_guid: str | None = None
    connector_enabled: bool | None = None
    connector_checked_at: datetime | None = None


class WriteAction(enum.StrEnum):
    ENABLE = "enable"
    DISABLE = "disable"


@dataclass(frozen=True)
class Intent:
    """A connector write about to be made, committed before it is sent (write-ahead).

    A crash after the write leaves the intent behind; the next cycle reads the connector back
    and records the change as mxwatch's own.
    """

    action: WriteAction
    guid: str
    at: datetime


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


class LookupKind(enum.StrEnum):
    """What a remembered DNS lookup found (dns.py)."""

    ZONE = "zone"  # a name -> the zone that holds it
    NAMESERVERS = "ns"  # a zone -> the host names of its NS set
    ADDRESSES = "a"  # a name server -> its IPv4 addresses
    ALIAS = "alias"  # an MX exchange -> the target of its CNAME, or nothing


@dataclass(frozen=True)
class RememberedLookup:
    """A DNS lookup kept in the store between runs, so that `--once` on a timer does not
    repeat it: what `kind` found for `name` (possibly nothing), good until `expires_at`."""

    kind: LookupKind
    name: str
    found: tuple[str, ...]
    expires_at: datetime
