"""All decision logic, pure: stored records + this cycle's facts + now -> new records + actions.

Nothing here does I/O or reads the clock; the caller passes the time in. The enable gate is one
predicate, `may_enable`, written to be checked against DESIGN.md §3 sentence by sentence; the
tenant state machine (`decide`) is the only caller that can produce an `Enable`.
"""

from __future__ import annotations

import enum
import ipaddress
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from .model import (
    AcceptedDomains,
    Connector,
    ConnectorLookup,
    DomainObservation,
    DomainRecord,
    ErrorKind,
    ExchangeFailure,
    Intent,
    LookupStatus,
    MxRecord,
    TenantRecord,
    TenantState,
    Transition,
    Verdict,
    WriteAction,
)
from .settings import Config, DaemonConfig, PolicyConfig, Provider, TenantConfig

NOT_CUT_OVER = frozenset({Verdict.DIRECT, Verdict.MIXED, Verdict.NO_MX})
# RFC 8767 §4: resolvers cap the TTLs they keep at about 7 days, so no sender holds an old MX
# for longer; an absurd TTL (up to 68 years) must not hold a tenant for ever.
MAX_OLD_TTL = timedelta(days=7)


@dataclass(frozen=True)
class Rules:
    """What the policy takes from the configuration."""

    policy: PolicyConfig
    allowed_gap: timedelta  # the longest gap between two observations of one streak


def allowed_gap(daemon: DaemonConfig, last_cycle: timedelta = timedelta(0)) -> timedelta:
    """Cycles come every interval plus up to jitter; half an interval more absorbs a late
    start or a wait for the state lock, and a cycle that outlasts the interval pushes the next
    one back by as long as it took (the scheduler skips the ticks it overlaps). A whole missed
    cycle is longer: the MX may have moved and come back while nobody looked, so the streak
    must start again."""
    return daemon.interval * 3 / 2 + daemon.jitter + last_cycle


def rules_of(config: Config, last_cycle: timedelta = timedelta(0)) -> Rules:
    return Rules(config.policy, allowed_gap(config.daemon, last_cycle))


# ---------------------------------------------------------------------------------------------
# Covered domains: every domain the connector covers.


def covered_domains(tenant: TenantConfig, accepted: Iterable[str]) -> tuple[str, ...]:
    """The tenant's `domains` and every accepted domain, minus `ignore_domains` and the
    tenant's *.onmicrosoft.com domains (whose MX never moves to a filter).

    The connector has sender domains "*": it bounces mail to every one of these.
    """
    ignored = set(tenant.ignore_domains)
    extra = [d for d in accepted if not d.endswith(".onmicrosoft.com")]
    return tuple(d for d in dict.fromkeys([*tenant.domains, *sorted(extra)]) if d not in ignored)


# ---------------------------------------------------------------------------------------------
# Domains: fold this cycle's combined verdicts into each domain's record and streak.


@dataclass(frozen=True)
class DomainUpdate:
    records: tuple[DomainRecord, ...]
    transitions: tuple[Transition, ...]  # one per changed combined verdict
    restarts: tuple[tuple[str, str], ...]  # (domain, why) for each streak broken by a gap


def update_domains(
    tenant: str,
    records: Mapping[str, DomainRecord],
    observations: Mapping[str, DomainObservation],
    rules: Rules,
    now: datetime,
) -> DomainUpdate:
    """New records for the domains observed, with a transition per verdict change."""
    updated: list[DomainRecord] = []
    transitions: list[Transition] = []
    restarts: list[tuple[str, str]] = []
    for domain, observed in observations.items():
        before = records.get(domain, DomainRecord(domain))
        after, restart = _next_domain_record(before, observed, rules, now)
        updated.append(after)
        if restart:
            restarts.append((domain, restart))
        if before.verdict != after.verdict:
            transitions.append(_verdict_change(tenant, before, observed, now))
    return DomainUpdate(tuple(updated), tuple(transitions), tuple(restarts))


