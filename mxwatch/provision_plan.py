"""What `mxwatch provision` would do to one tenant's connector, pure: the connector as read, the
provider and the configured identity -> at most one write, described, or what stops it.

Rules (issue 10, item 4): a missing connector is created disabled, restricted to the provider's
`sender_ips` (never without them); an existing one is audited and never duplicated; a disabled
one may gain the provider's ranges it lacks (never lose one); an enabled one is never written
to, whatever it lacks. No I/O and no clock: the caller passes the time in.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from . import __version__
from .model import Connector, ConnectorLookup, ExchangeFailure, LookupStatus, NewConnector
from .policy import Audit, audit_connector
from .settings import Provider

# Exchange takes sender ranges of /24 to /32 only; a wider published range is sent as /24s.
WIDEST_PREFIX = 24
# A /16 is 256 entries. A provider range wider than that is far more likely a typo in
# `sender_ips` (a /8 would be 65,536 entries) than a filter's delivery network.
MAX_SENDER_ENTRIES = 256


def exchange_ranges(
    networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> tuple[str, ...]:
    """The ranges as Exchange accepts them: a /21 as its eight /24s, a /24../32 as it is; IPv6
    never (Exchange rejects it; the config takes IPv4 sender ranges only, too)."""
    pieces: list[str] = []
    for network in networks:
        if not isinstance(network, ipaddress.IPv4Network):
            continue
        if network.prefixlen < WIDEST_PREFIX:
            pieces += (str(piece) for piece in network.subnets(new_prefix=WIDEST_PREFIX))
        else:
            pieces.append(str(network))
    return tuple(dict.fromkeys(pieces))


@dataclass(frozen=True)
class Create:
    """New-InboundConnector, disabled."""

    connector: NewConnector

    def describe(self) -> str:
        parameters = self.connector.parameters()
        return "create it: New-InboundConnector " + " ".join(
            f"-{key} {_powershell(value)}" for key, value in parameters.items()
        )


@dataclass(frozen=True)
class AddSenderIps:
    """Set-InboundConnector with the connector's SenderIPAddresses plus `ranges`."""

    guid: str
    ranges: tuple[str, ...]
    kept: int  # entries the connector has, all kept

    def describe(self) -> str:
        return (
            f"add {len(self.ranges)} {_ranges(len(self.ranges))} to its SenderIPAddresses "
            f"(keeping its {self.kept}): {', '.join(self.ranges)}"
        )


Action = Create | AddSenderIps


@dataclass(frozen=True)
class TenantPlan:
    """One tenant's plan: what was found, the write to make (if any), and what a person must
    do (`problem`: the tenant cannot be provisioned; non-empty means exit 1)."""

    tenant: str
    found: str
    action: Action | None = None
    problem: str = ""
    notes: tuple[str, ...] = ()


def plan_tenant(
    tenant: str,
    identity: str,
    provider: Provider,
    lookup: ConnectorLookup | ExchangeFailure,
    now: datetime,
) -> TenantPlan:
    if isinstance(lookup, ExchangeFailure):
        found = f"connector {identity!r} could not be read"
        return TenantPlan(tenant, found, problem=f"{lookup.kind.value}: {lookup.message}")
    if lookup.status is LookupStatus.AMBIGUOUS:
        problem = (
            f"{lookup.detail}; provision neither creates another nor changes one of them: set "
            "the tenant's connector to the GUID of the filter's connector"
        )
        return TenantPlan(tenant, f"connector {identity!r} is ambiguous", problem=problem)
    if lookup.connector is None:
        return _plan_missing(tenant, identity, provider, now)
    return _plan_existing(tenant, lookup.connector, provider)


def _plan_missing(tenant: str, identity: str, provider: Provider, now: datetime) -> TenantPlan:
    found = f"connector {identity!r} does not exist"
    ranges = exchange_ranges(provider.sender_ips)
    if _is_guid(identity):
        problem = (
            f"no connector has the GUID {identity}, and provision creates one by name only "
            "(Exchange gives a new connector its own GUID): set the tenant's connector to the "
            "name to create"
        )
    elif not ranges:
        problem = (
            f"provider {provider.name} has no sender_ips, and provision never creates a "
            "connector that accepts mail from any address: find the IPv4 ranges "
            f"{provider.name} delivers mail from in its console (with its Microsoft 365 "
            f"connector instructions) and set them in the config: [providers.{provider.name}] "
            'sender_ips = ["192.0.2.0/24", ...]'
        )
    elif len(ranges) > MAX_SENDER_ENTRIES:
        problem = _too_many(provider, len(ranges))
    else:
        return TenantPlan(tenant, found, Create(NewConnector(identity, ranges, _comment(now))))
    return TenantPlan(tenant, found, problem=problem)


