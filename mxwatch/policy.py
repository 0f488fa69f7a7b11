"""All decision logic, pure: observations + stored state + connector + now -> new state + actions.

Nothing here does I/O or reads the clock; the caller passes the time in.
"""

from __future__ import annotations

import enum
import ipaddress
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from .model import (
    Connector,
    ConnectorLookup,
    DomainObservation,
    DomainRecord,
    ErrorKind,
    ExchangeFailure,
    LookupStatus,
    MxRecord,
    TenantRecord,
    TenantState,
    Transition,
    Verdict,
)
from .providers import Provider
from .settings import PolicyConfig, TenantConfig

# ---------------------------------------------------------------------------------------------
# Domains: fold this cycle's combined verdicts into what is remembered about each domain.

_NOT_CUT_OVER = frozenset({Verdict.DIRECT, Verdict.MIXED, Verdict.NO_MX})


def update_domains(
    tenant: str,
    records: Mapping[str, DomainRecord],
    observations: Mapping[str, DomainObservation],
    now: datetime,
) -> tuple[tuple[DomainRecord, ...], tuple[Transition, ...]]:
    """New domain records for the domains observed, and a transition per verdict change."""
    updated: list[DomainRecord] = []
    transitions: list[Transition] = []
    for domain, observed in observations.items():
        before = records.get(domain, DomainRecord(domain))
        after = _next_domain_record(before, observed, now)
        updated.append(after)
        if before.verdict != after.verdict:
            transitions.append(
                Transition(
                    at=now,
                    tenant=tenant,
                    domain=domain,
                    from_state=before.verdict.value if before.verdict else None,
                    to_state=observed.verdict.value,
                    reason=observed.reason,
                    evidence=domain_evidence(observed),
                )
            )
    return tuple(updated), tuple(transitions)


def _next_domain_record(
    before: DomainRecord, observed: DomainObservation, now: datetime
) -> DomainRecord:
    verdict = observed.verdict
    if verdict is Verdict.UNKNOWN:
        # Unknown is no evidence: the filtered streak and the old TTL both stand.
        return replace(before, verdict=verdict, mx=(), ttl=None, checked_at=now)
    if verdict is Verdict.FILTERED:
        since = before.filtered_since or now
        return replace(
            before,
            verdict=verdict,
            mx=observed.mx,
            ttl=observed.ttl,
            checked_at=now,
            filtered_since=since,
        )
    old_ttl = observed.ttl if observed.ttl is not None else before.old_ttl
    return replace(
        before,
        verdict=verdict,
        mx=observed.mx,
        ttl=observed.ttl,
        checked_at=now,
        filtered_since=None,
        old_ttl=old_ttl,
    )


def domain_evidence(observed: DomainObservation) -> dict[str, Any]:
    return {
        "verdict": observed.verdict.value,
        "mx": _mx_text(observed.mx),
        "ttl": observed.ttl,
        "sources": [
            {
                "source": o.source,
                "verdict": o.verdict.value,
                "mx": _mx_text(o.mx),
                "ttl": o.ttl,
                "reason": o.reason,
            }
            for o in observed.sources
        ],
    }


def _mx_text(mx: Sequence[MxRecord]) -> list[str]:
    """MX records as in a zone file, "10 mx1.example": compact, for ten thousand journal rows."""
    return [f"{r.preference} {r.exchange}" for r in mx]


# ---------------------------------------------------------------------------------------------
# Which domains count for a tenant.


@dataclass(frozen=True)
class DomainSets:
    managed: tuple[str, ...]  # must all be filtered before the connector is enabled
    unmanaged: tuple[str, ...]  # other accepted domains: must not still receive mail directly

    @property
    def observed(self) -> tuple[str, ...]:
        return self.managed + self.unmanaged


def domain_sets(tenant: TenantConfig, accepted: Sequence[str]) -> DomainSets:
    """Split a tenant's domains, given its accepted domains (as last read, maybe none yet).

    The connector covers every accepted domain, so with `domains` omitted all of them are
    managed. The tenant's *.onmicrosoft.com domains never have their MX moved to a filter.
    """
    ignored = set(tenant.ignore_domains)
    usable = [d for d in accepted if d not in ignored and not d.endswith(".onmicrosoft.com")]
    if not tenant.domains:
        return DomainSets(tuple(usable), ())
    managed = set(tenant.domains)
    return DomainSets(tenant.domains, tuple(d for d in usable if d not in managed))