def _verdict_change(
    tenant: str, before: DomainRecord, observed: DomainObservation, now: datetime
) -> Transition:
    return Transition(
        at=now,
        tenant=tenant,
        domain=observed.domain,
        from_state=before.verdict.value if before.verdict else None,
        to_state=observed.verdict.value,
        reason=observed.reason,
        evidence=domain_evidence(observed),
    )


def _next_domain_record(
    before: DomainRecord, observed: DomainObservation, rules: Rules, now: datetime
) -> tuple[DomainRecord, str]:
    seen = replace(before, verdict=observed.verdict, mx=observed.mx, ttl=observed.ttl)
    seen = replace(seen, checked_at=now)
    if observed.verdict is Verdict.UNKNOWN:
        # No evidence either way: the streak, the misses and the old TTLs all stand.
        return replace(seen, mx=(), ttl=None), ""
    if observed.verdict is Verdict.FILTERED:
        return _extend_streak(replace(seen, misses=0, filtered_at=now), before, rules, now)
    first_hand, cached = _old_ttls(observed)
    return replace(
        seen,
        filtered_since=None,
        filtered_count=0,
        filtered_at=None,
        misses=before.misses + 1,
        old_ttl=_larger(before.old_ttl, first_hand),
        old_ttl_cached=_larger(before.old_ttl_cached, cached),
    ), ""


def _extend_streak(
    seen: DomainRecord, before: DomainRecord, rules: Rules, now: datetime
) -> tuple[DomainRecord, str]:
    last = before.filtered_at
    if before.filtered_since is None or last is None or before.filtered_count == 0:
        return replace(seen, filtered_since=now, filtered_count=1), ""
    gap = now - last
    if timedelta(0) < gap <= rules.allowed_gap:
        return replace(seen, filtered_count=before.filtered_count + 1), ""
    why = (
        f"{_fmt(gap)} since its last filtered observation ({last.isoformat()}), more than "
        f"the allowed gap of {_fmt(rules.allowed_gap)} (1.5 x daemon.interval + jitter + the "
        "last cycle's duration): the MX may have moved and come back unseen"
    )
    if gap <= timedelta(0):
        why = f"the clock is at or before its last filtered observation ({last.isoformat()})"
    return replace(seen, filtered_since=now, filtered_count=1), why


def _old_ttls(observed: DomainObservation) -> tuple[int | None, int | None]:
    """The longest TTL of this cycle's not-filtered answers: (authoritative, resolver).

    An authoritative answer carries the record's own TTL. A resolver's TTL is only what is left
    in its cache, and an answer with no TTL at all tells nothing of how long it is kept: both
    count as second-hand, which the settle rule raises to at least `default_old_ttl`.
    """
    first_hand: int | None = None
    cached: int | None = None
    for source in observed.sources:
        if source.verdict not in NOT_CUT_OVER:
            continue
        if source.authoritative and source.ttl is not None:
            first_hand = _larger(first_hand, source.ttl)
        else:
            cached = _larger(cached, source.ttl or 0)
    return first_hand, cached


def _larger(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


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
                "authoritative": o.authoritative,
                "reason": o.reason,
            }
            for o in observed.sources
        ],
    }


def _mx_text(mx: Sequence[MxRecord]) -> list[str]:
    """MX records as in a zone file, "10 mx1.example": compact, for ten thousand journal rows."""
    return [f"{r.preference} {r.exchange}" for r in mx]


# ---------------------------------------------------------------------------------------------
# Tenant-wide view of this cycle's verdicts.


class Outlook(enum.Enum):
    ALL_FILTERED = "every covered domain filtered"
    NOT_CUT_OVER = "some covered domain not cut over"
    INCONCLUSIVE = "some covered domain unknown, none contradicting"


def outlook(covered: Sequence[DomainRecord]) -> Outlook:
    verdicts = [d.verdict for d in covered]
    if any(v in NOT_CUT_OVER for v in verdicts):
        return Outlook.NOT_CUT_OVER
    if verdicts and all(v is Verdict.FILTERED for v in verdicts):
        return Outlook.ALL_FILTERED
    return Outlook.INCONCLUSIVE


