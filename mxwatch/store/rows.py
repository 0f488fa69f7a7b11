"""What both state backends share: the stored values, the statements that write them, and
the conversion between values and rows (times as fixed-width UTC ISO text, MX sets and evidence
as JSON), so that SQLite and PostgreSQL hold the same tables, columns and text.

Statements use `?` placeholders; a backend whose driver wants another style converts them.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from ..model import (
    DomainRecord,
    Intent,
    LookupKind,
    MxRecord,
    RememberedLookup,
    TenantRecord,
    TenantState,
    Transition,
    Verdict,
    WriteAction,
)


class Row(Protocol):
    """A database row read by column name (sqlite3.Row, or a dict from psycopg)."""

    def __getitem__(self, key: str) -> Any: ...


class StoreError(Exception):
    """The state cannot be used; the message names the file or database and what to do.

    `kind` names the failure for logs and metrics: "store" unless the backend knows better
    (busy, unreachable, auth_failed, read_only, conflict, leader_lost, ...).
    """

    def __init__(self, message: str, *, kind: str = "store") -> None:
        super().__init__(message)
        self.kind = kind


class LeaderLost(StoreError):
    """This process no longer leads a shared state: it must stop acting at once."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="leader_lost")


class StoreBusy(StoreError):
    """Another process holds the state for its cycle; the message names it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="busy")


@dataclass(frozen=True)
class StoredTenant:
    tenant_id: str
    connector: str  # the configured connector identity (name or GUID)
    record: TenantRecord
    domains: tuple[DomainRecord, ...]
    intent: Intent | None = None  # a connector write whose outcome is not yet recorded


@dataclass(frozen=True)
class CycleRun:
    """The last finished cycle: when, whether it had no errors, and the last one that had none."""

    finished_at: datetime
    ok: bool
    last_ok_at: datetime | None
    duration: float | None = None  # seconds


UPSERT_TENANT = """
    INSERT INTO tenant (
        name, tenant_id, connector, state, since, reason, confirmations, eligible_at,
        eligible_reason, waiting_for, connector_guid, connector_enabled, connector_checked_at
    ) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET
        tenant_id = excluded.tenant_id,
        connector = excluded.connector,
        state = excluded.state,
        since = excluded.since,
        reason = excluded.reason,
        confirmations = excluded.confirmations,
        eligible_at = excluded.eligible_at,
        eligible_reason = excluded.eligible_reason,
        waiting_for = excluded.waiting_for,
        connector_guid = excluded.connector_guid,
        connector_enabled = excluded.connector_enabled,
        connector_checked_at = excluded.connector_checked_at
