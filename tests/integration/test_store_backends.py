"""The state store's guarantees, on both backends: SQLite (a file) and PostgreSQL (a real
server started by the fixture). Same interface, same tables and columns, same refusals."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mxwatch.model import (
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
from mxwatch.store import CycleRun, LeaderLost, Store, StoreBusy, StoredTenant, StoreError
from mxwatch.store.postgres import PostgresStore
from tests.fixtures.postgres import PostgresServer

T0 = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
GUID = "aaaaaaaa-0000-4000-8000-000000000001"

Opener = Callable[[], Any]


class Backend:
    """Opens stores on one state, and runs raw SQL on it as another client would."""

    def __init__(self, name: str, open_rw: Opener, open_ro: Opener, raw: Callable[[str], None]):
        self.name, self.open, self.open_readonly, self.raw = name, open_rw, open_ro, raw


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "state.db"

        def raw_sqlite(statement: str) -> None:
            conn = sqlite3.connect(path, isolation_level=None)
            try:
                conn.execute(statement)
            finally:
                conn.close()

        yield Backend(
            "sqlite", lambda: Store.open(path), lambda: Store.open_readonly(path), raw_sqlite
        )
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    os.environ["PGPASSFILE"] = str(server.passfile)
    dsn = server.dsn()

    def raw_postgres(statement: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(statement.encode())

    try:
        yield Backend(
            "postgres",
            lambda: PostgresStore.open(dsn),
            lambda: PostgresStore.open_readonly(dsn),
            raw_postgres,
        )
    finally:
        os.environ.pop("PGPASSFILE", None)


def tenant(name: str = "contoso", *, intent: bool = False) -> StoredTenant:
    record = TenantRecord(
        name=name,
        state=TenantState.SETTLING,
        since=T0,
        reason="every covered domain filtered",
        confirmations=2,
        eligible_at=T0 + timedelta(hours=1),
        eligible_reason="old MX TTL 3600s",
        waiting_for="contoso.net settling until ...",
        connector_guid=GUID,
        connector_enabled=False,
        connector_checked_at=T0,
    )
    domains = (
        DomainRecord(
            "contoso.net",
            Verdict.FILTERED,
            (MxRecord(20, "b.inbound.emailservice.io"), MxRecord(10, "a.inbound.emailservice.io")),
            300,
            T0,
            filtered_since=T0 - timedelta(minutes=10),
            filtered_count=3,
            filtered_at=T0,
            old_ttl=3600,
            old_ttl_cached=86400,
            accepted=True,
        ),
        DomainRecord("contoso.com", Verdict.NO_MX, (), 0, T0, misses=2, old_ttl_cached=0),
    )
    pending = Intent(WriteAction.ENABLE, GUID, T0) if intent else None
    return StoredTenant("11111111-1111-1111-1111-111111111111", "conn", record, domains, pending)


def transition(to: str, minutes: int = 0, name: str = "contoso") -> Transition:
    at = T0 + timedelta(minutes=minutes)
    return Transition(at, name, None, "waiting", to, "r", {"mx": ["10 a.example"], "n": 1})


def test_everything_round_trips(backend: Backend) -> None:
    with backend.open() as store:
        store.save_cycle([tenant(intent=True)], [transition("settling")])
        store.record_cycle(T0, ok=True, duration=2.5)
    with backend.open_readonly() as reader:
        assert reader.load("contoso") == tenant(intent=True)
        assert reader.load_all() == [tenant(intent=True)]
        assert reader.load("nobody") is None
        assert reader.history() == [transition("settling")]
        assert reader.last_cycle() == CycleRun(T0, ok=True, last_ok_at=T0, duration=2.5)


def test_a_cycle_replaces_domains_and_intents_and_appends_to_the_journal(
    backend: Backend,
) -> None:
    with backend.open() as store:
        store.save_cycle([tenant(intent=True), tenant("fabrikam")], [transition("settling")])
        trimmed = tenant()
        trimmed = StoredTenant(
            trimmed.tenant_id, trimmed.connector, trimmed.record, trimmed.domains[:1]
        )
        store.save_cycle([trimmed], [transition("enabled", 5)])
        loaded = store.load("contoso")
        assert loaded is not None and loaded.domains == trimmed.domains and loaded.intent is None
        assert store.load("fabrikam") == tenant("fabrikam")
        assert [t.to_state for t in store.history()] == ["settling", "enabled"]
        assert [t.to_state for t in store.history(limit=1)] == ["enabled"]
        assert store.history("fabrikam") == []


def test_a_failure_midway_saves_nothing(backend: Backend) -> None:
    with backend.open() as store:
        store.save_cycle([tenant()], [transition("settling")])
        bad = tenant("other")
        bad = StoredTenant(bad.tenant_id, bad.connector, bad.record, (bad.domains[0],) * 2)
        with pytest.raises(ValueError, match="lists a domain twice"):
            store.save_cycle([tenant("x"), bad], [transition("enabled", 1)])
        assert [t.record.name for t in store.load_all()] == ["contoso"]
        assert len(store.history()) == 1


@pytest.mark.parametrize(
    "statement",
    ["UPDATE journal SET reason = 'rewritten'", "DELETE FROM journal", "DROP TRIGGER IF EXISTS x"],
)
def test_the_database_keeps_the_journal_append_only(backend: Backend, statement: str) -> None:
    with backend.open() as store:
        store.save_cycle([], [transition("settling")])
    if statement.startswith("DROP"):
        statement = "DELETE FROM journal WHERE id = 1"
    with pytest.raises((sqlite3.Error, psycopg.Error), match="append-only"):
        backend.raw(statement)
    with backend.open_readonly() as reader:
        assert reader.history() == [transition("settling")]


def test_an_intent_is_committed_at_once(backend: Backend) -> None:
    intent = Intent(WriteAction.DISABLE, GUID, T0)
    with backend.open() as store, store.exclusive(0, "mxwatch"):
        store.record_intent("new-tenant", intent)
        with backend.open_readonly() as reader:
            assert reader.load_intent("new-tenant") == intent
            assert reader.load("new-tenant") is None


def test_a_second_writer_waits_then_is_told_who_holds_the_state(backend: Backend) -> None:
    with backend.open() as first, backend.open() as second:
        first.acquire(0, "mxwatch --once")
        with pytest.raises(StoreBusy) as busy:
            second.acquire(0.3, "mxwatch")
        assert f"pid {os.getpid()}" in str(busy.value) and "mxwatch --once" in str(busy.value)
        assert busy.value.kind == "busy"
        first.release()
        second.acquire(0, "mxwatch")
        assert second.holds_exclusively()
        second.release()


def test_a_readonly_store_refuses_writes(backend: Backend) -> None:
    with backend.open() as store:
        store.save_cycle([tenant()], [])
    with backend.open_readonly() as reader, pytest.raises(StoreError, match="read-only"):
        reader.save_cycle([tenant()], [])


def test_a_newer_schema_is_refused_and_left_alone(backend: Backend) -> None:
    with backend.open() as store:
        store.save_cycle([tenant()], [transition("settling")])
    if backend.name == "sqlite":
        backend.raw("PRAGMA user_version = 99")
    else:
        backend.raw("UPDATE mxwatch_schema SET version = 99")
    with pytest.raises(StoreError, match="newer mxwatch"):
        backend.open()


def test_remembered_lookups_are_kept_until_they_expire(backend: Backend) -> None:
    hour = timedelta(hours=1)
    zone = RememberedLookup(LookupKind.ZONE, "a.contoso.com.", ("contoso.com.",), T0 + hour)
    servers = RememberedLookup(
        LookupKind.NAMESERVERS, "contoso.com.", ("ns1.x", "ns2.x"), T0 + hour
    )
    alias = RememberedLookup(LookupKind.ALIAS, "mx.contoso.com", (), T0 + 2 * hour)
    with backend.open() as store:
        store.remember_lookups([zone, servers, alias], T0)
        store.remember_lookups([replace(servers, found=("ns3.x",), expires_at=T0 + 3 * hour)], T0)
    with backend.open_readonly() as reader:
        assert reader.recall_lookups(T0) == [
            alias,
            replace(servers, found=("ns3.x",), expires_at=T0 + 3 * hour),
            zone,
        ]
        assert reader.recall_lookups(T0 + hour) == [
            alias,
            replace(servers, found=("ns3.x",), expires_at=T0 + 3 * hour),
        ]
        with pytest.raises(StoreError, match="read-only"):
            reader.remember_lookups([zone], T0)
    with backend.open() as store:
        store.remember_lookups([], T0 + 2 * hour)  # drops what expired by then
    # Every row left, however long it lasts: the expired ones are gone from the table.
    backend.raw("UPDATE dns_lookup SET expires_at = '9999-01-01T00:00:00.000000+00:00'")
    with backend.open_readonly() as reader:
        assert [lookup.name for lookup in reader.recall_lookups(T0)] == ["contoso.com."]


# --- PostgreSQL only: the lead, fenced by the epoch --------------------------------------------


def test_a_write_after_a_takeover_is_refused(postgres: PostgresServer) -> None:
    os.environ["PGPASSFILE"] = str(postgres.passfile)
    try:
        with PostgresStore.open(postgres.dsn()) as old, PostgresStore.open(postgres.dsn()) as new:
            assert old.lead("mxwatch")
            old.save_cycle([tenant()], [transition("settling")])
            # The old leader's lock connection dies (a network cut, pg_terminate_backend):
            postgres.sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name LIKE 'mxwatch lock%'"
            )
            assert new.lead("mxwatch")  # the lock is free: a standby takes over
            assert not old.check_lead()
            with pytest.raises(LeaderLost):
                old.save_cycle([tenant("late")], [transition("enabled", 9)])
            with pytest.raises(LeaderLost):
                old.record_intent("contoso", Intent(WriteAction.ENABLE, GUID, T0))
            new.save_cycle([tenant("new")], [])
            assert [t.record.name for t in new.load_all()] == ["contoso", "new"]
            assert new.leader() is not None and "pid" in new.leader()[0]  # type: ignore[index]
    finally:
        os.environ.pop("PGPASSFILE", None)


def test_a_foreign_database_is_refused(postgres: PostgresServer) -> None:
    os.environ["PGPASSFILE"] = str(postgres.passfile)
    try:
        postgres.sql("CREATE TABLE invoices (id int)", database="mxwatch")
        with pytest.raises(StoreError, match="not an mxwatch state database"):
            PostgresStore.open(postgres.dsn())
    finally:
        os.environ.pop("PGPASSFILE", None)