def _not_filtered(covered: Sequence[DomainRecord]) -> str:
    return ", ".join(
        f"{d.domain} is {d.verdict or 'not yet observed'}"
        for d in covered
        if d.verdict is not Verdict.FILTERED
    )


# ---------------------------------------------------------------------------------------------
# Settling: how long a domain must have been filtered.


def settle_for(domain: DomainRecord, cfg: PolicyConfig) -> tuple[timedelta, str]:
    """The settle time of one domain, and why: `settle`, or under "auto" the longest old TTL
    seen in any not-filtered answer (at least `min_settle`)."""
    if cfg.settle is not None:
        return cfg.settle, f"settle {_fmt(cfg.settle)}"
    old, why = _old_ttl(domain, cfg)
    if old >= cfg.min_settle:
        return old, why
    return cfg.min_settle, f"min_settle {_fmt(cfg.min_settle)} (longer than {why})"


def _old_ttl(domain: DomainRecord, cfg: PolicyConfig) -> tuple[timedelta, str]:
    candidates: list[tuple[timedelta, str]] = []
    if domain.old_ttl is not None:
        candidates.append((_seconds(domain.old_ttl), f"old MX TTL {domain.old_ttl}s"))
    if domain.old_ttl_cached is not None:
        left = _seconds(domain.old_ttl_cached)
        if left >= cfg.default_old_ttl:
            why = f"old MX TTL {domain.old_ttl_cached}s (at least, seen through a resolver)"
            candidates.append((left, why))
        else:
            why = (
                f"default_old_ttl {_fmt(cfg.default_old_ttl)}: a resolver's TTL for the old MX "
                f"({domain.old_ttl_cached}s) is only what it had left"
            )
            candidates.append((cfg.default_old_ttl, why))
    if not candidates:
        return cfg.default_old_ttl, f"no old MX seen, default_old_ttl {_fmt(cfg.default_old_ttl)}"
    old, why = max(candidates, key=lambda candidate: candidate[0])
    if old > MAX_OLD_TTL:
        return MAX_OLD_TTL, f"{why}, capped at {_fmt(MAX_OLD_TTL)} as resolvers cap it"
    return old, why


def eligible_at(covered: Sequence[DomainRecord], cfg: PolicyConfig) -> tuple[datetime | None, str]:
    """The latest streak start + settle over the covered domains, and the domain deciding it."""
    latest: tuple[datetime, str] | None = None
    for domain in covered:
        if domain.filtered_since is None:
            return None, f"{domain.domain} is not filtered"
        wait, why = settle_for(domain, cfg)
        at = domain.filtered_since + wait
        if latest is None or at > latest[0]:
            since = domain.filtered_since.isoformat()
            latest = (at, f"{domain.domain} filtered since {since} + {why}")
    return latest if latest is not None else (None, "no covered domains")


def _seconds(value: int) -> timedelta:
    return timedelta(seconds=value)


def _fmt(delta: timedelta) -> str:
    return f"{int(delta.total_seconds())}s"


# ---------------------------------------------------------------------------------------------
# The gate (DESIGN.md §3, "The gate, stated once").


@dataclass(frozen=True)
class Gate:
    """Why the connector may not be enabled now; open when both lists are empty.

    `unread` holds the conditions that only a read of Exchange in this cycle can meet.
    """

    waits: tuple[str, ...]
    unread: tuple[str, ...]

    @property
    def open(self) -> bool:
        return not self.waits and not self.unread

    @property
    def needs_read(self) -> bool:
        return not self.waits and bool(self.unread)