"""
INSERT_DOMAIN = (
    "INSERT INTO domain (tenant, domain, position, verdict, mx, ttl, checked_at, filtered_since,"
    " filtered_count, filtered_at, misses, old_ttl, old_ttl_cached, accepted)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_JOURNAL = (
    "INSERT INTO journal (at, tenant, domain, from_state, to_state, reason, evidence)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


UPSERT_INTENT = (
    "INSERT INTO intent (tenant, action, guid, at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (tenant) DO UPDATE SET action = excluded.action, guid = excluded.guid,"
    " at = excluded.at"
)


RECORD_CYCLE = """
    INSERT INTO cycle_run (id, finished_at, ok, last_ok_at, duration_s) VALUES (1, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET
        finished_at = excluded.finished_at,
        ok = excluded.ok,
        duration_s = excluded.duration_s,
        last_ok_at = coalesce(excluded.last_ok_at, cycle_run.last_ok_at)
"""

# DNS lookups kept between runs (dns.py). A cache, not state: not journalled, not fenced, and
# a lost row costs one lookup. Times sort as text (time_to_db), so expiry compares in SQL.
CREATE_DNS_LOOKUP = """CREATE TABLE dns_lookup (
    kind TEXT NOT NULL CHECK (kind IN ('zone', 'ns', 'a', 'alias')),
    name TEXT NOT NULL,
    found TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (kind, name)
)"""
UPSERT_LOOKUP = (
    "INSERT INTO dns_lookup (kind, name, found, expires_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (kind, name) DO UPDATE SET found = excluded.found,"
    " expires_at = excluded.expires_at"
)
DELETE_EXPIRED_LOOKUPS = "DELETE FROM dns_lookup WHERE expires_at <= ?"
SELECT_LOOKUPS = "SELECT * FROM dns_lookup WHERE expires_at > ? ORDER BY kind, name"


# -- values <-> rows ---------------------------------------------------------------------------


def reject_duplicates(tenants: Sequence[StoredTenant]) -> None:
    names = [t.record.name for t in tenants]
    if len(set(names)) != len(names):
        raise ValueError(f"save_cycle got the same tenant more than once: {sorted(names)}")
    for t in tenants:
        domains = [d.domain for d in t.domains]
        if len(set(domains)) != len(domains):
            raise ValueError(f"tenant {t.record.name} lists a domain twice: {domains}")


def tenant_row(t: StoredTenant) -> tuple[Any, ...]:
    r = t.record
    where = f"tenant {r.name}"
    return (
        r.name,
        t.tenant_id,
        t.connector,
        TenantState(r.state).value,
        time_to_db(r.since, f"{where}: since"),
        r.reason,
        r.confirmations,
        time_to_db(r.eligible_at, f"{where}: eligible_at"),
        r.eligible_reason,
        r.waiting_for,
        r.connector_guid,
        None if r.connector_enabled is None else int(r.connector_enabled),
        time_to_db(r.connector_checked_at, f"{where}: connector_checked_at"),
    )


def tenant_record(row: Row) -> TenantRecord:
    enabled = row["connector_enabled"]
    return TenantRecord(
        name=row["name"],
        state=TenantState(row["state"]),
        since=time_from_db(row["since"]),
        reason=row["reason"],
        confirmations=row["confirmations"],
        eligible_at=time_from_db(row["eligible_at"]),
        eligible_reason=row["eligible_reason"],
        waiting_for=row["waiting_for"],
        connector_guid=row["connector_guid"],
        connector_enabled=None if enabled is None else bool(enabled),
        connector_checked_at=time_from_db(row["connector_checked_at"]),
    )


def domain_row(tenant: str, position: int, d: DomainRecord) -> tuple[Any, ...]:
    where = f"tenant {tenant}, domain {d.domain}"
    mx = [{"preference": m.preference, "exchange": m.exchange} for m in d.mx]
    return (
        tenant,
        d.domain,
        position,
        None if d.verdict is None else Verdict(d.verdict).value,
        json.dumps(mx),
        d.ttl,
        time_to_db(d.checked_at, f"{where}: checked_at"),
        time_to_db(d.filtered_since, f"{where}: filtered_since"),
        d.filtered_count,
        time_to_db(d.filtered_at, f"{where}: filtered_at"),
        d.misses,
        d.old_ttl,
        d.old_ttl_cached,
        int(d.accepted),
    )


def domain_record(row: Row) -> DomainRecord:
    verdict = row["verdict"]
    return DomainRecord(
        domain=row["domain"],
        verdict=None if verdict is None else Verdict(verdict),
        mx=tuple(MxRecord(m["preference"], m["exchange"]) for m in json.loads(row["mx"])),
        ttl=row["ttl"],
        checked_at=time_from_db(row["checked_at"]),
        filtered_since=time_from_db(row["filtered_since"]),
        filtered_count=row["filtered_count"],
        filtered_at=time_from_db(row["filtered_at"]),
        misses=row["misses"],
        old_ttl=row["old_ttl"],
        old_ttl_cached=row["old_ttl_cached"],
        accepted=bool(row["accepted"]),
    )


def stored_tenant(row: Row, domains: Sequence[Row], intent: Row | None) -> StoredTenant:
    return StoredTenant(
        tenant_id=row["tenant_id"],
        connector=row["connector"],
        record=tenant_record(row),
        domains=tuple(domain_record(d) for d in domains),
        intent=None if intent is None else intent_from_row(intent),
    )


def transition_from_row(row: Row) -> Transition:
    return Transition(
        at=required_time(row["at"]),
        tenant=row["tenant"],
        domain=row["domain"],
        from_state=row["from_state"],
        to_state=row["to_state"],
        reason=row["reason"],
        evidence=json.loads(row["evidence"]),
    )


def cycle_run_from_row(row: Row) -> CycleRun:
    return CycleRun(
        finished_at=required_time(row["finished_at"]),
        ok=bool(row["ok"]),
        last_ok_at=time_from_db(row["last_ok_at"]),
        duration=row["duration_s"],
    )


def intent_row(t: StoredTenant) -> tuple[Any, ...]:
    intent = t.intent
    assert intent is not None
    at = time_to_db(intent.at, f"tenant {t.record.name}: intent.at")
    return (t.record.name, intent.action.value, intent.guid, at)


def intent_from_row(row: Row) -> Intent:
    return Intent(WriteAction(row["action"]), row["guid"], required_time(row["at"]))


def journal_row(t: Transition) -> tuple[Any, ...]:
    at = time_to_db(t.at, f"transition of tenant {t.tenant}: at")
    try:
        evidence = json.dumps(t.evidence, default=evidence_default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"evidence of the {t.tenant} transition at {at}: {exc}") from exc
    return (at, t.tenant, t.domain, t.from_state, t.to_state, t.reason, evidence)


def evidence_default(value: object) -> object:
    """JSON for the values evidence is built from; anything else is a caller bug."""
    if isinstance(value, datetime):
        return time_to_db(value, "a datetime in evidence")
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Shallow, so nested datetimes and enums come back through this function.
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)  # stable across runs, whatever the element types
    raise TypeError(f"cannot store a {type(value).__name__} as JSON evidence: {value!r}")


def time_to_db(value: datetime | None, what: str) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{what} is a naive datetime ({value.isoformat()}); pass a timezone-aware time"
        )
    # Fixed width (always microseconds, always +00:00) so stored times also sort as text.
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def required_time(value: str) -> datetime:
    parsed = time_from_db(value)
    if parsed is None:
        raise ValueError("a required time is missing")
    return parsed


def time_from_db(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"stored time {value!r} has no time zone")
    return parsed.astimezone(UTC)


def lookup_row(lookup: RememberedLookup) -> tuple[Any, ...]:
    expires_at = time_to_db(lookup.expires_at, "a DNS lookup's expires_at")
    return (lookup.kind.value, lookup.name, json.dumps(list(lookup.found)), expires_at)


def lookup_from_row(row: Row) -> RememberedLookup:
    found = json.loads(row["found"])
    if not isinstance(found, list) or not all(isinstance(item, str) for item in found):
        raise ValueError(f"found is not a list of names: {row['found']!r}")
    return RememberedLookup(
        LookupKind(row["kind"]), row["name"], tuple(found), required_time(row["expires_at"])
    )