# ---------------------------------------------------------------------------------------------
# Tenant-wide view of the domains.


class Outlook(enum.Enum):
    """What this cycle's domain verdicts say about the tenant as a whole."""

    ALL_FILTERED = "all domains filtered"
    NOT_CUT_OVER = "some domain not cut over"
    INCONCLUSIVE = "some domain unknown, none contradicting"


def outlook(domains: Sequence[DomainRecord]) -> Outlook:
    verdicts = [d.verdict for d in domains]
    if any(v in _NOT_CUT_OVER for v in verdicts):
        return Outlook.NOT_CUT_OVER
    if verdicts and all(v is Verdict.FILTERED for v in verdicts):
        return Outlook.ALL_FILTERED
    return Outlook.INCONCLUSIVE


def _not_filtered(domains: Sequence[DomainRecord]) -> str:
    return ", ".join(
        f"{d.domain} is {d.verdict or 'unobserved'}"
        for d in domains
        if d.verdict is not Verdict.FILTERED
    )


# ---------------------------------------------------------------------------------------------
# Settling: when is the cutover old enough to act on?


def settle_for(domain: DomainRecord, cfg: PolicyConfig) -> tuple[timedelta, str]:
    """How long this domain must have been filtered before the connector may be enabled."""
    if cfg.settle is not None:
        return cfg.settle, f"settle {_fmt(cfg.settle)}"
    if domain.old_ttl is not None:
        old = timedelta(seconds=domain.old_ttl)
        why = f"old MX TTL {domain.old_ttl}s"
    else:
        # Never saw the old RRset (first run after the cutover): assume a typical TTL.
        old = cfg.default_old_ttl
        why = f"no old MX seen, default_old_ttl {_fmt(old)}"
    if old >= cfg.min_settle:
        return old, why
    return cfg.min_settle, f"min_settle {_fmt(cfg.min_settle)} (longer than {why})"


def eligible_at(domains: Sequence[DomainRecord], cfg: PolicyConfig) -> tuple[datetime | None, str]:
    """max over domains of (filtered_since + settle), with the domain that decides it."""
    latest: tuple[datetime, str] | None = None
    for domain in domains:
        if domain.filtered_since is None:
            return None, f"{domain.domain} is not filtered"
        wait, why = settle_for(domain, cfg)
        at = domain.filtered_since + wait
        if latest is None or at > latest[0]:
            latest = (
                at,
                f"{domain.domain} filtered since {domain.filtered_since.isoformat()} + {why}",
            )
    if latest is None:
        return None, "no domains"
    return latest


def _fmt(delta: timedelta) -> str:
    return f"{int(delta.total_seconds())}s"


# ---------------------------------------------------------------------------------------------
# Audit: is this connector the one that is safe to turn on?


@dataclass(frozen=True)
class Audit:
    failures: tuple[str, ...]  # any failure blocks the enable
    warnings: tuple[str, ...]
    info: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


def audit_connector(connector: Connector, provider: Provider) -> Audit:
    failures: list[str] = []
    if connector.connector_type.lower() != "partner":
        failures.append(f"ConnectorType is {connector.connector_type!r}, not 'Partner'")
    if not any(_sender_domain(d) == "*" for d in connector.sender_domains):
        failures.append(f"SenderDomains {list(connector.sender_domains)} does not cover '*'")
    if not (
        connector.restrict_domains_to_ip_addresses or connector.restrict_domains_to_certificate
    ):
        failures.append(
            "neither RestrictDomainsToIPAddresses nor RestrictDomainsToCertificate is true"
        )
    if not connector.sender_ip_addresses:
        failures.append("SenderIPAddresses is empty")
    failures.extend(_uncovered_ranges(connector, provider))
    warnings = [] if connector.require_tls else ["RequireTls is false"]
    skip = list(connector.ef_skip_ips)
    info = [f"Enhanced Filtering: EFSkipLastIP={connector.ef_skip_last_ip}, EFSkipIPs={skip}"]
    return Audit(tuple(failures), tuple(warnings), tuple(info))


