"""store.py against real SQLite files in tmp_path."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from mxwatch.model import (
    DomainRecord,
    Intent,
    MxRecord,
    TenantRecord,
    TenantState,
    Transition,
    Verdict,
    WriteAction,
)
from mxwatch.store import SCHEMA_VERSION, CycleRun, Store, StoreBusy, StoredTenant, StoreError
from mxwatch.store import sqlite as store_module

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
AS_ROOT = os.geteuid() == 0


def full_tenant(name: str = "contoso") -> StoredTenant:
    """Every field set to a non-default value, with a non-UTC offset to check normalising."""
    plus2 = timezone(timedelta(hours=2))
    record = TenantRecord(
        name=name,
        state=TenantState.SETTLING,
        since=T0,
        reason="all domains filtered",
        confirmations=3,
        eligible_at=(T0 + timedelta(hours=1)).astimezone(plus2),
        eligible_reason="old TTL 3600s",
        connector_guid="aaaaaaaa-0000-0000-0000-000000000001",
        connector_enabled=False,
        connector_checked_at=T0 - timedelta(minutes=5),
    )
    domains = (
        DomainRecord(
            domain="contoso.net",  # deliberately not alphabetical: order must be kept
            verdict=Verdict.FILTERED,
            mx=(
                MxRecord(20, "b.inbound.emailservice.io"),
                MxRecord(10, "a.inbound.emailservice.io"),
            ),
            ttl=300,
            checked_at=T0,
            filtered_since=T0 - timedelta(minutes=10),
            filtered_count=3,
            filtered_at=T0,
            old_ttl=3600,
            old_ttl_cached=86400,
            accepted=True,
        ),
        DomainRecord(
            domain="contoso.com", verdict=Verdict.NO_MX, mx=(), ttl=0, misses=2, old_ttl_cached=0
        ),
    )
    intent = Intent(WriteAction.ENABLE, "aaaaaaaa-0000-0000-0000-000000000001", T0)
    return StoredTenant(
        "11111111-1111-1111-1111-111111111111", "Inbound from MP", record, domains, intent
    )


def minimal_tenant(name: str) -> StoredTenant:
    return StoredTenant(
        "tid-" + name, "conn", TenantRecord(name=name), (DomainRecord(name + ".com"),)
    )


def transition(tenant: str, to: str, minutes: int = 0, **evidence: object) -> Transition:
    return Transition(
        T0 + timedelta(minutes=minutes), tenant, None, "waiting", to, "test", evidence
    )


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A second, independent connection, as another process would have."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store.open(db) as s:
        yield s


# -- round trips ---------------------------------------------------------------------------------


def test_every_field_round_trips(store: Store) -> None:
    tenant = full_tenant()
    store.save_cycle([tenant], [])
    loaded = store.load("contoso")
    assert loaded == tenant
    assert loaded is not None
    assert loaded.domains[0].mx == tenant.domains[0].mx  # tuple of MxRecord, order kept
    assert loaded.record.eligible_at is not None
    assert loaded.record.eligible_at.tzinfo is UTC


def test_defaults_and_none_round_trip(store: Store) -> None:
    tenant = minimal_tenant("fabrikam")
    store.save_cycle([tenant], [])
    assert store.load("fabrikam") == tenant
    assert tenant.record.connector_enabled is None
    assert tenant.domains[0].verdict is None


@pytest.mark.parametrize("enabled", [True, False, None])
def test_connector_enabled_keeps_all_three_values(store: Store, enabled: bool | None) -> None:
    base = minimal_tenant("t")
    record = TenantRecord(name="t", connector_enabled=enabled)
    store.save_cycle([StoredTenant(base.tenant_id, base.connector, record, ())], [])
    loaded = store.load("t")
    assert loaded is not None
    assert loaded.record.connector_enabled is enabled


def test_values_survive_reopening(db: Path) -> None:
    with Store.open(db) as s:
        s.save_cycle([full_tenant()], [transition("contoso", "settling")])
    with Store.open(db) as s:
        assert s.load("contoso") == full_tenant()
        assert len(s.history()) == 1


def test_load_unknown_tenant_is_none(store: Store) -> None:
    assert store.load("nobody") is None


def test_load_all_is_ordered_by_name(store: Store) -> None:
    store.save_cycle([minimal_tenant(n) for n in ("zeta", "alpha", "mid")], [])
    assert [t.record.name for t in store.load_all()] == ["alpha", "mid", "zeta"]


def test_save_replaces_domains_and_keeps_other_tenants(store: Store) -> None:
    store.save_cycle([full_tenant(), minimal_tenant("other")], [])
    trimmed = full_tenant()
    trimmed = StoredTenant(trimmed.tenant_id, "renamed", trimmed.record, trimmed.domains[1:])
    store.save_cycle([trimmed], [])
    assert store.load("contoso") == trimmed
    assert store.load("other") == minimal_tenant("other")


def test_save_rejects_duplicates(store: Store) -> None:
    with pytest.raises(ValueError, match="more than once"):
        store.save_cycle([minimal_tenant("a"), minimal_tenant("a")], [])
    twice = StoredTenant(
        "x", "c", TenantRecord("b"), (DomainRecord("b.com"), DomainRecord("b.com"))
    )
    with pytest.raises(ValueError, match="domain twice"):
        store.save_cycle([twice], [])


# -- times ---------------------------------------------------------------------------------------


def test_times_are_stored_as_utc_iso_text(store: Store, db: Path) -> None:
    store.save_cycle([full_tenant()], [])
    with raw(db) as conn:
        stored = conn.execute("SELECT eligible_at FROM tenant").fetchone()[0]
    assert stored == "2024-05-01T13:00:00.123456+00:00"


@pytest.mark.parametrize(
    "tenant, transitions",
    [
        (StoredTenant("i", "c", TenantRecord("n", since=datetime(2024, 1, 1)), ()), []),
        (
            StoredTenant(
                "i", "c", TenantRecord("n"), (DomainRecord("d", checked_at=datetime(2024, 1, 1)),)
            ),
            [],
        ),
        (minimal_tenant("n"), [Transition(datetime(2024, 1, 1), "n", None, None, "waiting", "r")]),
        (minimal_tenant("n"), [transition("n", "settling", seen=datetime(2024, 1, 1))]),
    ],
    ids=["tenant", "domain", "transition", "evidence"],
)
def test_naive_datetimes_are_rejected(
    store: Store, tenant: StoredTenant, transitions: list[Transition]
) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.save_cycle([tenant], transitions)
    assert store.load_all() == []
    assert store.history() == []


# -- atomicity -----------------------------------------------------------------------------------


def _snapshot(db: Path) -> tuple[list[tuple[object, ...]], ...]:
    """Every row, read through an independent connection."""
    with raw(db) as conn:
        return tuple(
            conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
            for table in ("tenant", "domain", "journal")
        )


def test_unserialisable_evidence_changes_nothing(store: Store, db: Path) -> None:
    store.save_cycle([full_tenant()], [transition("contoso", "settling")])
    before = _snapshot(db)
    changed = StoredTenant("new-id", "new-conn", TenantRecord("contoso", reason="changed"), ())
    bad = transition("contoso", "enabled", 1, lock=threading.Lock())
    with pytest.raises(TypeError, match="lock"):
        store.save_cycle([changed, minimal_tenant("new")], [transition("contoso", "x"), bad])
    assert _snapshot(db) == before


def test_failure_midway_rolls_back_everything(store: Store, db: Path) -> None:
    store.save_cycle([full_tenant()], [transition("contoso", "settling")])
    before = _snapshot(db)
    changed = StoredTenant("new-id", "new-conn", TenantRecord("contoso", reason="changed"), ())
    # The schema refuses a negative count, so the second tenant's row fails inside the
    # transaction, after the first tenant's upsert and domain delete have already run.
    invalid = StoredTenant("i", "c", TenantRecord("zzz", confirmations=-1), ())
    with pytest.raises(StoreError, match="nothing was saved"):
        store.save_cycle([changed, invalid], [transition("contoso", "enabled", 1)])
    assert _snapshot(db) == before
    # The store stays usable after a rolled-back cycle.
    store.save_cycle([changed], [])
    assert store.load("contoso") == changed


# -- journal -------------------------------------------------------------------------------------


def test_journal_is_append_only(store: Store, db: Path) -> None:
    store.save_cycle([], [transition("contoso", "settling")])
    with raw(db) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE journal SET reason = 'rewritten'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM journal")
    assert [t.reason for t in store.history()] == ["test"]


def test_history_filters_by_tenant_and_keeps_order(store: Store) -> None:
    # Journal order is insertion order, even where the "at" times go backwards.
    store.save_cycle([], [transition("a", "1", 5), transition("b", "2", 0)])
    store.save_cycle([], [transition("a", "3", 1), transition("b", "4", 9)])
    assert [t.to_state for t in store.history()] == ["1", "2", "3", "4"]
    assert [t.to_state for t in store.history("a")] == ["1", "3"]
    assert [t.to_state for t in store.history("b", limit=1)] == ["4"]
    assert [t.to_state for t in store.history(limit=3)] == ["2", "3", "4"]
    assert store.history(limit=0) == []
    assert store.history("nobody") == []


def test_history_round_trips_transitions(store: Store) -> None:
    domain_change = Transition(
        at=T0,
        tenant="contoso",
        domain="contoso.com",
        from_state=None,
        to_state="filtered",
        reason="first observation",
        evidence={"ttl": 300, "sources": ["system", "ns1"], "note": None},
    )
    store.save_cycle([], [domain_change])
    assert store.history() == [domain_change]
    assert store.history()[0].at.tzinfo is UTC


def test_evidence_serialises_datetimes_enums_dataclasses_tuples(store: Store) -> None:
    plus2 = timezone(timedelta(hours=2))
    evidence = {
        "seen": T0.astimezone(plus2),
        "verdict": Verdict.DIRECT,
        "state": TenantState.ENABLED,
        "mx": (MxRecord(10, "mx.example"),),
        "domains": frozenset({"b.com", "a.com"}),
    }
    store.save_cycle([], [Transition(T0, "contoso", None, None, "settling", "r", evidence)])
    assert store.history()[0].evidence == {
        "seen": "2024-05-01T12:00:00.123456+00:00",
        "verdict": "direct",
        "state": "enabled",
        "mx": [{"preference": 10, "exchange": "mx.example"}],
        "domains": ["a.com", "b.com"],
    }


# -- the file ------------------------------------------------------------------------------------


def test_file_is_wal_with_schema_version_and_private(store: Store, db: Path) -> None:
    with raw(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA application_id").fetchone()[0] != 0
    assert stat.S_IMODE(db.parent.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(db.stat().st_mode) & 0o077 == 0


def test_missing_parent_directories_are_created_private(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.db"
    Store.open(path).close()
    for directory in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0


def test_newer_schema_is_refused_untouched(db: Path) -> None:
    Store.open(db).close()
    with raw(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = db.read_bytes()
    for opener in (Store.open, Store.open_readonly):
        with pytest.raises(StoreError, match="newer mxwatch") as err:
            opener(db)
        assert str(db) in str(err.value)
    assert db.read_bytes() == before


def test_foreign_sqlite_database_is_refused_untouched(db: Path) -> None:
    db.parent.mkdir()
    with raw(db) as conn:
        conn.execute("CREATE TABLE something_else (x)")
    before = db.read_bytes()
    with pytest.raises(StoreError, match="not an mxwatch state file"):
        Store.open(db)
    assert db.read_bytes() == before


@pytest.mark.parametrize("opener", [Store.open, Store.open_readonly], ids=["rw", "ro"])
def test_corrupted_file_is_refused_untouched(tmp_path: Path, opener: object) -> None:
    path = tmp_path / "state.db"
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    with pytest.raises(StoreError, match="corrupted") as err:
        opener(path)  # type: ignore[operator]
    assert str(path) in str(err.value)
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db"]


def test_reopening_keeps_the_schema(db: Path) -> None:
    # The migration hook runs only for older versions: a current file is opened as is.
    with Store.open(db) as s:
        s.save_cycle([minimal_tenant("a")], [transition("a", "x")])
    with Store.open(db) as s:
        assert len(s.history()) == 1


def test_path_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    # Holds even as root, unlike permission bits.
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create the state file"):
        Store.open(tmp_path / "file" / "state.db")


def test_directory_in_place_of_the_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.db").mkdir()
    for opener in (Store.open, Store.open_readonly):
        with pytest.raises(StoreError, match="not a regular file"):
            opener(tmp_path / "state.db")


@pytest.mark.skipif(AS_ROOT, reason="root writes through permission bits")
def test_read_only_directory_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(StoreError, match="writable"):
            Store.open(locked / "state.db")
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(AS_ROOT, reason="root writes through permission bits")
def test_read_only_file_is_refused(db: Path) -> None:
    Store.open(db).close()
    db.chmod(0o400)
    with pytest.raises(StoreError, match="not writable"):
        Store.open(db)


def test_readonly_store_reads_but_refuses_writes(db: Path) -> None:
    with Store.open(db) as s:
        s.save_cycle([full_tenant()], [transition("contoso", "settling")])
    with Store.open_readonly(db) as ro:
        assert ro.load_all() == [full_tenant()]
        assert len(ro.history("contoso")) == 1
        with pytest.raises(StoreError, match="cannot write"):
            ro.save_cycle([minimal_tenant("x")], [])
    with Store.open(db) as s:
        assert s.load("x") is None


def test_readonly_on_missing_file_says_run_once(tmp_path: Path) -> None:
    path = tmp_path / "nothing" / "state.db"
    with pytest.raises(StoreError, match="--once") as err:
        Store.open_readonly(path)
    assert str(path) in str(err.value)
    assert not path.parent.exists()


def test_readonly_on_empty_file_says_run_once(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.touch()
    with pytest.raises(StoreError, match="--once"):
        Store.open_readonly(path)


def test_readonly_reader_does_not_block_on_a_writer(db: Path) -> None:
    with Store.open(db) as s:
        s.save_cycle([minimal_tenant("a")], [])
    with raw(db) as writer:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM domain")
        with Store.open_readonly(db, busy_timeout=0.2) as ro:
            assert ro.load("a") == minimal_tenant("a")  # WAL: sees the last commit
        writer.execute("ROLLBACK")


# -- concurrency ---------------------------------------------------------------------------------


def test_write_lock_held_elsewhere_times_out_with_store_error(db: Path) -> None:
    with Store.open(db, busy_timeout=0.2) as s:
        with raw(db) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="locked by another process") as err:
                s.save_cycle([minimal_tenant("a")], [transition("a", "x")])
            assert str(db) in str(err.value)
            other.execute("ROLLBACK")
        assert s.load("a") is None
        s.save_cycle([minimal_tenant("a")], [])  # works once the lock is gone
        assert s.load("a") == minimal_tenant("a")


def test_store_can_be_used_from_another_thread(store: Store) -> None:
    # The daemon's scheduler runs cycles on worker threads.
    errors: list[BaseException] = []

    def work() -> None:
        try:
            store.save_cycle([minimal_tenant("t")], [])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert errors == []
    assert store.load("t") == minimal_tenant("t")


def test_closed_store_refuses_use(db: Path) -> None:
    with Store.open(db) as s:
        pass
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.load_all()


# -- the last cycle (mxwatch health, metrics) ----------------------------------------------------


def test_last_cycle_keeps_the_last_ok_time(db: Path) -> None:
    at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    with Store.open(db) as store:
        assert store.last_cycle() is None
        store.record_cycle(at, ok=True)
        store.record_cycle(at + timedelta(minutes=5), ok=False, duration=7.5)
    with Store.open_readonly(db) as reader:
        last = reader.last_cycle()
        with pytest.raises(StoreError, match="read-only"):
            reader.record_cycle(at, ok=True)
    assert last == CycleRun(at + timedelta(minutes=5), ok=False, last_ok_at=at, duration=7.5)


def at_version(db: Path, version: int) -> None:
    """An empty state file as an mxwatch of that schema version would have created it."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with raw(db) as conn:
        for step in store_module._MIGRATIONS[:version]:
            for statement in step:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version}")