def _plan_existing(tenant: str, connector: Connector, provider: Provider) -> TenantPlan:
    state = "enabled" if connector.enabled else "disabled"
    found = f"connector {connector.name!r} ({connector.guid}) exists, {state}"
    audit = audit_connector(connector, provider)
    notes = _notes(audit, provider)
    if connector.enabled:
        if audit.passed:
            return TenantPlan(tenant, found + ", passes the audit", notes=notes)
        problem = (
            f"it fails the audit ({'; '.join(audit.failures)}), and provision never writes to "
            "an enabled connector: it carries live mail, so a person must fix it"
        )
        return TenantPlan(tenant, found, problem=problem, notes=notes)
    return replace(_plan_disabled(tenant, found, connector, provider), notes=notes)


def _plan_disabled(tenant: str, found: str, connector: Connector, provider: Provider) -> TenantPlan:
    ranges = exchange_ranges(provider.sender_ips)
    if len(ranges) > MAX_SENDER_ENTRIES:
        return TenantPlan(tenant, found, problem=_too_many(provider, len(ranges)))
    have = connector.sender_ip_addresses
    missing = _uncovered(ranges, have)
    remaining = audit_connector(replace(connector, sender_ip_addresses=(*have, *missing)), provider)
    if not remaining.passed:
        problem = (
            f"it fails the audit ({'; '.join(remaining.failures)}), which adding sender IPs "
            "would not fix: provision changes nothing else, so a person must fix it or point "
            "the tenant's connector at the filter's connector"
        )
        return TenantPlan(tenant, found, problem=problem)
    if not missing:
        return TenantPlan(tenant, found + ", passes the audit")
    action = AddSenderIps(connector.guid, missing, len(have))
    return TenantPlan(tenant, found + f", lacks {len(missing)} provider ranges", action)


def _uncovered(ranges: tuple[str, ...], entries: Iterable[str]) -> tuple[str, ...]:
    """The ranges no entry of the connector covers (the audit's reading of its entries)."""
    have: list[ipaddress.IPv4Network] = []
    for entry in entries:
        try:
            have.append(ipaddress.IPv4Network(entry.strip(), strict=False))
        except ValueError:
            continue  # IPv6, an address range or an odd entry: covers no provider range
    merged = list(ipaddress.collapse_addresses(have))
    return tuple(
        text
        for text in ranges
        if not any(ipaddress.IPv4Network(text).subnet_of(net) for net in merged)
    )


def _notes(audit: Audit, provider: Provider) -> tuple[str, ...]:
    notes = list(audit.warnings)
    if not provider.sender_ips:
        notes.append(
            f"provider {provider.name} has no sender_ips: the connector's ranges are not "
            "checked against the filter's"
        )
    return tuple(notes)


def _too_many(provider: Provider, count: int) -> str:
    return (
        f"providers.{provider.name}.sender_ips come to {count} ranges of /24 or narrower, more "
        f"than {MAX_SENDER_ENTRIES}: check them for a typo (a /16 is already "
        f"{MAX_SENDER_ENTRIES})"
    )


def _comment(now: datetime) -> str:
    day = now.date().isoformat()
    return (
        f"Created disabled by mxwatch {__version__} (mxwatch provision) on {day}. mxwatch "
        "enables it once every domain of the tenant has its MX on the filter and has settled."
    )


def _is_guid(identity: str) -> bool:
    try:
        uuid.UUID(identity.strip().strip("{}"))
    except ValueError:
        return False
    return True


def _ranges(count: int) -> str:
    return "range" if count == 1 else "ranges"


def _powershell(value: object) -> str:
    """A parameter value as PowerShell would take it, for the plan a person reads."""
    if isinstance(value, bool):
        return "$true" if value else "$false"
    if isinstance(value, list):
        return ",".join(_powershell(item) for item in value)
    text = str(value).replace("'", "''")
    return f"'{text}'"