def _sender_domain(entry: str) -> str:
    """ "smtp:*;1" -> "*" (address space type prefix and cost suffix removed)."""
    value = entry.split(":", 1)[1] if ":" in entry else entry
    return value.split(";", 1)[0].strip()


def _uncovered_ranges(connector: Connector, provider: Provider) -> list[str]:
    if not provider.sender_ips:
        return []
    listed: list[ipaddress.IPv4Network] = []
    for text in connector.sender_ip_addresses:
        try:
            listed.append(ipaddress.IPv4Network(text.strip(), strict=False))
        except ValueError:
            continue  # an IPv6 or odd entry covers none of the provider's IPv4 ranges
    # Exchange takes only /24-/32, so a published /21 arrives as eight /24s: merge first.
    merged = list(ipaddress.collapse_addresses(listed))
    missing = [
        str(net) for net in provider.sender_ips if not any(net.subnet_of(have) for have in merged)
    ]
    if not missing:
        return []
    return [f"SenderIPAddresses does not cover {provider.name} ranges {', '.join(missing)}"]


# ---------------------------------------------------------------------------------------------
# Tenant decisions.


@dataclass(frozen=True)
class Enable:
    guid: str


@dataclass(frozen=True)
class Disable:
    guid: str


Action = Enable | Disable
ConnectorRead = ConnectorLookup | ExchangeFailure | None  # None: not read this cycle


@dataclass(frozen=True)
class Decision:
    record: TenantRecord
    transitions: tuple[Transition, ...] = ()
    actions: tuple[Action, ...] = ()
    audit: Audit | None = None
    waiting_for: str = ""  # why nothing happened, when something might have


def connector_read_reason(
    tenant: str,
    record: TenantRecord,
    domains: Sequence[DomainRecord],
    cfg: PolicyConfig,
    now: datetime,
) -> str | None:
    """Why the connector must be read this cycle, or None: a steady cycle makes no call."""
    if record.connector_checked_at is None:
        return "first sight of the tenant"
    if record.state is TenantState.BLOCKED:
        return "retrying a blocked tenant"
    if _enable_due(record, domains, cfg, now):
        return "audit before enabling"
    if _disable_due(record, domains, cfg):
        return "before disabling after a regression"
    if now >= record.connector_checked_at + _recheck_interval(tenant, cfg):
        return "periodic recheck"
    return None


def _recheck_interval(tenant: str, cfg: PolicyConfig) -> timedelta:
    # Spread rechecks over 75-100 % of the interval so hundreds of tenants first seen in the
    # same cycle do not all call Exchange again in the same later cycle.
    fraction = (zlib.crc32(tenant.encode()) % 1000) / 4000
    return cfg.recheck * (1 - fraction)


def _settled(
    record: TenantRecord, domains: Sequence[DomainRecord], cfg: PolicyConfig
) -> tuple[int, datetime | None, str]:
    """Confirmations and eligible_at after this cycle, for an all-filtered tenant."""
    before = record.confirmations if record.state is TenantState.SETTLING else 0
    at, why = eligible_at(domains, cfg)
    return before + 1, at, why


def _enable_due(
    record: TenantRecord, domains: Sequence[DomainRecord], cfg: PolicyConfig, now: datetime
) -> bool:
    if record.state not in (TenantState.WAITING, TenantState.SETTLING):
        return False
    if outlook(domains) is not Outlook.ALL_FILTERED:
        return False
    confirmations, at, _ = _settled(record, domains, cfg)
    return confirmations >= cfg.confirmations and at is not None and now >= at


def _disable_due(record: TenantRecord, domains: Sequence[DomainRecord], cfg: PolicyConfig) -> bool:
    if cfg.on_regression != "disable" or outlook(domains) is not Outlook.NOT_CUT_OVER:
        return False
    if record.state is TenantState.REGRESSED:
        return True
    return record.state is TenantState.ENABLED and record.regressions + 1 >= cfg.confirmations