def test_version_1_file_is_migrated_keeping_its_state(db: Path) -> None:
    at_version(db, 1)
    with raw(db) as conn:
        conn.execute(
            "INSERT INTO tenant VALUES ('contoso', 'tid', 'conn', 'settling', NULL, 'r', 3,"
            " NULL, '', 0, NULL, NULL, NULL)"
        )
    with Store.open(db) as store:
        assert store.load("contoso") is not None
        store.record_cycle(datetime(2024, 5, 1, tzinfo=UTC), ok=True)
        assert store.last_cycle() is not None


def test_version_2_streaks_restart_and_old_ttls_count_as_second_hand(db: Path) -> None:
    at_version(db, 2)
    with raw(db) as conn:
        conn.execute(
            "INSERT INTO tenant VALUES ('contoso', 'tid', 'conn', 'settling', NULL, 'r', 3,"
            " NULL, '', 0, NULL, NULL, NULL)"
        )
        conn.execute(
            "INSERT INTO domain VALUES ('contoso', 'contoso.com', 0, 'filtered', '[]', 300,"
            " '2024-05-01T12:00:00.000000+00:00', '2024-05-01T11:00:00.000000+00:00', 3600)"
        )
    with Store.open(db) as store:
        loaded = store.load("contoso")
    assert loaded is not None
    (domain,) = loaded.domains
    # A per-tenant count of the old version is not a per-domain streak: start again, safely.
    assert (domain.filtered_since, domain.filtered_count, domain.filtered_at) == (None, 0, None)
    assert (domain.old_ttl, domain.old_ttl_cached) == (None, 3600)
    assert domain.accepted  # covered until the next accepted-domain read says otherwise
    assert loaded.record.confirmations == 3