def may_enable(
    covered: Sequence[DomainRecord],
    rules: Rules,
    now: datetime,
    *,
    covered_read: bool,
    audit_passed: bool,
    exclusive: bool,
) -> Gate:
    """The connector may be enabled at `now` only if, for every covered domain, the combined
    verdict has been filtered on at least `confirmations` consecutive observations of that
    domain (the last one now), with no gap between observations longer than the allowed gap
    (a gap restarts the streak: `update_domains`), and now >= streak start + settle, where
    settle under "auto" uses the largest old TTL seen in any not-filtered answer, a
    resolver-only TTL counting as at least `default_old_ttl` (`settle_for`); and the covered
    set was read completely this cycle (a domain new to it has no streak); and the connector
    passed the audit in this cycle; and this process holds the state exclusively.
    """
    waits = [wait for domain in covered if (wait := _domain_wait(domain, rules, now))]
    if not covered:
        waits.append("the tenant has no covered domains")
    if not exclusive:
        waits.append("this process does not hold the state exclusively")
    unread = []
    if not covered_read:
        unread.append("the accepted domains were not read completely this cycle")
    if not audit_passed:
        unread.append("the connector was not read and audited this cycle")
    return Gate(tuple(waits), tuple(unread))


def _domain_wait(domain: DomainRecord, rules: Rules, now: datetime) -> str:
    cfg = rules.policy
    if domain.verdict is not Verdict.FILTERED or domain.filtered_at != now:
        return f"{domain.domain} is {domain.verdict or 'not yet observed'} this cycle"
    if domain.filtered_since is None or domain.filtered_count < cfg.confirmations:
        count = domain.filtered_count
        return f"{domain.domain} filtered on {count} of {cfg.confirmations} observations"
    settle, why = settle_for(domain, cfg)
    if now < domain.filtered_since + settle:
        until = (domain.filtered_since + settle).isoformat()
        return f"{domain.domain} settling until {until} ({why})"
    return ""


# ---------------------------------------------------------------------------------------------
# Audit: is this connector the one that is safe to turn on?


@dataclass(frozen=True)
class Audit:
    failures: tuple[str, ...]  # any failure blocks: mxwatch never writes to this connector
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


def _subdomain_warnings(accepted: AcceptedDomains | ExchangeFailure | None) -> tuple[str, ...]:
    if not isinstance(accepted, AcceptedDomains):
        return ()
    return tuple(
        f"accepted domain {d.name} has MatchSubDomains: the connector covers its subdomains "
        "too, and mxwatch cannot see their MX"
        for d in accepted.domains
        if d.match_subdomains
    )


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
class Reads:
    """What this cycle read from Exchange; None where it read nothing."""

    connector: ConnectorRead = None
    accepted: AcceptedDomains | ExchangeFailure | None = None

    @property
    def covered_read(self) -> bool:
        """The accepted domains were read completely this cycle, every name readable."""
        return isinstance(self.accepted, AcceptedDomains) and not self.accepted.unreadable


@dataclass(frozen=True)
class Decision:
    record: TenantRecord
    transitions: tuple[Transition, ...] = ()
    actions: tuple[Action, ...] = ()
    audit: Audit | None = None
    waiting_for: str = ""  # why nothing happened, when something might have
    # Set when the decision needs the connector and the accepted domains read first: read
    # them, then call decide again with the reads.
    needs_connector: str = ""
    intent_settled: bool = False  # the pending intent is resolved: forget it
    confirmed: Intent | None = None  # an interrupted write of mxwatch's, found done


def action_intent(action: Action, now: datetime) -> Intent:
    kind = WriteAction.ENABLE if isinstance(action, Enable) else WriteAction.DISABLE
    return Intent(kind, action.guid, now)


class _Journal:
    """Collects the tenant transitions of one decision."""

    def __init__(self, tenant: str, now: datetime, covered: Sequence[DomainRecord]) -> None:
        self.tenant, self.now, self.covered = tenant, now, covered
        self.transitions: list[Transition] = []

    def move(
        self, record: TenantRecord, to: TenantState, reason: str, **changes: Any
    ) -> TenantRecord:
        evidence = {
            "domains": {d.domain: d.verdict.value if d.verdict else None for d in self.covered},
            "mx": {d.domain: _mx_text(d.mx) for d in self.covered},
            "connector": {"guid": record.connector_guid, "enabled": record.connector_enabled},
        }
        self.transitions.append(
            Transition(self.now, self.tenant, None, record.state.value, to.value, reason, evidence)
        )
        return replace(record, state=to, since=self.now, reason=reason, **changes)