class _Journal:
    """Collects the tenant transitions of one decision."""

    def __init__(self, tenant: str, now: datetime, domains: Sequence[DomainRecord]) -> None:
        self.tenant, self.now, self.domains = tenant, now, domains
        self.transitions: list[Transition] = []

    def move(
        self, record: TenantRecord, to: TenantState, reason: str, **changes: Any
    ) -> TenantRecord:
        evidence = {
            "domains": {d.domain: d.verdict.value if d.verdict else None for d in self.domains},
            "mx": {d.domain: _mx_text(d.mx) for d in self.domains},
            "connector": {"guid": record.connector_guid, "enabled": record.connector_enabled},
        }
        self.transitions.append(
            Transition(self.now, self.tenant, None, record.state.value, to.value, reason, evidence)
        )
        return replace(record, state=to, since=self.now, reason=reason, **changes)


def decide(
    tenant: str,
    record: TenantRecord,
    domains: Sequence[DomainRecord],
    connector: ConnectorRead,
    provider: Provider,
    cfg: PolicyConfig,
    now: datetime,
    unmanaged: Sequence[DomainRecord] = (),
) -> Decision:
    """The tenant's next state and the Exchange writes to make, from this cycle's facts.

    `domains` are the managed domains; `unmanaged` are the tenant's other accepted domains
    (not in `domains`, not ignored). The connector covers those too, so one that still
    receives mail directly fails the audit, and one whose MX is unknown holds the enable.

    | state      | event                                       | next       | action  |
    |------------|---------------------------------------------|------------|---------|
    | any        | connector missing/ambiguous/audit fails,    | blocked    |         |
    |            | credentials or permission error             |            |         |
    | blocked    | connector found, passes the audit           | waiting    |         |
    | waiting,   | connector found enabled                     | enabled    |         |
    | settling,  |   ... while some domain is not cut over     | regressed  |         |
    | blocked    |                                             |            |         |
    | enabled,   | connector found disabled                    | waiting    |         |
    | regressed  |                                             |            |         |
    | waiting    | every domain filtered                       | settling   |         |
    | settling   | some domain not cut over                    | waiting    |         |
    | settling   | confirmations reached, now >= eligible_at,  | settling   | enable  |
    |            | connector read this cycle and audited       |            |         |
    | enabled    | not cut over for `confirmations` cycles     | regressed  | disable |
    |            |                                             |            | (opt.)  |
    | regressed  | every domain filtered                       | enabled    |         |
    | regressed  | still not cut over, on_regression=disable   | regressed  | disable |

    Unknown verdicts neither confirm nor reset anything.
    """
    journal = _Journal(tenant, now, domains)
    facts = _apply_connector(journal, record, connector, provider, unmanaged)
    record = facts.record
    if facts.halt:
        return Decision(record, tuple(journal.transitions), (), facts.audit, record.reason)
    handler = _DOMAIN_RULES[record.state]
    record, actions, waiting_for = handler(journal, record, domains, facts.guid, cfg)
    unsure = [d.domain for d in unmanaged if d.verdict in (None, Verdict.UNKNOWN)]
    if unsure and any(isinstance(a, Enable) for a in actions):
        actions = tuple(a for a in actions if not isinstance(a, Enable))
        waiting_for = f"accepted domain(s) {', '.join(unsure)} have unknown MX this cycle"
    return Decision(record, tuple(journal.transitions), actions, facts.audit, waiting_for)


@dataclass(frozen=True)
class _ConnectorFacts:
    record: TenantRecord
    audit: Audit | None = None
    guid: str | None = None  # set when the connector was read this cycle and may be written
    halt: bool = False  # no domain rules this cycle