def test_version_3_file_gains_an_empty_dns_memory(db: Path) -> None:
    at_version(db, 3)
    with raw(db) as conn:
        conn.execute(
            "INSERT INTO tenant (name, tenant_id, connector, state, reason, confirmations,"
            " eligible_reason) VALUES ('contoso', 'tid', 'conn', 'enabled', 'r', 2, '')"
        )
    now = datetime(2024, 5, 1, tzinfo=UTC)
    with Store.open(db) as store:
        assert store.load("contoso") is not None
        assert store.recall_lookups(now) == []


# -- one writer ----------------------------------------------------------------------------------


def test_a_second_writer_waits_then_is_told_who_holds_the_state(db: Path) -> None:
    with Store.open(db) as first, Store.open(db) as second:
        first.acquire(0, "mxwatch --once")
        assert first.holds_exclusively()
        with pytest.raises(StoreBusy) as busy:
            second.acquire(0.2, "mxwatch")
        assert f"pid {os.getpid()} (mxwatch --once) since " in str(busy.value)
        assert "waited 0.2s" in str(busy.value)
        assert not second.holds_exclusively()
        first.release()
        second.acquire(0, "mxwatch")  # free again
        assert second.holds_exclusively()
        second.release()


def test_one_state_reached_through_a_symlink_has_one_lock(db: Path, tmp_path: Path) -> None:
    with Store.open(db):
        pass
    alias = tmp_path / "alias.db"
    alias.symlink_to(db)
    with (
        Store.open(db) as first,
        Store.open(alias) as second,
        first.exclusive(0, "mxwatch"),
        pytest.raises(StoreBusy),
    ):
        second.acquire(0, "mxwatch --once")