@dataclass(frozen=True)
class _Cycle:
    """One decision's facts, as the state rules see them."""

    journal: _Journal
    covered: tuple[DomainRecord, ...]
    rules: Rules
    guid: str | None  # the connector, read and audited this cycle: safe to write to
    covered_read: bool
    exclusive: bool

    @property
    def now(self) -> datetime:
        return self.journal.now


@dataclass(frozen=True)
class _Outcome:
    record: TenantRecord
    actions: tuple[Action, ...] = ()
    waiting_for: str = ""
    needs_connector: str = ""


def decide(
    tenant: str,
    record: TenantRecord,
    covered: Sequence[DomainRecord],
    *,
    provider: Provider,
    rules: Rules,
    now: datetime,
    reads: Reads | None = None,
    intent: Intent | None = None,
    exclusive: bool = True,
) -> Decision:
    """The tenant's next state and the Exchange writes to make, from this cycle's facts.

    `covered` are the records of every covered domain, updated with this cycle's
    observations. Without `reads`, the decision may answer `needs_connector`: the caller reads
    the connector and the accepted domains, and asks again with them. A steady cycle needs no
    read at all.

    | state      | event                                          | next       | action  |
    |------------|------------------------------------------------|------------|---------|
    | any        | connector missing, ambiguous or failing the    | blocked    |         |
    |            | audit (enabled or not); credentials or         |            |         |
    |            | permission error                               |            |         |
    | blocked    | connector found disabled, passes the audit     | waiting    |         |
    | waiting,   | connector found enabled, passes the audit:     | enabled    |         |
    | settling,  |   adopted, or mxwatch's own interrupted enable |            |         |
    | blocked    |   ... while a covered domain is not cut over   | regressed  |         |
    | enabled,   | connector found disabled                       | waiting    |         |
    | regressed  |                                                |            |         |
    | waiting    | every covered domain filtered                  | settling   |         |
    | settling   | a covered domain not cut over                  | waiting    |         |
    | settling   | the gate (`may_enable`) holds                  | settling   | enable  |
    | enabled    | a covered domain not filtered on               | regressed  | disable |
    |            | `confirmations` observations in a row          |            | (opt.)  |
    | regressed  | every covered domain filtered                  | enabled    |         |
    | regressed  | still not cut over, on_regression = "disable"  | regressed  | disable |

    Unknown verdicts neither confirm nor reset anything.
    """
    covered = tuple(covered)
    journal = _Journal(tenant, now, covered)
    if reads is None:
        why = _read_reason(tenant, record, intent, rules, now)
        if why:
            return Decision(record, needs_connector=why)
        cycle = _Cycle(journal, covered, rules, None, False, exclusive)
        outcome = _STATE_RULES[record.state](cycle, record)
        if outcome.needs_connector:
            return Decision(record, needs_connector=outcome.needs_connector)
        return Decision(outcome.record, tuple(journal.transitions), waiting_for=outcome.waiting_for)
    facts = _apply_connector(journal, record, reads, intent, provider)
    if facts.halt:
        return _decision(journal, facts, _Outcome(facts.record, waiting_for=facts.record.reason))
    cycle = _Cycle(journal, covered, rules, facts.guid, reads.covered_read, exclusive)
    outcome = _STATE_RULES[facts.record.state](cycle, facts.record)
    if outcome.needs_connector:  # read already, without what it needs: say so and wait
        outcome = replace(outcome, needs_connector="", waiting_for=_read_failed(reads, facts))
    return _decision(journal, facts, outcome)


def _decision(journal: _Journal, facts: _ConnectorFacts, outcome: _Outcome) -> Decision:
    return Decision(
        outcome.record,
        tuple(journal.transitions),
        outcome.actions,
        facts.audit,
        outcome.waiting_for,
        intent_settled=facts.intent_settled,
        confirmed=facts.confirmed,
    )