def _apply_connector(
    journal: _Journal,
    record: TenantRecord,
    read: ConnectorRead,
    provider: Provider,
    unmanaged: Sequence[DomainRecord],
) -> _ConnectorFacts:
    """Fold a connector read into the record."""
    if read is None:
        return _ConnectorFacts(record)
    if isinstance(read, ExchangeFailure):
        if read.kind is ErrorKind.TRANSIENT:
            return _ConnectorFacts(record)
        return _ConnectorFacts(
            _block(journal, record, f"{read.kind.value}: {read.message}"), halt=True
        )
    if read.status is not LookupStatus.FOUND or read.connector is None:
        reason = f"connector {read.status.value}: {read.detail}"
        return _ConnectorFacts(_block(journal, record, reason), halt=True)
    found = read.connector
    record = replace(
        record,
        connector_guid=found.guid,
        connector_enabled=found.enabled,
        connector_checked_at=journal.now,
    )
    if found.enabled:
        # Adoption is the whole of this cycle: a connector someone else just enabled is never
        # disabled in the same breath; regression rules apply from the next cycle on.
        adopting = record.state not in (TenantState.ENABLED, TenantState.REGRESSED)
        return _ConnectorFacts(_found_enabled(journal, record), guid=found.guid, halt=adopting)
    if record.state in (TenantState.ENABLED, TenantState.REGRESSED):
        # Someone else turned it off: record that, and let later cycles re-earn the enable.
        record = journal.move(
            record,
            TenantState.WAITING,
            "connector found disabled (turned off outside mxwatch)",
            confirmations=0,
            eligible_at=None,
            regressions=0,
        )
        return _ConnectorFacts(record, halt=True)
    audit = _with_unmanaged(audit_connector(found, provider), unmanaged)
    if not audit.passed:
        reason = "audit failed: " + "; ".join(audit.failures)
        return _ConnectorFacts(_block(journal, record, reason), audit, halt=True)
    if record.state is TenantState.BLOCKED:
        record = journal.move(
            record,
            TenantState.WAITING,
            "connector found and passes the audit",
            confirmations=0,
            eligible_at=None,
        )
    return _ConnectorFacts(record, audit, found.guid)


def _with_unmanaged(audit: Audit, unmanaged: Sequence[DomainRecord]) -> Audit:
    outside = [
        f"accepted domain {d.domain} is not in this tenant's domains and its MX is "
        f"{d.verdict}: enabling the connector would bounce its mail (add it to domains, "
        "or to ignore_domains)"
        for d in unmanaged
        if d.verdict in (Verdict.DIRECT, Verdict.MIXED)
    ]
    return replace(audit, failures=audit.failures + tuple(outside))


def _block(journal: _Journal, record: TenantRecord, reason: str) -> TenantRecord:
    checked = replace(record, connector_checked_at=journal.now)
    if record.state is TenantState.BLOCKED and record.reason == reason:
        return checked
    return journal.move(checked, TenantState.BLOCKED, reason, confirmations=0, eligible_at=None)


def _found_enabled(journal: _Journal, record: TenantRecord) -> TenantRecord:
    if record.state in (TenantState.ENABLED, TenantState.REGRESSED):
        return record
    if outlook(journal.domains) is Outlook.NOT_CUT_OVER:
        reason = (
            "adopted: connector found enabled while "
            f"{_not_filtered(journal.domains)}; inbound mail there is bouncing"
        )
        return journal.move(
            record, TenantState.REGRESSED, reason, confirmations=0, eligible_at=None, regressions=0
        )
    return journal.move(
        record,
        TenantState.ENABLED,
        "adopted: connector found enabled",
        confirmations=0,
        eligible_at=None,
        regressions=0,
    )


_Outcome = tuple[TenantRecord, tuple[Action, ...], str]


def _waiting(
    journal: _Journal,
    record: TenantRecord,
    domains: Sequence[DomainRecord],
    guid: str | None,
    cfg: PolicyConfig,
) -> _Outcome:
    if outlook(domains) is not Outlook.ALL_FILTERED:
        return record, (), ""
    confirmations, at, why = _settled(record, domains, cfg)
    record = journal.move(
        record,
        TenantState.SETTLING,
        "every domain filtered",
        confirmations=confirmations,
        eligible_at=at,
        eligible_reason=why,
    )
    return _maybe_enable(record, guid, cfg, journal.now)


def _settling(
    journal: _Journal,
    record: TenantRecord,
    domains: Sequence[DomainRecord],
    guid: str | None,
    cfg: PolicyConfig,
) -> _Outcome:
    view = outlook(domains)
    if view is Outlook.INCONCLUSIVE:
        return record, (), "a domain's MX is unknown this cycle"
    if view is Outlook.NOT_CUT_OVER:
        record = journal.move(
            record,
            TenantState.WAITING,
            _not_filtered(domains),
            confirmations=0,
            eligible_at=None,
            eligible_reason="",
        )
        return record, (), ""
    confirmations, at, why = _settled(record, domains, cfg)
    record = replace(record, confirmations=confirmations, eligible_at=at, eligible_reason=why)
    return _maybe_enable(record, guid, cfg, journal.now)