def test_writes_are_refused_once_the_lock_file_is_replaced(db: Path) -> None:
    with Store.open(db) as store, store.exclusive(0, "mxwatch"):
        store.save_cycle([minimal_tenant("a")], [])
        lock = db.with_name(db.name + ".lock")
        lock.unlink()  # an operator "cleaning up": another process could now lock a new file
        assert not store.holds_exclusively()
        with pytest.raises(StoreError, match="lost the lock"):
            store.save_cycle([minimal_tenant("b")], [])
        with pytest.raises(StoreError, match="lost the lock"):
            store.record_intent("a", Intent(WriteAction.ENABLE, "g", T0))
    with Store.open_readonly(db) as reader:
        assert [t.record.name for t in reader.load_all()] == ["a"]


def test_an_intent_is_committed_at_once_and_kept_until_a_cycle_settles_it(db: Path) -> None:
    intent = Intent(WriteAction.DISABLE, "aaaaaaaa-0000-0000-0000-000000000001", T0)
    with Store.open(db) as store, store.exclusive(0, "mxwatch"):
        store.save_cycle([minimal_tenant("a")], [])
        store.record_intent("a", intent)
        with Store.open_readonly(db) as reader:  # committed: another process sees it
            loaded = reader.load("a")
            assert loaded is not None and loaded.intent == intent
        assert store.load_intent("never-saved") is None
        store.record_intent("never-saved", intent)  # a first cycle, interrupted after the write
        assert store.load("never-saved") is None and store.load_intent("never-saved") == intent
        store.save_cycle([minimal_tenant("a")], [])  # the cycle settled it: intent None
        loaded = store.load("a")
        assert loaded is not None and loaded.intent is None


def test_append_journal_adds_entries_and_leaves_the_tenants_alone(store: Store) -> None:
    store.save_cycle([full_tenant()], [transition("contoso", "settling")])
    entry = Transition(T0, "contoso", None, "settling", "settling", "connector created", {})
    store.append_journal([entry])
    assert store.history("contoso")[-1] == entry
    assert store.load_all() == [full_tenant()]


def test_append_journal_works_on_a_new_state_file_and_refuses_read_only(db: Path) -> None:
    entry = Transition(T0, "contoso", None, "waiting", "waiting", "connector created", {})
    with Store.open(db) as s:
        s.append_journal([entry])
        assert s.load_all() == []
    with Store.open_readonly(db) as ro:
        assert ro.history() == [entry]
        with pytest.raises(StoreError, match="cannot write"):
            ro.append_journal([entry])