def _read_reason(
    tenant: str, record: TenantRecord, intent: Intent | None, rules: Rules, now: datetime
) -> str:
    """Why the connector must be read this cycle whatever the domains say, or ""."""
    if record.connector_checked_at is None:
        return "first sight of the tenant"
    if intent is not None:
        return f"confirming mxwatch's interrupted {intent.action} of {intent.at.isoformat()}"
    if record.state is TenantState.BLOCKED:
        return "retrying a blocked tenant"
    if now >= record.connector_checked_at + _recheck_interval(tenant, rules.policy):
        return "periodic recheck"
    return ""


def _recheck_interval(tenant: str, cfg: PolicyConfig) -> timedelta:
    # Spread rechecks over 75-100 % of the interval so hundreds of tenants first seen in the
    # same cycle do not all call Exchange again in the same later cycle.
    fraction = (zlib.crc32(tenant.encode()) % 1000) / 4000
    return cfg.recheck * (1 - fraction)


def _read_failed(reads: Reads, facts: _ConnectorFacts) -> str:
    problems = []
    if isinstance(reads.connector, ExchangeFailure):
        problems.append(f"connector read failed: {reads.connector.message}")
    elif facts.guid is None:
        problems.append("the connector could not be audited this cycle")
    if isinstance(reads.accepted, ExchangeFailure):
        problems.append(f"accepted domains read failed: {reads.accepted.message}")
    elif isinstance(reads.accepted, AcceptedDomains) and reads.accepted.unreadable:
        names = ", ".join(repr(n) for n in reads.accepted.unreadable)
        problems.append(f"accepted domain(s) {names} are not valid domain names")
    return "; ".join(problems) or "the reads of this cycle were incomplete"


# --- the connector, as read this cycle ---------------------------------------------------------


@dataclass(frozen=True)
class _ConnectorFacts:
    record: TenantRecord
    audit: Audit | None = None
    guid: str | None = None  # read and audited this cycle: may be written to
    halt: bool = False  # the read decided this cycle: no domain rules
    intent_settled: bool = False
    confirmed: Intent | None = None


def _apply_connector(
    journal: _Journal,
    record: TenantRecord,
    reads: Reads,
    intent: Intent | None,
    provider: Provider,
) -> _ConnectorFacts:
    read = reads.connector
    if read is None or (isinstance(read, ExchangeFailure) and read.kind is ErrorKind.TRANSIENT):
        return _ConnectorFacts(record)  # the write, if any, stays unconfirmed
    if isinstance(read, ExchangeFailure):
        reason = f"{read.kind.value}: {read.message}"
        return _ConnectorFacts(_block(journal, record, reason), halt=True)
    if read.status is not LookupStatus.FOUND or read.connector is None:
        reason = f"connector {read.status.value}: {read.detail}"
        blocked = _block(journal, record, reason)
        return _ConnectorFacts(blocked, halt=True, intent_settled=True)
    found = read.connector
    record = replace(
        record,
        connector_guid=found.guid,
        connector_enabled=found.enabled,
        connector_checked_at=journal.now,
    )
    connector_audit = audit_connector(found, provider)
    audit = replace(
        connector_audit, warnings=connector_audit.warnings + _subdomain_warnings(reads.accepted)
    )
    if not audit.passed:
        # Whatever its state, this is not the filter's connector: never write to it.
        reason = "audit failed: " + "; ".join(audit.failures)
        if found.enabled:
            reason += " (the connector is enabled: inbound mail may be bouncing)"
        blocked = _block(journal, record, reason)
        return _ConnectorFacts(blocked, audit, halt=True, intent_settled=True)
    return _found(journal, record, found, audit, intent)