def _maybe_enable(
    record: TenantRecord, guid: str | None, cfg: PolicyConfig, now: datetime
) -> _Outcome:
    if record.confirmations < cfg.confirmations:
        return record, (), f"confirmations {record.confirmations}/{cfg.confirmations}"
    if record.eligible_at is None or now < record.eligible_at:
        return record, (), f"settling until {record.eligible_at}: {record.eligible_reason}"
    if guid is None:
        return record, (), "the connector could not be read this cycle"
    return record, (Enable(guid),), ""


def _enabled(
    journal: _Journal,
    record: TenantRecord,
    domains: Sequence[DomainRecord],
    guid: str | None,
    cfg: PolicyConfig,
) -> _Outcome:
    view = outlook(domains)
    if view is Outlook.ALL_FILTERED:
        return replace(record, regressions=0), (), ""
    if view is Outlook.INCONCLUSIVE:
        return record, (), ""
    regressions = record.regressions + 1
    if regressions < cfg.confirmations:
        return replace(record, regressions=regressions), (), "regression not yet confirmed"
    reason = f"{_not_filtered(domains)}; inbound mail there is bouncing"
    record = journal.move(record, TenantState.REGRESSED, reason, regressions=regressions)
    return record, _disable(guid, cfg), ""


def _regressed(
    journal: _Journal,
    record: TenantRecord,
    domains: Sequence[DomainRecord],
    guid: str | None,
    cfg: PolicyConfig,
) -> _Outcome:
    view = outlook(domains)
    if view is Outlook.ALL_FILTERED:
        record = journal.move(record, TenantState.ENABLED, "MX back on the filter", regressions=0)
        return record, (), ""
    if view is Outlook.INCONCLUSIVE:
        return record, (), ""
    return record, _disable(guid, cfg), ""


def _disable(guid: str | None, cfg: PolicyConfig) -> tuple[Action, ...]:
    if cfg.on_regression != "disable" or guid is None:
        return ()
    return (Disable(guid),)


def _blocked(
    journal: _Journal,
    record: TenantRecord,
    domains: Sequence[DomainRecord],
    guid: str | None,
    cfg: PolicyConfig,
) -> _Outcome:
    return record, (), record.reason


_DOMAIN_RULES = {
    TenantState.WAITING: _waiting,
    TenantState.SETTLING: _settling,
    TenantState.ENABLED: _enabled,
    TenantState.REGRESSED: _regressed,
    TenantState.BLOCKED: _blocked,
}


def after_action(
    tenant: str,
    record: TenantRecord,
    domains: Sequence[DomainRecord],
    action: Action,
    outcome: Connector | ExchangeFailure,
    now: datetime,
) -> Decision:
    """The record after an enable/disable and its read-back (or its failure)."""
    journal = _Journal(tenant, now, domains)
    if isinstance(outcome, ExchangeFailure):
        if outcome.kind is ErrorKind.TRANSIENT:
            return Decision(record, waiting_for=f"{outcome.message}; retrying next cycle")
        record = _block(journal, record, f"{outcome.kind.value}: {outcome.message}")
        return Decision(record, tuple(journal.transitions))
    record = replace(record, connector_enabled=outcome.enabled, connector_checked_at=now)
    wanted = isinstance(action, Enable)
    if outcome.enabled != wanted:
        return Decision(
            record, waiting_for=f"read-back says Enabled={outcome.enabled}; retrying next cycle"
        )
    if wanted:
        reason = f"enabled by mxwatch after {record.confirmations} confirmations"
        record = journal.move(
            record,
            TenantState.ENABLED,
            reason,
            confirmations=0,
            eligible_at=None,
            eligible_reason="",
            regressions=0,
        )
    else:
        record = journal.move(
            record,
            TenantState.WAITING,
            "disabled by mxwatch after regression",
            confirmations=0,
            eligible_at=None,
            eligible_reason="",
            regressions=0,
        )
    return Decision(record, tuple(journal.transitions))