def _found(
    journal: _Journal, record: TenantRecord, found: Connector, audit: Audit, intent: Intent | None
) -> _ConnectorFacts:
    on = record.state in (TenantState.ENABLED, TenantState.REGRESSED)
    settled = intent is not None
    if found.enabled and not on:
        return _ConnectorFacts(
            _found_enabled(journal, record, intent),
            audit,
            found.guid,
            halt=True,  # adoption is the whole of this cycle: no disable in the same breath
            intent_settled=settled,
            confirmed=intent if _is(intent, WriteAction.ENABLE) else None,
        )
    if not found.enabled and on:
        mine = _is(intent, WriteAction.DISABLE)
        reason = "disabled by mxwatch" + _interrupted(intent) if mine else ""
        reason = reason or "connector found disabled (turned off outside mxwatch)"
        record = journal.move(
            record, TenantState.WAITING, reason, confirmations=0, eligible_at=None
        )
        return _ConnectorFacts(
            record, audit, halt=True, intent_settled=settled, confirmed=intent if mine else None
        )
    if record.state is TenantState.BLOCKED:
        record = journal.move(
            record,
            TenantState.WAITING,
            "connector found and passes the audit",
            confirmations=0,
            eligible_at=None,
        )
    return _ConnectorFacts(record, audit, found.guid, intent_settled=settled)


def _is(intent: Intent | None, action: WriteAction) -> bool:
    return intent is not None and intent.action is action


def _interrupted(intent: Intent | None) -> str:
    assert intent is not None
    return (
        f" at {intent.at.isoformat()} (its cycle was interrupted before the record; "
        "confirmed by reading the connector back)"
    )


def _block(journal: _Journal, record: TenantRecord, reason: str) -> TenantRecord:
    checked = replace(record, connector_checked_at=journal.now)
    if record.state is TenantState.BLOCKED and record.reason == reason:
        return checked
    return journal.move(checked, TenantState.BLOCKED, reason, confirmations=0, eligible_at=None)


def _found_enabled(journal: _Journal, record: TenantRecord, intent: Intent | None) -> TenantRecord:
    if _is(intent, WriteAction.ENABLE):
        by = "enabled by mxwatch" + _interrupted(intent)
    else:
        by = "adopted: connector found enabled"
    if outlook(journal.covered) is Outlook.NOT_CUT_OVER:
        reason = f"{by} while {_not_filtered(journal.covered)}; inbound mail there is bouncing"
        return journal.move(
            record, TenantState.REGRESSED, reason, confirmations=0, eligible_at=None
        )
    return journal.move(record, TenantState.ENABLED, by, confirmations=0, eligible_at=None)


# --- the state rules -------------------------------------------------------------------------


def _waiting(cycle: _Cycle, record: TenantRecord) -> _Outcome:
    if outlook(cycle.covered) is not Outlook.ALL_FILTERED:
        return _Outcome(record, waiting_for=_not_filtered(cycle.covered))
    record = cycle.journal.move(record, TenantState.SETTLING, "every covered domain filtered")
    return _maybe_enable(cycle, record)


def _settling(cycle: _Cycle, record: TenantRecord) -> _Outcome:
    view = outlook(cycle.covered)
    if view is Outlook.INCONCLUSIVE:
        return _Outcome(_progress(cycle, record), waiting_for=_not_filtered(cycle.covered))
    if view is Outlook.NOT_CUT_OVER:
        record = cycle.journal.move(
            record,
            TenantState.WAITING,
            _not_filtered(cycle.covered),
            confirmations=0,
            eligible_at=None,
            eligible_reason="",
        )
        return _Outcome(record)
    return _maybe_enable(cycle, record)


def _maybe_enable(cycle: _Cycle, record: TenantRecord) -> _Outcome:
    record = _progress(cycle, record)
    gate = may_enable(
        cycle.covered,
        cycle.rules,
        cycle.now,
        covered_read=cycle.covered_read,
        audit_passed=cycle.guid is not None,
        exclusive=cycle.exclusive,
    )
    if gate.open:
        assert cycle.guid is not None  # audit_passed
        return _Outcome(record, (Enable(cycle.guid),))
    if gate.needs_read:
        return _Outcome(record, needs_connector="audit before enabling")
    return _Outcome(record, waiting_for="; ".join(gate.waits))


def _progress(cycle: _Cycle, record: TenantRecord) -> TenantRecord:
    """The settling tenant's counters for status: fewest confirmations, and eligible_at."""
    at, why = eligible_at(cycle.covered, cycle.rules.policy)
    fewest = min((d.filtered_count for d in cycle.covered), default=0)
    return replace(record, confirmations=fewest, eligible_at=at, eligible_reason=why)


def _enabled(cycle: _Cycle, record: TenantRecord) -> _Outcome:
    confirmations = cycle.rules.policy.confirmations
    regressed = [d for d in cycle.covered if d.misses >= confirmations]
    if not regressed:
        pending = [d.domain for d in cycle.covered if d.misses]
        return _Outcome(record, waiting_for=_unconfirmed(pending))
    reason = f"{_not_filtered(regressed)}; inbound mail there is bouncing"
    record = cycle.journal.move(record, TenantState.REGRESSED, reason)
    return _disable(cycle, record)


def _unconfirmed(domains: Sequence[str]) -> str:
    return f"regression of {', '.join(domains)} not yet confirmed" if domains else ""


def _regressed(cycle: _Cycle, record: TenantRecord) -> _Outcome:
    view = outlook(cycle.covered)
    if view is Outlook.ALL_FILTERED:
        record = cycle.journal.move(record, TenantState.ENABLED, "MX back on the filter")
        return _Outcome(record)
    if view is Outlook.INCONCLUSIVE:
        return _Outcome(record)
    return _disable(cycle, record)


def _disable(cycle: _Cycle, record: TenantRecord) -> _Outcome:
    if cycle.rules.policy.on_regression != "disable":
        return _Outcome(record)
    if cycle.guid is None:
        return _Outcome(record, needs_connector="read before disabling after a regression")
    return _Outcome(record, (Disable(cycle.guid),))


def _blocked(cycle: _Cycle, record: TenantRecord) -> _Outcome:
    return _Outcome(record, waiting_for=record.reason)


_STATE_RULES: dict[TenantState, Callable[[_Cycle, TenantRecord], _Outcome]] = {
    TenantState.WAITING: _waiting,
    TenantState.SETTLING: _settling,
    TenantState.ENABLED: _enabled,
    TenantState.REGRESSED: _regressed,
    TenantState.BLOCKED: _blocked,
}


# --- after a write -----------------------------------------------------------------------------


def after_action(
    tenant: str,
    record: TenantRecord,
    covered: Sequence[DomainRecord],
    action: Action,
    outcome: Connector | ExchangeFailure,
    now: datetime,
) -> Decision:
    """The record after an enable/disable and its read-back (or its failure).

    A failure leaves the intent pending, whatever its kind: the write may have been made before
    the answer was lost, and the next cycle reads the connector back to find out.
    """
    journal = _Journal(tenant, now, tuple(covered))
    if isinstance(outcome, ExchangeFailure):
        if outcome.kind is ErrorKind.TRANSIENT:
            return Decision(record, waiting_for=f"{outcome.message}; confirming next cycle")
        record = _block(journal, record, f"{outcome.kind.value}: {outcome.message}")
        return Decision(record, tuple(journal.transitions))
    record = replace(record, connector_enabled=outcome.enabled, connector_checked_at=now)
    wanted = isinstance(action, Enable)
    if outcome.enabled != wanted:
        waiting = f"read-back says Enabled={outcome.enabled}; retrying next cycle"
        return Decision(record, waiting_for=waiting, intent_settled=True)
    if wanted:
        reason = "enabled by mxwatch: every covered domain filtered and settled"
        record = journal.move(
            record, TenantState.ENABLED, reason, confirmations=0, eligible_at=None
        )
    else:
        reason = "disabled by mxwatch after a regression"
        record = journal.move(
            record, TenantState.WAITING, reason, confirmations=0, eligible_at=None
        )
    return Decision(record, tuple(journal.transitions), intent_settled=True)
